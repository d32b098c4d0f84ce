package dns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
)

// Forwarding defaults.
const (
	// DefaultForwardTimeout bounds one exchange with one upstream. A
	// recursive resolver answers a cold name well within it; a dead one is
	// given up on soon enough to try the next inside forwardBudget.
	DefaultForwardTimeout = 2 * time.Second
	// DefaultForwardAttempts is how many times the list of upstreams is
	// tried, glibc's default (options attempts:2).
	DefaultForwardAttempts = 2
	// forwardBudget caps the forwarding of one query, just under glibc's
	// default 5 s wait for an answer: the client gets our SERVFAIL instead
	// of giving up on us and re-sending while we are still trying.
	forwardBudget = 4500 * time.Millisecond
	// maxForwardsPerContainer bounds a container's concurrent forwards, and
	// with them the daemon's sockets: a container that floods its resolver
	// gets SERVFAIL, the other containers are not starved.
	maxForwardsPerContainer = 256
	// upstreamPort is where resolv.conf nameservers listen: the file has
	// no way to say another port.
	upstreamPort = 53
)

var errNoUpstreams = errors.New("no upstream nameservers")

// forwarder sends queries Shoal does not answer to the upstream resolvers.
// Its sockets are opened by whichever goroutine calls forward, so in the
// daemon's network namespace.
type forwarder struct {
	path     string           // resolv.conf to read the upstreams from
	fixed    []netip.AddrPort // upstreams that replace path's, when set
	timeout  time.Duration    // per exchange
	attempts int              // rounds over the upstreams

	mu      sync.Mutex // guards following
	stamp   fileStamp  // of path when servers was read
	servers []netip.AddrPort
}

// fileStamp identifies one version of a file, to re-read it only when it
// changed (editors and DHCP clients replace resolv.conf by renaming).
type fileStamp struct {
	exists bool
	ino    uint64
	size   int64
	mtime  time.Time
}

func statStamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return fileStamp{}, nil
	}
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{exists: true, size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, nil
}

// upstreams returns the servers to forward to, reading path again when it
// changed since the last call. When it cannot be read, the last servers
// read are kept and the error is returned beside them.
func (f *forwarder) upstreams() ([]netip.AddrPort, error) {
	if len(f.fixed) > 0 {
		return f.fixed, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	stamp, err := statStamp(f.path)
	if err != nil {
		return f.servers, fmt.Errorf("read upstreams: %w", err)
	}
	if stamp == f.stamp && f.servers != nil {
		return f.servers, nil
	}
	rc, err := readResolvConf(f.path)
	if err != nil {
		return f.servers, fmt.Errorf("read upstreams: %w", err)
	}
	servers := make([]netip.AddrPort, 0, len(rc.nameservers))
	for _, a := range rc.nameservers {
		servers = append(servers, netip.AddrPortFrom(a, upstreamPort))
	}
	f.stamp, f.servers = stamp, servers
	return servers, nil
}

// forward asks the upstreams for req's answer: over TCP when overTCP (the
// client asked over TCP, so it wants a large answer), else over UDP and
// again over TCP when the UDP answer is truncated. Every upstream is tried
// in order, f.attempts times, within forwardBudget; an upstream that
// answers SERVFAIL or REFUSED counts as failed. The answer carries req's
// id.
func (f *forwarder) forward(ctx context.Context, req *mdns.Msg, overTCP bool) (*mdns.Msg, error) {
	servers, err := f.upstreams()
	if len(servers) == 0 {
		return nil, errors.Join(errNoUpstreams, err)
	}
	ctx, cancel := context.WithTimeout(ctx, forwardBudget)
	defer cancel()
	var errs []error
	if err != nil { // the last upstreams read are used meanwhile
		errs = append(errs, err)
	}
	for range f.attempts {
		for _, s := range servers {
			resp, err := f.exchange(ctx, req, s, overTCP)
			if err == nil {
				return resp, nil
			}
			errs = append(errs, err)
			if ctx.Err() != nil {
				return nil, errors.Join(errs...)
			}
		}
	}
	return nil, errors.Join(errs...)
}

// exchange asks one upstream, with the TCP fallback on truncation.
func (f *forwarder) exchange(ctx context.Context, req *mdns.Msg, server netip.AddrPort, overTCP bool) (*mdns.Msg, error) {
	network := "udp"
	if overTCP {
		network = "tcp"
	}
	resp, err := f.exchangeOnce(ctx, req, server, network)
	if err == nil && resp.Truncated && network == "udp" {
		resp, err = f.exchangeOnce(ctx, req, server, "tcp")
	}
	if err != nil {
		return nil, err
	}
	if resp.Rcode == mdns.RcodeServerFailure || resp.Rcode == mdns.RcodeRefused {
		return nil, fmt.Errorf("forward to %s: answered %s", server, mdns.RcodeToString[resp.Rcode])
	}
	return resp, nil
}

// exchangeOnce sends req to server over network with a fresh random id (the
// client's id is the client's business, and a fresh one per exchange makes
// a spoofed answer harder to land) and checks that the answer is to that
// question.
func (f *forwarder) exchangeOnce(ctx context.Context, req *mdns.Msg, server netip.AddrPort, network string) (*mdns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	q := req.Copy()
	q.Id = mdns.Id()
	c := &mdns.Client{Net: network, Timeout: f.timeout}
	conn, err := c.DialContext(ctx, server.String())
	if err != nil {
		return nil, fmt.Errorf("forward to %s over %s: %w", server, network, err)
	}
	defer conn.Close()
	// The exchange heeds ctx's deadline only; closing the socket also ends
	// it when ctx is cancelled (the container is removed).
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, q, conn)
	if err != nil {
		return nil, fmt.Errorf("forward to %s over %s: %w", server, network, err)
	}
	if !resp.Response || !sameQuestion(resp.Question, req.Question) {
		return nil, fmt.Errorf("forward to %s over %s: answer does not match the question", server, network)
	}
	resp.Id = req.Id
	return resp, nil
}

func sameQuestion(a, b []mdns.Question) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Qtype != b[i].Qtype || a[i].Qclass != b[i].Qclass || !strings.EqualFold(a[i].Name, b[i].Name) {
			return false
		}
	}
	return true
}
