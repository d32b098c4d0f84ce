package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// TestServerAnswers asks a served container's listeners, over UDP and TCP,
// for Shoal names and forwarded ones.
func TestServerAnswers(t *testing.T) {
	checkGoroutines(t)
	up := newFakeUpstream(t)
	s, ll := newTestServer(t, Config{Resolver: testTable(), Upstreams: []netip.AddrPort{up.addr}})
	if err := s.Add(t.Context(), "c1", "ns-c1", Scope{Networks: []string{"net-a"}}); err != nil {
		t.Fatal(err)
	}
	addr := ll.addr("ns-c1")

	tests := []struct {
		desc      string
		name      string
		qtype     uint16
		rcode     int
		want      []netip.Addr
		forwarded bool // the upstream is asked; else Shoal answers, authoritatively, with shoalTTL
	}{
		{desc: "service VIP", name: "web.", qtype: mdns.TypeA, want: addrs("10.0.0.2")},
		{desc: "case-insensitive", name: "WeB.", qtype: mdns.TypeA, want: addrs("10.0.0.2")},
		{desc: "tasks", name: "tasks.web.", qtype: mdns.TypeA, want: addrs("10.0.0.5", "10.0.0.6")},
		{desc: "dnsrr", name: "rr.", qtype: mdns.TypeA, want: addrs("10.0.0.7", "10.0.0.8")},
		{desc: "ANY is answered with A", name: "web.", qtype: mdns.TypeANY, want: addrs("10.0.0.2")},
		{desc: "AAAA is empty", name: "web.", qtype: mdns.TypeAAAA},
		{desc: "other types are empty", name: "web.", qtype: mdns.TypeMX},
		{desc: "no ready task is empty", name: "tasks.idle.", qtype: mdns.TypeA},
		{desc: "other network's service forwarded", name: "secret.", qtype: mdns.TypeA, rcode: mdns.RcodeNameError, forwarded: true},
		{desc: "unknown name forwarded", name: exampleName, qtype: mdns.TypeA, want: []netip.Addr{exampleAddr}, forwarded: true},
		{desc: "upstream NXDOMAIN relayed", name: "nx.example.", qtype: mdns.TypeA, rcode: mdns.RcodeNameError, forwarded: true},
	}
	for _, tt := range tests {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(tt.desc+"/"+network, func(t *testing.T) {
				before := up.udpQueries.Load() + up.tcpQueries.Load()
				q := question(tt.name, tt.qtype, 0)
				resp, err := ask(network, addr, q)
				if err != nil {
					t.Fatal(err)
				}
				forwarded := up.udpQueries.Load()+up.tcpQueries.Load() > before
				ok := resp.Rcode == tt.rcode && slices.Equal(answerAddrs(resp), tt.want) &&
					len(resp.Answer) == len(tt.want) && forwarded == tt.forwarded && resp.Id == q.Id &&
					!resp.Truncated
				if !tt.forwarded {
					ok = ok && resp.Authoritative && resp.RecursionAvailable
					for _, rr := range resp.Answer {
						ok = ok && rr.Header().Ttl == shoalTTL && rr.Header().Name == tt.name
					}
				}
				if !ok {
					t.Errorf("%s %s over %s: %s, forwarded %v; want rcode %s, answers %v, forwarded %v",
						tt.name, mdns.TypeToString[tt.qtype], network, describe(resp), forwarded,
						mdns.RcodeToString[tt.rcode], tt.want, tt.forwarded)
				}
			})
		}
	}
}

