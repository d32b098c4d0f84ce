package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRootCARoundTrip(t *testing.T) {
	root := newTestRoot(t, "cluster-a")
	if !strings.HasPrefix(root.Digest(), "sha256:") || len(root.Digest()) != len("sha256:")+64 {
		t.Fatalf("Digest() = %q, want sha256:<64 hex>", root.Digest())
	}
	parsed, err := ParseRootCA(root.CertPEM(), root.KeyPEM())
	if err != nil {
		t.Fatalf("ParseRootCA: %v", err)
	}
	if parsed.Digest() != root.Digest() || parsed.ClusterID() != "cluster-a" {
		t.Fatalf("parsed root = (%s, %s), want (%s, cluster-a)", parsed.Digest(), parsed.ClusterID(), root.Digest())
	}
	cert := root.Certificate()
	if !cert.IsCA || cert.NotAfter.Sub(testNow) != DefaultRootCAValidity {
		t.Fatalf("root IsCA=%v validity=%v", cert.IsCA, cert.NotAfter.Sub(testNow))
	}
	// A certificate issued by the parsed root verifies against the original.
	node := issueTestNode(t, parsed, "n1", RoleWorker)
	if _, err := VerifyNodeCertificate(node.CertPEM, root.Pool(), testNow); err != nil {
		t.Fatalf("cert from parsed root does not verify against original: %v", err)
	}

	other := newTestRoot(t, "cluster-a")
	tests := []struct {
		name    string
		certPEM []byte
		keyPEM  []byte
	}{
		{"key of another root", root.CertPEM(), other.KeyPEM()},
		{"not PEM", []byte("hello"), root.KeyPEM()},
		{"leaf instead of CA", node.CertPEM, node.KeyPEM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseRootCA(tt.certPEM, tt.keyPEM); err == nil {
				t.Fatal("ParseRootCA succeeded, want error")
			}
		})
	}
}

func TestIssueNodeCertificate(t *testing.T) {
	root := newTestRoot(t, "cluster-a")
	tests := []struct {
		name     string
		nodeID   string
		role     Role
		sans     []string
		wantDNS  []string
		wantIPs  []string
		wantRole Role
	}{
		{
			name: "worker", nodeID: "w1", role: RoleWorker,
			wantDNS: []string{"w1"}, wantRole: RoleWorker,
		},
		{
			name: "manager with SANs", nodeID: "m1", role: RoleManager,
			sans:    []string{"10.0.0.5", "m1.example", "::1"},
			wantDNS: []string{"m1", ManagerServerName, "m1.example"}, wantIPs: []string{"10.0.0.5", "::1"},
			wantRole: RoleManager,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds := issueTestNode(t, root, tt.nodeID, tt.role, tt.sans...)
			id, err := ParseNodeIdentity(creds.CertPEM)
			if err != nil {
				t.Fatalf("ParseNodeIdentity: %v", err)
			}
			want := Identity{NodeID: tt.nodeID, Role: tt.wantRole, ClusterID: "cluster-a", NotAfter: testNow.Add(DefaultNodeCertValidity)}
			if id != want {
				t.Fatalf("identity = %+v, want %+v", id, want)
			}
			vid, err := VerifyNodeCertificate(creds.CertPEM, root.Pool(), testNow)
			if err != nil || vid != want {
				t.Fatalf("VerifyNodeCertificate = %+v, %v; want %+v", vid, err, want)
			}
			cert := tlsCert(t, creds).Leaf
			if !slices.Equal(cert.DNSNames, tt.wantDNS) {
				t.Errorf("DNS SANs = %v, want %v", cert.DNSNames, tt.wantDNS)
			}
			var ips []string
			for _, ip := range cert.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tt.wantIPs) {
				t.Errorf("IP SANs = %v, want %v", ips, tt.wantIPs)
			}
			if !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || !slices.Contains(cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
				t.Errorf("ExtKeyUsage = %v, want client and server auth", cert.ExtKeyUsage)
			}
			if cert.IsCA {
				t.Error("node certificate is a CA")
			}
		})
	}
}

