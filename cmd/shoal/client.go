package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/shoal-project/shoal/internal/ca"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// defaultHost is the socket of a shoald started with its default --run-dir.
const defaultHost = "unix:///run/shoal/shoal.sock"

// connectTimeout bounds the wait for shoald's socket. A local daemon accepts
// in well under a millisecond, so a few seconds without a connection only
// ever mean it is not running or is wedged: say so rather than hang.
const connectTimeout = 5 * time.Second

// daemonClient holds the clients of the services shoald serves locally.
type daemonClient struct {
	control shoalpb.ControlClient
	local   shoalpb.LocalClient
}

func newDaemonClient(conn *grpc.ClientConn) *daemonClient {
	return &daemonClient{control: shoalpb.NewControlClient(conn), local: shoalpb.NewLocalClient(conn)}
}

// socketPath turns a --host value into an absolute socket path. It accepts
// "unix:///path" and a plain path (tcp:// goes to dialTCP).
func socketPath(host string) (string, error) {
	p := host
	if scheme, rest, ok := strings.Cut(host, "://"); ok {
		if scheme != "unix" {
			return "", usageErrorf("--host %q: expected unix:///path/to/shoal.sock, a socket path, or tcp://MANAGER:PORT", host)
		}
		p = rest
	}
	if p == "" {
		return "", usageErrorf("--host %q: no socket path", host)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("--host %q: %w", host, err)
	}
	return abs, nil
}

// dial connects to shoald at host and waits, at most connectTimeout, until
// the connection is up, so that a missing daemon is one clear error rather
// than a transport error from whichever call comes first. A tcp:// host is a
// manager reached over mutual TLS with the credentials in tlsDir.
func dial(ctx context.Context, host, tlsDir, token string, warnings io.Writer) (*grpc.ClientConn, error) {
	tokUnary, tokStream := withToken(token)
	if addr, ok := strings.CutPrefix(host, "tcp://"); ok {
		return dialTCP(ctx, addr, tlsDir, warnings, tokUnary, tokStream)
	}
	path, err := socketPath(host)
	if err != nil {
		return nil, err
	}
	var (
		mu      sync.Mutex // guards following
		dialErr error      // last failure to connect to the socket
	)
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			mu.Lock()
			dialErr = err
			mu.Unlock()
		}
		return c, err
	}
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		grpc.WithChainUnaryInterceptor(cleanUnaryErrors, warnStale(warnings), tokUnary),
		grpc.WithChainStreamInterceptor(cleanStreamErrors, tokStream),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to shoald at %s: %w", path, err)
	}
	if waitReady(ctx, conn) {
		return conn, nil
	}
	_ = conn.Close()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	if errors.Is(dialErr, fs.ErrPermission) {
		return nil, fmt.Errorf("cannot reach shoald at %s: permission denied (the socket is root-only: run shoal as root)", path)
	}
	return nil, fmt.Errorf("cannot reach shoald at %s: is the daemon running? (set --host or %s)", path, envHost)
}

// waitReady waits, at most connectTimeout, for conn to connect.
func waitReady(ctx context.Context, conn *grpc.ClientConn) bool {
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn.Connect()
	for {
		s := conn.GetState()
		if s == connectivity.Ready {
			return true
		}
		if s == connectivity.TransientFailure || s == connectivity.Shutdown || !conn.WaitForStateChange(cctx, s) {
			return false
		}
	}
}