// TestServerForwardFailure checks SERVFAIL when no upstream answers, and
// that a dead upstream is skipped for the next one.
func TestServerForwardFailure(t *testing.T) {
	checkGoroutines(t)
	up := newFakeUpstream(t)
	emptyConf := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(emptyConf, []byte("search example.com\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		desc      string
		upstreams []netip.AddrPort
		conf      string
		rcode     int
		want      []netip.Addr
	}{
		{desc: "refused", upstreams: []netip.AddrPort{deadUpstream(t)}, rcode: mdns.RcodeServerFailure},
		{desc: "timed out", upstreams: []netip.AddrPort{silentUpstream(t)}, rcode: mdns.RcodeServerFailure},
		{desc: "no upstream configured", conf: emptyConf, rcode: mdns.RcodeServerFailure},
		{desc: "dead then alive", upstreams: []netip.AddrPort{deadUpstream(t), silentUpstream(t), up.addr}, want: []netip.Addr{exampleAddr}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			s, ll := newTestServer(t, Config{
				Resolver:       testTable(),
				Upstreams:      tt.upstreams,
				ResolvConf:     tt.conf,
				ForwardTimeout: fastTimeout,
			})
			if err := s.Add(t.Context(), "c1", "ns", Scope{Networks: []string{"net-a"}}); err != nil {
				t.Fatal(err)
			}
			for _, network := range []string{"udp", "tcp"} {
				start := time.Now()
				resp, err := ask(network, ll.addr("ns"), question(exampleName, mdns.TypeA, 0))
				if err != nil {
					t.Fatalf("over %s: %v", network, err)
				}
				if resp.Rcode != tt.rcode || !slices.Equal(answerAddrs(resp), tt.want) {
					t.Errorf("over %s: %s; want rcode %s, answers %v",
						network, describe(resp), mdns.RcodeToString[tt.rcode], tt.want)
				}
				// Every upstream, DefaultForwardAttempts times, fastTimeout each.
				if limit := time.Duration(DefaultForwardAttempts*len(tt.upstreams)+1) * fastTimeout; time.Since(start) > limit+time.Second {
					t.Errorf("over %s: answered after %v; want within about %v", network, time.Since(start), limit)
				}
			}
		})
	}
}

// TestServerTruncation checks the TCP fallback towards the upstream and the
// truncation of UDP answers to the client's buffer, for forwarded and
// Shoal answers.
func TestServerTruncation(t *testing.T) {
	checkGoroutines(t)
	up := newFakeUpstream(t)
	tb := testTable()
	var many []netip.Addr
	for i := range 200 {
		many = append(many, netip.AddrFrom4([4]byte{10, 0, 1, byte(i)}))
	}
	tb.Set("net-a", "many", Record{DNSRR: true, Tasks: many})
	s, ll := newTestServer(t, Config{Resolver: tb, Upstreams: []netip.AddrPort{up.addr}})
	if err := s.Add(t.Context(), "c1", "ns", Scope{Networks: []string{"net-a"}}); err != nil {
		t.Fatal(err)
	}
	addr := ll.addr("ns")
	tests := []struct {
		desc      string
		network   string
		name      string
		udpSize   uint16
		truncated bool
		count     int
		upTCP     bool // the upstream was asked over TCP
	}{
		{desc: "forwarded, fits the client's EDNS buffer", network: "udp", name: bigName, udpSize: 4096, count: bigCount, upTCP: true},
		{desc: "forwarded, too big for 512 bytes", network: "udp", name: bigName, truncated: true, upTCP: true},
		{desc: "forwarded, client retries over TCP", network: "tcp", name: bigName, count: bigCount, upTCP: true},
		{desc: "shoal, too big for 512 bytes", network: "udp", name: "many.", truncated: true},
		{desc: "shoal, client retries over TCP", network: "tcp", name: "many.", count: len(many)},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			tcpBefore := up.tcpQueries.Load()
			resp, err := ask(tt.network, addr, question(tt.name, mdns.TypeA, tt.udpSize))
			if err != nil {
				t.Fatal(err)
			}
			upTCP := up.tcpQueries.Load() > tcpBefore
			resp.Compress = true // as sent: Truncate compresses
			size := resp.Len()
			limit := int(max(tt.udpSize, mdns.MinMsgSize))
			ok := resp.Rcode == mdns.RcodeSuccess && resp.Truncated == tt.truncated && upTCP == tt.upTCP &&
				(tt.truncated || len(resp.Answer) == tt.count) && (tt.network == "tcp" || size <= limit)
			if !ok {
				t.Errorf("%s over %s (EDNS %d): %s, %d bytes, upstream over TCP %v; want tc %v, %d answers, upstream over TCP %v",
					tt.name, tt.network, tt.udpSize, describe(resp), size, upTCP, tt.truncated, tt.count, tt.upTCP)
			}
		})
	}
}

