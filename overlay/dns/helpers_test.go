package dns

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// ioTimeout bounds every query a test makes so that a broken server fails
// the test instead of hanging it; it is not a speed assertion.
const ioTimeout = 5 * time.Second

// fastTimeout is the ForwardTimeout of tests that exercise dead upstreams,
// so that they fail over in a blink.
const fastTimeout = 200 * time.Millisecond

// bigCount is how many A records the fake upstream returns for bigName:
// more than fit in 512 bytes, fewer than fit in 4096.
const bigCount = 100

const (
	exampleName = "example.com."
	bigName     = "big.example."
)

var exampleAddr = netip.MustParseAddr("192.0.2.1")

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// listenPair opens a UDP socket and a TCP listener on the same random
// loopback port, like a nameserver's.
func listenPair(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			return pc, l
		}
		pc.Close() // the TCP port was taken: try another
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil, nil
}

// fakeUpstream is a nameserver on a loopback port: exampleName has
// exampleAddr, bigName is truncated over UDP and has bigCount addresses
// over TCP, everything else is NXDOMAIN.
type fakeUpstream struct {
	addr       netip.AddrPort
	udpQueries atomic.Int32
	tcpQueries atomic.Int32
}

func newFakeUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	pc, l := listenPair(t)
	u := &fakeUpstream{addr: netip.MustParseAddrPort(pc.LocalAddr().String())}
	startServers(t, pc, l, u)
	return u
}

// startServers serves h on pc and l until the test ends.
func startServers(t *testing.T, pc net.PacketConn, l net.Listener, h mdns.Handler) {
	t.Helper()
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: h}, {Listener: l, Handler: h}} {
		done, err := serve(srv, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			srv.Shutdown()
			<-done
		})
	}
}

func (u *fakeUpstream) ServeDNS(w mdns.ResponseWriter, req *mdns.Msg) {
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	if tcp {
		u.tcpQueries.Add(1)
	} else {
		u.udpQueries.Add(1)
	}
	resp := new(mdns.Msg)
	resp.SetReply(req)
	q := req.Question[0]
	switch {
	case q.Name == exampleName && q.Qtype == mdns.TypeA:
		resp.Answer = append(resp.Answer, aRecord(q.Name, exampleAddr))
	case q.Name == bigName && !tcp:
		resp.Truncated = true
	case q.Name == bigName:
		for i := range bigCount {
			resp.Answer = append(resp.Answer, aRecord(q.Name, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})))
		}
	default:
		resp.Rcode = mdns.RcodeNameError
	}
	w.WriteMsg(resp)
}

func aRecord(name string, a netip.Addr) *mdns.A {
	return &mdns.A{Hdr: mdns.RR_Header{Name: name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 300}, A: a.AsSlice()}
}

// deadUpstream returns a loopback address where nothing listens: queries
// are refused at once.
func deadUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, l := listenPair(t)
	addr := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	l.Close()
	return addr
}

// silentUpstream returns a loopback address whose socket never answers:
// queries time out.
func silentUpstream(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, l := listenPair(t)
	t.Cleanup(func() { pc.Close(); l.Close() })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

// loopbackListen is a ListenFunc for tests without root: each "netns path"
// gets listeners on a loopback port of its own, found again with addr.
type loopbackListen struct {
	t     *testing.T
	mu    sync.Mutex        // guards following
	addrs map[string]string // netns path → host:port
}

func (f *loopbackListen) listen(ctx context.Context, netnsPath string) (net.PacketConn, net.Listener, error) {
	pc, l := listenPair(f.t)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.addrs == nil {
		f.addrs = make(map[string]string)
	}
	f.addrs[netnsPath] = pc.LocalAddr().String()
	return pc, l, nil
}

func (f *loopbackListen) addr(netnsPath string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addrs[netnsPath]
}

// newTestServer returns a Server on loopback listeners, closed at the end
// of the test.
func newTestServer(t *testing.T, cfg Config) (*Server, *loopbackListen) {
	t.Helper()
	ll := &loopbackListen{t: t}
	cfg.Listen = ll.listen
	cfg.Logger = testLogger(t)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, ll
}

// question returns a query for name and qtype, with an EDNS(0) OPT record
// announcing udpSize when udpSize is not zero.
func question(name string, qtype uint16, udpSize uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if udpSize != 0 {
		m.SetEdns0(udpSize, false)
	}
	return m
}

// ask sends m to addr over network ("udp" or "tcp").
func ask(network, addr string, m *mdns.Msg) (*mdns.Msg, error) {
	c := &mdns.Client{Net: network, Timeout: ioTimeout}
	resp, _, err := c.Exchange(m, addr)
	return resp, err
}

// answerAddrs returns the sorted addresses of resp's A records.
func answerAddrs(resp *mdns.Msg) []netip.Addr {
	var addrs []netip.Addr
	for _, rr := range resp.Answer {
		if a, ok := rr.(*mdns.A); ok {
			addr, _ := netip.AddrFromSlice(a.A)
			addrs = append(addrs, addr.Unmap())
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return addrs
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// checkGoroutines fails the test if, once its cleanups ran, more goroutines
// are left than there were when it started. Register it first, so that it
// runs last.
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(ioTimeout)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("%d goroutines left, %d before the test:\n%s", n, before, buf)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// describe is a one-line summary of an answer for failure messages.
func describe(resp *mdns.Msg) string {
	if resp == nil {
		return "<nil>"
	}
	return fmt.Sprintf("rcode %s, tc %v, aa %v, %d answers %v",
		mdns.RcodeToString[resp.Rcode], resp.Truncated, resp.Authoritative, len(resp.Answer), answerAddrs(resp))
}
