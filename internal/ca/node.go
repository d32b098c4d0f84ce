package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"
)

// Identity is who a node certificate says its holder is.
type Identity struct {
	NodeID    string
	Role      Role
	ClusterID string
	NotAfter  time.Time
}

// NewNodeKey generates a node's ECDSA P-256 key and a CSR for it. The CSR's
// subject is left empty: the CA sets the identity when it signs.
func NewNodeKey() (keyPEM []byte, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate node key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal node key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create node CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemECKey, Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: csrDER}), nil
}

// ParseNodeIdentity reads the identity from a node certificate. It does NOT
// verify the certificate: use it on certificates that came from a verified
// TLS chain or from VerifyNodeCertificate.
func ParseNodeIdentity(certPEM []byte) (Identity, error) {
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return Identity{}, fmt.Errorf("parse node identity: %w", err)
	}
	id, err := identityFromCert(cert)
	if err != nil {
		return Identity{}, fmt.Errorf("parse node identity: %w", err)
	}
	return id, nil
}

// VerifyNodeCertificate checks that certPEM chains to a root in roots and is
// valid at now, and returns its identity. A node uses it on a certificate the
// CA sent before installing it.
func VerifyNodeCertificate(certPEM []byte, roots *x509.CertPool, now time.Time) (Identity, error) {
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return Identity{}, fmt.Errorf("verify node certificate: %w", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return Identity{}, fmt.Errorf("verify node certificate: %w: %w", ErrInvalidCertificate, err)
	}
	id, err := identityFromCert(cert)
	if err != nil {
		return Identity{}, fmt.Errorf("verify node certificate: %w", err)
	}
	return id, nil
}

// identityFromCert maps a certificate's subject to an Identity.
func identityFromCert(cert *x509.Certificate) (Identity, error) {
	if cert.Subject.CommonName == "" {
		return Identity{}, fmt.Errorf("%w: no node id (CN)", ErrInvalidCertificate)
	}
	if len(cert.Subject.OrganizationalUnit) != 1 {
		return Identity{}, fmt.Errorf("%w: want exactly one role OU, got %d", ErrInvalidCertificate, len(cert.Subject.OrganizationalUnit))
	}
	role, err := roleFromOU(cert.Subject.OrganizationalUnit[0])
	if err != nil {
		return Identity{}, err
	}
	if len(cert.Subject.Organization) != 1 {
		return Identity{}, fmt.Errorf("%w: want exactly one cluster id O, got %d", ErrInvalidCertificate, len(cert.Subject.Organization))
	}
	return Identity{
		NodeID:    cert.Subject.CommonName,
		Role:      role,
		ClusterID: cert.Subject.Organization[0],
		NotAfter:  cert.NotAfter,
	}, nil
}

// NeedsRenewal reports whether a node should ask for a new certificate at
// now: from RenewalTime on (two thirds of its validity), including after it
// has expired. There is deliberately no jitter, so the decision is a pure
// function of its inputs; callers that renew many nodes at once add their
// own spread.
func NeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	return !now.Before(RenewalTime(cert))
}

// Credentials are what a node keeps: the cluster root and its own key pair,
// all PEM encoded.
type Credentials struct {
	CACertPEM []byte
	CertPEM   []byte
	KeyPEM    []byte
}

// TLSCertificate returns the node's key pair for a tls.Config. The chain sent
// to peers includes the root after the leaf so that a joining host, which
// only holds the root's digest from its token, can pin it during the
// handshake (see JoinClientTLSConfig).
func (c Credentials) TLSCertificate() (tls.Certificate, error) {
	pair, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load node key pair: %w", err)
	}
	root, err := parseCertPEM(c.CACertPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load node key pair: root: %w", err)
	}
	pair.Certificate = append(pair.Certificate, root.Raw)
	return pair, nil
}

// CertPool returns a pool trusting only the credentials' root.
func (c Credentials) CertPool() (*x509.CertPool, error) {
	root, err := parseCertPEM(c.CACertPEM)
	if err != nil {
		return nil, fmt.Errorf("load root CA: %w", err)
	}
	p := x509.NewCertPool()
	p.AddCert(root)
	return p, nil
}