// TestServerLifecycle checks Add, SetScope, Remove and Close, and that
// nothing is left running after them.
func TestServerLifecycle(t *testing.T) {
	checkGoroutines(t)
	up := newFakeUpstream(t)
	s, ll := newTestServer(t, Config{Resolver: testTable(), Upstreams: []netip.AddrPort{up.addr}})
	ctx := t.Context()
	onA := Scope{Networks: []string{"net-a"}}
	onB := Scope{Networks: []string{"net-b"}}
	if err := s.Add(ctx, "c1", "ns-c1", onA); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, "c2", "ns-c2", onB); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, "c1", "ns-other", onA); !errors.Is(err, ErrExists) {
		t.Errorf("second Add of c1: %v; want ErrExists", err)
	}
	if err := s.SetScope("nope", onA); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetScope of an unknown container: %v; want ErrNotFound", err)
	}

	lookup := func(container, name string) (*mdns.Msg, error) {
		return ask("udp", ll.addr(container), question(name, mdns.TypeA, 0))
	}
	want := func(step, container, name string, want []netip.Addr) {
		t.Helper()
		resp, err := lookup(container, name)
		if err != nil {
			t.Fatalf("%s: %s from %s: %v", step, name, container, err)
		}
		if resp.Rcode != mdns.RcodeSuccess || !slices.Equal(answerAddrs(resp), want) {
			t.Errorf("%s: %s from %s: %s; want %v", step, name, container, describe(resp), want)
		}
	}
	want("own scope", "ns-c1", "web.", addrs("10.0.0.2"))
	want("own scope", "ns-c2", "web.", addrs("10.1.0.3"))
	want("own scope", "ns-c2", "secret.", addrs("10.1.0.2"))

	if err := s.SetScope("c1", Scope{Networks: []string{"net-b", "net-a"}}); err != nil {
		t.Fatal(err)
	}
	want("after SetScope", "ns-c1", "secret.", addrs("10.1.0.2"))
	want("after SetScope", "ns-c1", "web.", addrs("10.1.0.3"))

	s.Remove("c1")
	s.Remove("c1") // removing what is absent is fine
	if _, err := ask("tcp", ll.addr("ns-c1"), question("web.", mdns.TypeA, 0)); err == nil {
		t.Error("TCP query after Remove answered; want the listener closed")
	}
	if _, err := lookup("ns-c1", "web."); err == nil {
		t.Error("UDP query after Remove answered; want the socket closed")
	}
	want("other container after Remove", "ns-c2", "web.", addrs("10.1.0.3"))
	if err := s.Add(ctx, "c1", "ns-c1-again", onA); err != nil {
		t.Fatalf("Add after Remove: %v", err)
	}
	want("added again", "ns-c1-again", "web.", addrs("10.0.0.2"))

	s.Close()
	s.Close()
	for _, ns := range []string{"ns-c1-again", "ns-c2"} {
		if _, err := ask("tcp", ll.addr(ns), question("web.", mdns.TypeA, 0)); err == nil {
			t.Errorf("query to %s after Close answered; want the listener closed", ns)
		}
	}
	if err := s.Add(ctx, "c3", "ns-c3", onA); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Close: %v; want ErrClosed", err)
	}
	if err := s.SetScope("c2", onA); !errors.Is(err, ErrClosed) {
		t.Errorf("SetScope after Close: %v; want ErrClosed", err)
	}
}

// TestServerRemoveCancelsForward checks that Remove does not wait for a
// forward in flight to time out.
func TestServerRemoveCancelsForward(t *testing.T) {
	checkGoroutines(t)
	const slow = time.Minute // far longer than the test may take
	s, ll := newTestServer(t, Config{
		Resolver:       testTable(),
		Upstreams:      []netip.AddrPort{silentUpstream(t)},
		ForwardTimeout: slow,
	})
	if err := s.Add(t.Context(), "c1", "ns", Scope{}); err != nil {
		t.Fatal(err)
	}
	c := &mdns.Client{Net: "tcp", Timeout: ioTimeout}
	conn, err := c.Dial(ll.addr("ns"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.WriteMsg(question(exampleName, mdns.TypeA, 0)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the forward start
	start := time.Now()
	s.Remove("c1")
	if d := time.Since(start); d > ioTimeout {
		t.Errorf("Remove took %v with a forward in flight; want it cancelled", d)
	}
	// The query in flight ends with SERVFAIL or a closed connection.
	if resp, err := conn.ReadMsg(); err == nil && resp.Rcode != mdns.RcodeServerFailure {
		t.Errorf("query in flight at Remove: %s; want SERVFAIL or no answer", describe(resp))
	}
}

// TestServerAddListenError checks that a failing ListenFunc fails Add and
// leaves nothing behind.
func TestServerAddListenError(t *testing.T) {
	checkGoroutines(t)
	errListen := errors.New("no such namespace")
	s, err := New(Config{
		Resolver: testTable(),
		Listen: func(context.Context, string) (net.PacketConn, net.Listener, error) {
			return nil, nil, errListen
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Add(t.Context(), "c1", "ns", Scope{}); !errors.Is(err, errListen) {
		t.Errorf("Add: %v; want the listen error", err)
	}
	if err := s.SetScope("c1", Scope{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetScope after a failed Add: %v; want ErrNotFound", err)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New without a Resolver succeeded; want an error")
	}
}
