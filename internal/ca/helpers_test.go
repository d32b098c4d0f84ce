package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// testNow is the clock of these tests: fixed for the whole run, but near the
// wall clock because real TLS handshakes check validity against time.Now.
// Truncated to seconds as X.509 times are.
var testNow = time.Now().UTC().Truncate(time.Second)

// newTestRoot creates a root CA or fails the test.
func newTestRoot(t *testing.T, clusterID string) *RootCA {
	t.Helper()
	r, err := NewRootCA(clusterID, testNow)
	if err != nil {
		t.Fatalf("NewRootCA: %v", err)
	}
	return r
}

// issueTestNode creates a key and a certificate for nodeID from root and
// returns the node's credentials.
func issueTestNode(t *testing.T, root *RootCA, nodeID string, role Role, sans ...string) Credentials {
	t.Helper()
	keyPEM, csrPEM, err := NewNodeKey()
	if err != nil {
		t.Fatalf("NewNodeKey: %v", err)
	}
	certPEM, err := root.IssueNodeCertificate(csrPEM, nodeID, role, testNow, sans...)
	if err != nil {
		t.Fatalf("IssueNodeCertificate: %v", err)
	}
	return Credentials{CACertPEM: root.CertPEM(), CertPEM: certPEM, KeyPEM: keyPEM}
}

// tlsCert turns credentials into a tls.Certificate or fails the test.
func tlsCert(t *testing.T, c Credentials) tls.Certificate {
	t.Helper()
	pair, err := c.TLSCertificate()
	if err != nil {
		t.Fatalf("TLSCertificate: %v", err)
	}
	return pair
}

// forgedManager returns a self-signed key pair claiming to be a manager of
// clusterID: what an attacker without the CA key can make.
func forgedManager(t *testing.T, clusterID string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject: pkix.Name{
			CommonName:         "mallory",
			OrganizationalUnit: []string{RoleManager.OU()},
			Organization:       []string{clusterID},
		},
		NotBefore:             testNow.Add(-time.Hour),
		NotAfter:              testNow.Add(time.Hour * 24 * 365 * 10),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"mallory", ManagerServerName},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(
		pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: pemECKey, Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	return pair
}