// dialTCP connects to a manager's cluster API over mutual TLS, presenting
// the node credentials (ca.crt, node.crt, node.key) found in tlsDir. Only
// the control API is served there: the commands about one host's images,
// logs and membership need that host's own socket.
func dialTCP(ctx context.Context, addr, tlsDir string, warnings io.Writer, tokUnary grpc.UnaryClientInterceptor, tokStream grpc.StreamClientInterceptor) (*grpc.ClientConn, error) {
	creds, err := ca.Store{Dir: tlsDir}.Load()
	if err != nil {
		return nil, fmt.Errorf("load TLS credentials from %s (set --tls-dir): %w", tlsDir, err)
	}
	cert, err := creds.TLSCertificate()
	if err != nil {
		return nil, fmt.Errorf("TLS credentials in %s: %w", tlsDir, err)
	}
	pool, err := creds.CertPool()
	if err != nil {
		return nil, fmt.Errorf("TLS credentials in %s: %w", tlsDir, err)
	}
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(ca.ClientTLSConfig(&cert, pool, ca.ManagerServerName))),
		grpc.WithChainUnaryInterceptor(cleanUnaryErrors, warnStale(warnings), tokUnary),
		grpc.WithChainStreamInterceptor(cleanStreamErrors, tokStream),
	)
	if err != nil {
		return nil, fmt.Errorf("--host tcp://%s: %w", addr, err)
	}
	if waitReady(ctx, conn) {
		return conn, nil
	}
	_ = conn.Close()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("cannot reach a manager at %s over mutual TLS: is it up, and is %s a certificate of its cluster?", addr, tlsDir)
}

// rpcError is a gRPC error that prints as its status message alone, without
// grpc's "rpc error: code = ... desc =" prefix, and still answers
// status.Code for callers that decide on the code.
type rpcError struct{ st *status.Status }

func (e *rpcError) Error() string {
	if m := e.st.Message(); m != "" {
		return m
	}
	return e.st.Code().String()
}

func (e *rpcError) GRPCStatus() *status.Status { return e.st }

// cleanError turns gRPC status errors into rpcErrors; other errors (io.EOF
// ending a stream) pass unchanged.
func cleanError(err error) error {
	if err == nil {
		return nil
	}
	var re *rpcError
	if errors.As(err, &re) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	return &rpcError{st}
}

func cleanUnaryErrors(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return cleanError(invoker(ctx, method, req, reply, cc, opts...))
}

// operatorTokenHeader carries --token to the daemon (see internal/daemon).
const operatorTokenHeader = "shoal-operator-token"

// withToken returns interceptors that send the operator token on every
// call, when one is set.
func withToken(token string) (grpc.UnaryClientInterceptor, grpc.StreamClientInterceptor) {
	add := func(ctx context.Context) context.Context {
		if token == "" {
			return ctx
		}
		return metadata.AppendToOutgoingContext(ctx, operatorTokenHeader, token)
	}
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(add(ctx), method, req, reply, cc, opts...)
		}, func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(add(ctx), desc, cc, method, opts...)
		}
}

// staleHeader is the header a manager sets on a read answered without a
// leader (see internal/daemon).
const staleHeader = "shoal-stale"

// warnStale returns an interceptor that prints a manager's warning when it
// answered a read from possibly stale state.
func warnStale(w io.Writer) grpc.UnaryClientInterceptor {
	var once sync.Once
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		var md metadata.MD
		err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Header(&md))...)
		if v := md.Get(staleHeader); len(v) > 0 {
			once.Do(func() { fmt.Fprintf(w, "Warning: %s\n", v[0]) })
		}
		return err
	}
}

func cleanStreamErrors(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, cleanError(err)
	}
	return cleanStream{s}, nil
}

// cleanStream cleans the errors of every call on a client stream.
type cleanStream struct{ grpc.ClientStream }

func (s cleanStream) SendMsg(m any) error { return cleanError(s.ClientStream.SendMsg(m)) }
func (s cleanStream) RecvMsg(m any) error { return cleanError(s.ClientStream.RecvMsg(m)) }
func (s cleanStream) CloseSend() error    { return cleanError(s.ClientStream.CloseSend()) }

func (s cleanStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	return md, cleanError(err)
}

// isEOF reports whether a stream ended normally.
func isEOF(err error) bool { return errors.Is(err, io.EOF) }
