package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrNotIPLiteral is returned by NetNSDialer.DialContext for an address
// whose host is a name: resolving it could run on a thread outside the
// namespace, so callers must resolve first.
var ErrNotIPLiteral = errors.New("host must be an IP literal")

// NetNSDialer dials TCP connections whose sockets live in a given network
// namespace, so a benchmark client in the test process can reach addresses
// that exist only inside a simulated host. Only the dial switches
// namespaces; the connection is then used from any goroutine.
type NetNSDialer struct {
	path string // e.g. /run/netns/<name>
}

// NewNetNSDialer returns a dialer for the namespace at path; it fails if
// path is not a network namespace.
func NewNetNSDialer(path string) (*NetNSDialer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer f.Close()
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat netns %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return nil, fmt.Errorf("netns %s: not a namespace file", path)
	}
	return &NetNSDialer{path: path}, nil
}

// DialContext has the signature of net.Dialer.DialContext (and of
// http.Transport.DialContext). addr must be an IP literal with a port: a
// name lookup could run on another thread, outside the namespace.
//
// The socket is created on an OS thread locked to this goroutine and moved
// into the namespace; the thread is moved back afterwards. If moving it
// back fails the thread is left locked, so the Go runtime discards it when
// the goroutine ends instead of reusing it in the wrong namespace.
func (d *NetNSDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, d.path, err)
	}
	if net.ParseIP(host) == nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, d.path, ErrNotIPLiteral)
	}
	target, err := os.Open(d.path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", d.path, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("open current netns: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("enter netns %s: %w", d.path, err)
	}
	var dialer net.Dialer
	conn, dialErr := dialer.DialContext(ctx, network, addr)
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("leave netns %s: %w", d.path, err)
	}
	runtime.UnlockOSThread()
	if dialErr != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, d.path, dialErr)
	}
	return conn, nil
}
