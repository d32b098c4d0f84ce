package ca

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// serverNameSeen handshakes a client against server over net.Pipe and
// returns the CN of the server certificate the client saw, and the CN of the
// client certificate the server verified ("" if none).
func serverNameSeen(t *testing.T, server, client *tls.Config) (serverCN, clientCN string) {
	t.Helper()
	sc, cc := net.Pipe()
	t.Cleanup(func() { sc.Close(); cc.Close() })
	deadline := time.Now().Add(10 * time.Second)
	_ = sc.SetDeadline(deadline)
	_ = cc.SetDeadline(deadline)
	got := make(chan string, 1)
	go func() {
		s := tls.Server(sc, server)
		if err := s.Handshake(); err != nil {
			sc.Close()
			got <- "handshake error: " + err.Error()
			return
		}
		_, _ = s.Write([]byte{1})
		cn := ""
		if ch := s.ConnectionState().VerifiedChains; len(ch) > 0 {
			cn = ch[0][0].Subject.CommonName
		}
		got <- cn
	}()
	c := tls.Client(cc, client)
	if err := c.Handshake(); err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		t.Fatalf("client read: %v", err)
	}
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName, <-got
}

func TestKeyPairSwapsCertificates(t *testing.T) {
	root := newTestRoot(t, "c")
	m1 := tlsCert(t, issueTestNode(t, root, "m1", RoleManager))
	m2 := tlsCert(t, issueTestNode(t, root, "m2", RoleManager))
	w1 := tlsCert(t, issueTestNode(t, root, "w1", RoleWorker))
	w2 := tlsCert(t, issueTestNode(t, root, "w2", RoleWorker))

	serverKP := NewKeyPair(m1)
	clientKP := NewKeyPair(w1)
	server := serverKP.ApplyTo(ServerTLSConfig(m1, root.Pool()))
	client := clientKP.ApplyTo(ClientTLSConfig(&w1, root.Pool(), ManagerServerName))

	tests := []struct {
		name       string
		swap       func()
		wantServer string
		wantClient string
	}{
		{"initial certificates", func() {}, "m1", "w1"},
		{"server renewed", func() { serverKP.Set(m2) }, "m2", "w1"},
		{"client renewed", func() { clientKP.Set(w2) }, "m2", "w2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.swap()
			s, c := serverNameSeen(t, server, client)
			if s != tt.wantServer || c != tt.wantClient {
				t.Fatalf("saw server %q client %q, want %q %q", s, c, tt.wantServer, tt.wantClient)
			}
		})
	}
	if got := serverKP.Get().Leaf.Subject.CommonName; got != "m2" {
		t.Fatalf("Get() = %q, want m2", got)
	}
}

func TestRenewalTime(t *testing.T) {
	root := newTestRoot(t, "c")
	leaf := tlsCert(t, issueTestNode(t, root, "n1", RoleWorker)).Leaf
	// Backdating shifts the point slightly before 60 days after issue.
	want := testNow.Add(-certBackdate).Add((DefaultNodeCertValidity + certBackdate) * 2 / 3)
	if got := RenewalTime(leaf); !got.Equal(want) {
		t.Fatalf("RenewalTime = %v, want %v", got, want)
	}
}