func TestIssueNodeCertificateRejects(t *testing.T) {
	root := newTestRoot(t, "cluster-a")
	_, csrPEM, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	// Flip the last byte of the CSR's signature: still well-formed, but it
	// no longer proves possession of the key.
	block, _ := pem.Decode(csrPEM)
	der := append([]byte(nil), block.Bytes...)
	der[len(der)-1] ^= 0x01
	tampered := pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: der})
	tests := []struct {
		name   string
		csr    []byte
		nodeID string
		role   Role
		want   error
	}{
		{"unknown role", csrPEM, "n1", Role("admin"), ErrInvalidRole},
		{"empty role", csrPEM, "n1", "", ErrInvalidRole},
		{"garbage CSR", []byte("not a csr"), "n1", RoleWorker, ErrInvalidCSR},
		{"tampered CSR", tampered, "n1", RoleWorker, ErrInvalidCSR},
		{"empty node id", csrPEM, "", RoleWorker, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := root.IssueNodeCertificate(tt.csr, tt.nodeID, tt.role, testNow)
			if err == nil {
				t.Fatal("IssueNodeCertificate succeeded, want error")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestVerifyNodeCertificateRejects(t *testing.T) {
	root := newTestRoot(t, "cluster-a")
	other := newTestRoot(t, "cluster-a")
	node := issueTestNode(t, other, "n1", RoleManager)
	good := issueTestNode(t, root, "n2", RoleWorker)
	tests := []struct {
		name string
		cert []byte
		now  time.Time
	}{
		{"issued by another CA", node.CertPEM, testNow},
		{"expired", good.CertPEM, testNow.Add(DefaultNodeCertValidity + time.Minute)},
		{"not yet valid", good.CertPEM, testNow.Add(-time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := VerifyNodeCertificate(tt.cert, root.Pool(), tt.now)
			if !errors.Is(err, ErrInvalidCertificate) {
				t.Fatalf("err = %v, want ErrInvalidCertificate", err)
			}
		})
	}
}

func TestNeedsRenewal(t *testing.T) {
	root := newTestRoot(t, "c")
	leaf := tlsCert(t, issueTestNode(t, root, "n1", RoleWorker)).Leaf
	// NotBefore is backdated, so two thirds are measured from it.
	renewAt := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) * 2 / 3)
	tests := []struct {
		name string
		now  time.Time
		want bool
	}{
		{"just issued", testNow, false},
		{"half way", testNow.Add(DefaultNodeCertValidity / 2), false},
		{"one second before two thirds", renewAt.Add(-time.Second), false},
		{"at two thirds", renewAt, true},
		{"61 days", testNow.Add(61 * 24 * time.Hour), true},
		{"expired", testNow.Add(DefaultNodeCertValidity + time.Hour), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NeedsRenewal(leaf, tt.now); got != tt.want {
				t.Fatalf("NeedsRenewal(%v) = %v, want %v", tt.now, got, tt.want)
			}
		})
	}
}

func TestParseNodeIdentityRejectsNonNodeCerts(t *testing.T) {
	root := newTestRoot(t, "c")
	tests := []struct {
		name string
		pem  []byte
	}{
		{"root CA has no role", root.CertPEM()},
		{"not PEM", []byte("x")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseNodeIdentity(tt.pem); !errors.Is(err, ErrInvalidCertificate) {
				t.Fatalf("err = %v, want ErrInvalidCertificate", err)
			}
		})
	}
}

func TestIssueNodeCertificateRejectsOtherKeyTypes(t *testing.T) {
	root := newTestRoot(t, "c")
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, p384)
	if err != nil {
		t.Fatal(err)
	}
	csr := pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: der})
	if _, err := root.IssueNodeCertificate(csr, "n1", RoleWorker, testNow); !errors.Is(err, ErrInvalidCSR) {
		t.Fatalf("P-384 CSR: err = %v, want ErrInvalidCSR", err)
	}
}
