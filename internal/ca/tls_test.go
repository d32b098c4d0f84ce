package ca

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"
)

// handshake runs a TLS handshake between the two configs over net.Pipe and
// returns the server's and the client's errors and whether the server
// verified a client certificate. The server side also reads
// one byte, because in TLS 1.3 a rejected client certificate is only
// reported to the client on its first read.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error, clientVerified bool) {
	t.Helper()
	sc, cc := net.Pipe()
	t.Cleanup(func() { sc.Close(); cc.Close() })
	deadline := time.Now().Add(10 * time.Second)
	_ = sc.SetDeadline(deadline)
	_ = cc.SetDeadline(deadline)
	done := make(chan error, 1)
	verified := make(chan bool, 1)
	go func() {
		s := tls.Server(sc, server)
		err := s.Handshake()
		if err == nil {
			_, err = s.Write([]byte{1})
		}
		if err != nil {
			sc.Close() // unblock the client
		}
		verified <- len(s.ConnectionState().VerifiedChains) > 0
		done <- err
	}()
	c := tls.Client(cc, client)
	clientErr = c.Handshake()
	if clientErr == nil {
		_, clientErr = c.Read(make([]byte, 1))
	}
	if clientErr != nil {
		cc.Close()
	}
	serverErr = <-done
	return serverErr, clientErr, <-verified
}

func TestServerTLSConfig(t *testing.T) {
	root := newTestRoot(t, "c")
	other := newTestRoot(t, "c")
	mgr := tlsCert(t, issueTestNode(t, root, "m1", RoleManager))
	worker := tlsCert(t, issueTestNode(t, root, "w1", RoleWorker))
	foreign := tlsCert(t, issueTestNode(t, other, "w2", RoleManager))
	forged := forgedManager(t, "c")

	// On the join listener a client without a certificate the server
	// would accept connects unauthenticated (the Go client does not even
	// send a certificate whose issuer the server did not ask for); the
	// interceptors then refuse it everything but the join RPC.
	tests := []struct {
		name         string
		allowJoin    bool
		client       *tls.Certificate
		wantOK       bool
		wantVerified bool
	}{
		{"worker of this cluster", false, &worker, true, true},
		{"cert of another CA", false, &foreign, false, false},
		{"forged self-signed manager", false, &forged, false, false},
		{"no client cert", false, nil, false, false},
		{"worker on join listener", true, &worker, true, true},
		{"no client cert on join listener", true, nil, true, false},
		{"cert of another CA on join listener", true, &foreign, false, false},
		{"forged manager on join listener is unauthenticated", true, &forged, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := ServerTLSConfig(mgr, root.Pool())
			if tt.allowJoin {
				srv = ServerTLSConfigAllowJoin(mgr, root.Pool())
			}
			serr, cerr, verified := handshake(t, srv, ClientTLSConfig(tt.client, root.Pool(), ManagerServerName))
			if ok := serr == nil && cerr == nil; ok != tt.wantOK {
				t.Fatalf("handshake ok=%v (server err %v, client err %v), want ok=%v", ok, serr, cerr, tt.wantOK)
			}
			if verified != tt.wantVerified {
				t.Fatalf("server verified a client certificate = %v, want %v", verified, tt.wantVerified)
			}
		})
	}
}

func TestClientTLSConfigVerifiesServer(t *testing.T) {
	root := newTestRoot(t, "c")
	other := newTestRoot(t, "c")
	worker := tlsCert(t, issueTestNode(t, root, "w1", RoleWorker))
	tests := []struct {
		name       string
		server     tls.Certificate
		serverName string
		wantOK     bool
	}{
		{"manager by shared name", tlsCert(t, issueTestNode(t, root, "m1", RoleManager)), ManagerServerName, true},
		{"manager by node id", tlsCert(t, issueTestNode(t, root, "m1", RoleManager)), "m1", true},
		{"worker posing as manager", tlsCert(t, issueTestNode(t, root, "w9", RoleWorker)), ManagerServerName, false},
		{"manager of another CA", tlsCert(t, issueTestNode(t, other, "m1", RoleManager)), ManagerServerName, false},
		{"forged manager", forgedManager(t, "c"), ManagerServerName, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serr, cerr, _ := handshake(t, ServerTLSConfig(tt.server, root.Pool()), ClientTLSConfig(&worker, root.Pool(), tt.serverName))
			if ok := serr == nil && cerr == nil; ok != tt.wantOK {
				t.Fatalf("handshake ok=%v (server err %v, client err %v), want ok=%v", ok, serr, cerr, tt.wantOK)
			}
		})
	}
}

func TestJoinClientTLSConfigPinsCA(t *testing.T) {
	root := newTestRoot(t, "c")
	impostor := newTestRoot(t, "c")
	tok, err := GenerateJoinToken(root.Digest(), RoleWorker)
	if err != nil {
		t.Fatal(err)
	}
	jt, err := ParseJoinToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	mgr := tlsCert(t, issueTestNode(t, root, "m1", RoleManager))
	leafOnly := mgr
	leafOnly.Certificate = mgr.Certificate[:1]
	tests := []struct {
		name    string
		server  tls.Certificate
		wantCA  bool // failure is a CA mismatch
		wantOK  bool
		srvName string
	}{
		{"real manager", mgr, false, true, ManagerServerName},
		{"impostor cluster", tlsCert(t, issueTestNode(t, impostor, "m1", RoleManager)), true, false, ManagerServerName},
		{"server without root in chain", leafOnly, true, false, ManagerServerName},
		{"wrong server name", mgr, false, false, "somebody-else"},
		{"forged manager", forgedManager(t, "c"), true, false, ManagerServerName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The joining host has no certificate, so the manager's
			// join listener must let it in; its own root pool is the
			// impostor's where the impostor is serving.
			serr, cerr, _ := handshake(t, ServerTLSConfigAllowJoin(tt.server, nil), JoinClientTLSConfig(jt, tt.srvName))
			if ok := serr == nil && cerr == nil; ok != tt.wantOK {
				t.Fatalf("handshake ok=%v (server err %v, client err %v), want ok=%v", ok, serr, cerr, tt.wantOK)
			}
			if tt.wantCA && !errors.Is(cerr, ErrCAMismatch) {
				t.Fatalf("client err = %v, want ErrCAMismatch", cerr)
			}
		})
	}
}
