package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

const (
	// DefaultRootCAValidity is long because rotating the root means
	// re-issuing every node certificate and every join token; twenty years
	// outlives any cluster we expect, and the key never leaves the managers.
	DefaultRootCAValidity = 20 * 365 * 24 * time.Hour

	// DefaultNodeCertValidity is short enough that a stolen node key stops
	// working within a season without a revocation list, and long enough
	// that a node can be offline for weeks and still rejoin: nodes renew at
	// two thirds of it (60 days), leaving a 30-day margin for outages.
	DefaultNodeCertValidity = 90 * 24 * time.Hour

	// certBackdate moves NotBefore into the past so a certificate issued by
	// a manager whose clock runs ahead is still valid on the node that
	// receives it.
	certBackdate = 5 * time.Minute

	// rootCommonName names the root in its subject; the cluster id goes in O.
	rootCommonName = "shoal-root-ca"
)

// PEM block types.
const (
	pemCertificate = "CERTIFICATE"
	pemECKey       = "EC PRIVATE KEY"
	pemCSR         = "CERTIFICATE REQUEST"
)

// RootCA is a cluster's self-signed root: it signs node certificates. It is
// immutable after creation and safe for concurrent use.
type RootCA struct {
	cert      *x509.Certificate
	certPEM   []byte
	key       *ecdsa.PrivateKey
	clusterID string
}

// NewRootCA creates a self-signed ECDSA P-256 root for clusterID, valid from
// now for DefaultRootCAValidity.
func NewRootCA(clusterID string, now time.Time) (*RootCA, error) {
	if clusterID == "" {
		return nil, errors.New("create root CA: empty cluster id")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create root CA: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("create root CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   rootCommonName,
			Organization: []string{clusterID},
		},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              now.Add(DefaultRootCAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Node certificates are leaves; no intermediate may be minted.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create root CA: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("create root CA: parse: %w", err)
	}
	return &RootCA{
		cert:      cert,
		certPEM:   pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}),
		key:       key,
		clusterID: clusterID,
	}, nil
}

// ParseRootCA loads a root saved with CertPEM and KeyPEM. It checks that the
// certificate is a CA and that the key belongs to it.
func ParseRootCA(certPEM, keyPEM []byte) (*RootCA, error) {
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("parse root CA: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("parse root CA: %w: not a CA certificate", ErrInvalidCertificate)
	}
	key, err := parseECKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse root CA: %w", err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("parse root CA: %w: key does not match certificate", ErrInvalidCertificate)
	}
	clusterID := ""
	if len(cert.Subject.Organization) > 0 {
		clusterID = cert.Subject.Organization[0]
	}
	return &RootCA{
		cert:      cert,
		certPEM:   pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: cert.Raw}),
		key:       key,
		clusterID: clusterID,
	}, nil
}

// CertPEM returns the root certificate, PEM encoded. It is public.
func (r *RootCA) CertPEM() []byte { return append([]byte(nil), r.certPEM...) }

// KeyPEM returns the root's private key, PEM encoded. It must only ever be
// stored on managers: whoever holds it can mint manager certificates.
func (r *RootCA) KeyPEM() []byte {
	der, err := x509.MarshalECPrivateKey(r.key)
	if err != nil {
		// Only fails for keys on unsupported curves; ours is P-256.
		panic(fmt.Sprintf("marshal root CA key: %v", err))
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemECKey, Bytes: der})
}

// Digest returns "sha256:<hex>" of the root certificate's DER encoding: the
// value join tokens pin.
func (r *RootCA) Digest() string { return digestDER(r.cert.Raw) }

// ClusterID returns the cluster id the root was created for.
func (r *RootCA) ClusterID() string { return r.clusterID }

// Certificate returns the parsed root certificate. Callers must not modify it.
func (r *RootCA) Certificate() *x509.Certificate { return r.cert }

// Pool returns a new pool trusting only this root.
func (r *RootCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(r.cert)
	return p
}

// IssueNodeCertificate signs csrPEM (an ECDSA P-256 key, as NewNodeKey
// makes) for nodeID with role, valid from now for
// DefaultNodeCertValidity. Only the CSR's public key is used: the subject
// (CN=nodeID, OU=role.OU(), O=cluster id) and SANs are set by the CA so a
// node cannot ask for another identity. sans are addresses or host names the
// node serves on (IPs become IP SANs, the rest DNS SANs); nodeID is always a
// DNS SAN and managers also get ManagerServerName.
//
// The caller is responsible for deciding that the requester may have that
// id and role (a valid join token or an existing certificate).
func (r *RootCA) IssueNodeCertificate(csrPEM []byte, nodeID string, role Role, now time.Time, sans ...string) ([]byte, error) {
	if nodeID == "" {
		return nil, errors.New("issue node certificate: empty node id")
	}
	if !role.Valid() {
		return nil, fmt.Errorf("issue node certificate for %s: %w %q", nodeID, ErrInvalidRole, role)
	}
	csr, err := parseCSRPEM(csrPEM)
	if err != nil {
		return nil, fmt.Errorf("issue node certificate for %s: %w", nodeID, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("issue node certificate for %s: %w", nodeID, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         nodeID,
			OrganizationalUnit: []string{role.OU()},
			Organization:       []string{r.clusterID},
		},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              now.Add(DefaultNodeCertValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{nodeID},
	}
	if role == RoleManager {
		tmpl.DNSNames = append(tmpl.DNSNames, ManagerServerName)
	}
	for _, s := range sans {
		if s == "" {
			continue
		}
		if ip := net.ParseIP(s); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, s)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, csr.PublicKey, r.key)
	if err != nil {
		return nil, fmt.Errorf("issue node certificate for %s: sign: %w", nodeID, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}), nil
}

// digestDER is the pinning digest of a DER certificate.
func digestDER(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// randomSerial returns a 128-bit positive serial number, as RFC 5280 asks
// for unpredictable serials.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// parseCertPEM parses the first CERTIFICATE block of data.
func parseCertPEM(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("%w: no CERTIFICATE PEM block", ErrInvalidCertificate)
		}
		if b.Type != pemCertificate {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidCertificate, err)
		}
		return cert, nil
	}
}

// parseECKeyPEM parses an EC PRIVATE KEY (SEC 1) or PKCS #8 ECDSA key.
func parseECKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("parse key: no PEM block")
	}
	if k, err := x509.ParseECPrivateKey(b.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("parse key: %T is not an ECDSA key", k)
	}
	return ek, nil
}

// parseCSRPEM parses a CSR and checks its self-signature, which proves the
// requester holds the private key.
func parseCSRPEM(data []byte) (*x509.CertificateRequest, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != pemCSR {
		return nil, fmt.Errorf("%w: no %s PEM block", ErrInvalidCSR, pemCSR)
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCSR, err)
	}
	// One key type cluster-wide (what NewNodeKey makes) keeps weak or
	// exotic keys out of the cluster.
	if pub, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: key is %T, want ECDSA P-256", ErrInvalidCSR, csr.PublicKey)
	}
	return csr, nil
}
