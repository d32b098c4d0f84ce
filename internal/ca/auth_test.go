package ca

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

const (
	methodCheck = "/grpc.health.v1.Health/Check"
	methodWatch = "/grpc.health.v1.Health/Watch"
	methodList  = "/grpc.health.v1.Health/List"
)

// identityRecorder is a unary interceptor placed after the auth one that
// remembers who the handler would see as the caller.
type identityRecorder struct {
	mu sync.Mutex // guards following
	id Identity
	ok bool
}

func (r *identityRecorder) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	r.mu.Lock()
	r.id, r.ok = IdentityFromContext(ctx)
	r.mu.Unlock()
	return handler(ctx, req)
}

func (r *identityRecorder) get() (Identity, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.id, r.ok
}

// startHealthServer serves the gRPC health service on 127.0.0.1 with mTLS
// (join listener: certificates verified if given) and the given policy.
func startHealthServer(t *testing.T, server tls.Certificate, root *RootCA, policy map[string][]Role, open map[string]bool) (addr string, rec *identityRecorder) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	rec = &identityRecorder{}
	unary, stream := AuthInterceptors(policy, open)
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(ServerTLSConfigAllowJoin(server, root.Pool()))),
		grpc.ChainUnaryInterceptor(unary, rec.intercept),
		grpc.ChainStreamInterceptor(stream),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String(), rec
}

// callHealth calls method on addr as the holder of client (nil: no
// certificate) and returns the call's error.
func callHealth(t *testing.T, addr string, client *tls.Certificate, root *RootCA, method string) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(ClientTLSConfig(client, root.Pool(), ManagerServerName))))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := healthpb.NewHealthClient(conn)
	switch method {
	case methodCheck:
		_, err = c.Check(ctx, &healthpb.HealthCheckRequest{})
	case methodList:
		_, err = c.List(ctx, &healthpb.HealthListRequest{})
	case methodWatch:
		var s grpc.ServerStreamingClient[healthpb.HealthCheckResponse]
		s, err = c.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = s.Recv()
		}
	default:
		t.Fatalf("unknown method %s", method)
	}
	return err
}

func TestAuthInterceptorsOverMTLS(t *testing.T) {
	root := newTestRoot(t, "c")
	other := newTestRoot(t, "c")
	serverCert := tlsCert(t, issueTestNode(t, root, "m0", RoleManager))
	manager := tlsCert(t, issueTestNode(t, root, "m1", RoleManager))
	worker := tlsCert(t, issueTestNode(t, root, "w1", RoleWorker))
	foreign := tlsCert(t, issueTestNode(t, other, "m9", RoleManager))
	forged := forgedManager(t, "c")

	managerOnly := map[string][]Role{
		methodCheck: {RoleManager},
		methodWatch: {RoleManager},
	}
	everyone := map[string][]Role{
		methodCheck: {RoleWorker, RoleManager},
		methodWatch: {RoleWorker, RoleManager},
	}
	tests := []struct {
		name     string
		policy   map[string][]Role
		open     map[string]bool
		client   *tls.Certificate
		method   string
		wantCode codes.Code
		wantMsg  string
		wantID   *Identity // identity the handler sees, for OK unary calls
	}{
		{
			name: "manager calls manager-only method", policy: managerOnly,
			client: &manager, method: methodCheck, wantCode: codes.OK,
			wantID: &Identity{NodeID: "m1", Role: RoleManager, ClusterID: "c"},
		},
		{
			name: "worker calls manager-only method", policy: managerOnly,
			client: &worker, method: methodCheck, wantCode: codes.PermissionDenied,
			wantMsg: "node w1 (worker) may not call /grpc.health.v1.Health/Check: requires manager",
		},
		{
			name: "worker calls manager-only stream", policy: managerOnly,
			client: &worker, method: methodWatch, wantCode: codes.PermissionDenied,
			wantMsg: "node w1 (worker) may not call /grpc.health.v1.Health/Watch: requires manager",
		},
		{
			name: "worker calls stream open to workers", policy: everyone,
			client: &worker, method: methodWatch, wantCode: codes.OK,
		},
		{
			name: "worker calls unary open to workers", policy: everyone,
			client: &worker, method: methodCheck, wantCode: codes.OK,
			wantID: &Identity{NodeID: "w1", Role: RoleWorker, ClusterID: "c"},
		},
		{
			name: "method missing from policy is denied", policy: everyone,
			client: &manager, method: methodList, wantCode: codes.PermissionDenied,
			wantMsg: "has no authorisation policy",
		},
		{
			name: "no certificate", policy: everyone,
			client: nil, method: methodCheck, wantCode: codes.Unauthenticated,
		},
		{
			name: "no certificate on unauthenticated method", policy: everyone, open: map[string]bool{methodList: true},
			client: nil, method: methodList, wantCode: codes.OK,
		},
		{
			name: "forged manager certificate", policy: managerOnly,
			client: &forged, method: methodCheck, wantCode: codes.Unauthenticated,
		},
		{
			name: "manager of another CA cannot connect", policy: managerOnly,
			client: &foreign, method: methodCheck, wantCode: codes.Unavailable,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, rec := startHealthServer(t, serverCert, root, tt.policy, tt.open)
			err := callHealth(t, addr, tt.client, root, tt.method)
			st := status.Convert(err)
			if st.Code() != tt.wantCode {
				t.Fatalf("call %s: code %v (%v), want %v", tt.method, st.Code(), err, tt.wantCode)
			}
			if !strings.Contains(st.Message(), tt.wantMsg) {
				t.Fatalf("message %q does not contain %q", st.Message(), tt.wantMsg)
			}
			if tt.wantID != nil {
				id, ok := rec.get()
				want := *tt.wantID
				want.NotAfter = testNow.Add(DefaultNodeCertValidity)
				if !ok || id != want {
					t.Fatalf("handler saw identity %+v (ok=%v), want %+v", id, ok, want)
				}
			}
		})
	}
}
