package ca

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// minTLSVersion is TLS 1.3: every peer is Shoal itself, so there is no old
// client to be compatible with, and 1.3 encrypts the client certificate.
const minTLSVersion = tls.VersionTLS13

// ServerTLSConfig is for listeners that only other nodes call (e.g. Raft):
// the client must present a certificate that chains to root. Authorisation
// by role is the interceptors' job (AuthInterceptors).
func ServerTLSConfig(node tls.Certificate, root *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   minTLSVersion,
		Certificates: []tls.Certificate{node},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    root,
	}
}

// ServerTLSConfigAllowJoin is for the manager listener that also serves the
// join (certificate issuing) RPC: a host that has not joined yet has no
// certificate, so one is verified if given but not required. It must be used
// with AuthInterceptors, which deny every call without a verified
// certificate except the methods listed as allowed unauthenticated.
func ServerTLSConfigAllowJoin(node tls.Certificate, root *x509.CertPool) *tls.Config {
	c := ServerTLSConfig(node, root)
	c.ClientAuth = tls.VerifyClientCertIfGiven
	return c
}

// ClientTLSConfig is for calling another node. node is the caller's key pair
// (nil while joining, when only unauthenticated methods will be accepted);
// the server must present a certificate chaining to root and valid for
// serverName (ManagerServerName for managers, or the node id).
func ClientTLSConfig(node *tls.Certificate, root *x509.CertPool, serverName string) *tls.Config {
	c := &tls.Config{
		MinVersion: minTLSVersion,
		RootCAs:    root,
		ServerName: serverName,
	}
	if node != nil {
		c.Certificates = []tls.Certificate{*node}
	}
	return c
}

// JoinClientTLSConfig is for a host joining with tok before it has the
// root certificate: it accepts the server only if the server's chain
// includes the root pinned by tok (nodes send it; see
// Credentials.TLSCertificate) and the server certificate chains to that root
// and is valid for serverName. The host then fetches the root, checks it
// with VerifyCA, and uses ClientTLSConfig from then on.
func JoinClientTLSConfig(tok JoinToken, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: minTLSVersion,
		ServerName: serverName,
		// Standard verification cannot work without the root; the
		// callback below does all of it against the pinned root.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyPinned(cs.PeerCertificates, tok, serverName)
		},
	}
}

// verifyPinned checks a server chain against the root pinned by tok.
func verifyPinned(chain []*x509.Certificate, tok JoinToken, serverName string) error {
	if len(chain) == 0 {
		return errors.New("verify server: no certificate")
	}
	var root *x509.Certificate
	for _, c := range chain[1:] {
		if digestEqual(digestDER(c.Raw), tok.CADigest) {
			root = c
		}
	}
	if root == nil {
		return fmt.Errorf("verify server: %w: pinned root not in the server's chain", ErrCAMismatch)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	if _, err := chain[0].Verify(x509.VerifyOptions{
		Roots:     roots,
		DNSName:   serverName,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("verify server against pinned root: %w", err)
	}
	return nil
}
