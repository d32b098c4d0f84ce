package bridge

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/overlay/netnsutil"
	"github.com/shoal-project/shoal/overlay/netnsutil/netnstest"
)

func TestNormalizeMappings(t *testing.T) {
	a := netip.MustParseAddrPort("172.29.0.5:80")
	b := netip.MustParseAddrPort("172.29.0.6:80")
	tests := []struct {
		name    string
		in      []PortMapping
		want    []PortMapping
		wantErr bool
	}{
		{name: "none", in: nil, want: nil},
		{
			name: "sorted by protocol then port",
			in:   []PortMapping{{UDP, 53, a}, {TCP, 8081, b}, {TCP, 8080, a}},
			want: []PortMapping{{TCP, 8080, a}, {TCP, 8081, b}, {UDP, 53, a}},
		},
		{
			name: "identical duplicates published once",
			in:   []PortMapping{{TCP, 8080, a}, {TCP, 8080, a}},
			want: []PortMapping{{TCP, 8080, a}},
		},
		{name: "same port on tcp and udp", in: []PortMapping{{UDP, 8080, b}, {TCP, 8080, a}}, want: []PortMapping{{TCP, 8080, a}, {UDP, 8080, b}}},
		{name: "one host port to two targets", in: []PortMapping{{TCP, 8080, a}, {TCP, 8080, b}}, wantErr: true},
		{name: "host port 0", in: []PortMapping{{TCP, 0, a}}, wantErr: true},
		{name: "target port 0", in: []PortMapping{{TCP, 8080, netip.MustParseAddrPort("172.29.0.5:0")}}, wantErr: true},
		{name: "no target", in: []PortMapping{{Protocol: TCP, HostPort: 8080}}, wantErr: true},
		{name: "IPv6 target", in: []PortMapping{{TCP, 8080, netip.MustParseAddrPort("[fd00::5]:80")}}, wantErr: true},
		{name: "unknown protocol", in: []PortMapping{{Protocol(132), 8080, a}}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := normalize(tc.in)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidMapping) {
					t.Fatalf("normalize(%v) = %v, %v; want ErrInvalidMapping", tc.in, got, err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("normalize(%v) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

// portsEnv is a bridge with two containers, a and b, and an outside netns
// behind an uplink of the host: the clients of every path a published port
// serves.
type portsEnv struct {
	*testEnv
	d               *Driver
	a, b            Endpoint
	outside         string
	uplink, remote  netip.Addr
	tcpA, tcpB, udp netip.AddrPort // servers: TCP in a and b, UDP in a
	udpB            netip.AddrPort // UDP server in b
}

func newPortsEnv(t *testing.T) *portsEnv {
	t.Helper()
	e := newEnv(t)
	p := &portsEnv{testEnv: e, d: e.newDriver(t)}
	// A real host's loopback is up; a new netns's is not.
	h := netnstest.Handle(t, e.hostNS)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	e.setup(t, p.d)
	p.a = e.attach(t, p.d, e.id("a"))
	p.b = e.attach(t, p.d, e.id("b"))
	t.Cleanup(func() {
		ctx := context.Background()
		if err := p.d.Ports().Apply(ctx, nil); err != nil {
			t.Errorf("clear port table: %v", err)
		}
		for _, ep := range []Endpoint{p.a, p.b} {
			if err := p.d.Detach(ctx, ep.ID); err != nil {
				t.Errorf("detach %s: %v", ep.ID, err)
			}
		}
	})
	p.outside, p.uplink, p.remote = e.newOutside(t)
	p.tcpA = netip.MustParseAddrPort(serveRemoteAddr(t, p.a.NetNSPath, p.a.Address.Addr()))
	p.tcpB = netip.MustParseAddrPort(serveRemoteAddr(t, p.b.NetNSPath, p.b.Address.Addr()))
	p.udp = netip.MustParseAddrPort(serveUDPRemoteAddr(t, p.a.NetNSPath, p.a.Address.Addr()))
	p.udpB = netip.MustParseAddrPort(serveUDPRemoteAddr(t, p.b.NetNSPath, p.b.Address.Addr()))
	return p
}

func (p *portsEnv) apply(t *testing.T, ms ...PortMapping) {
	t.Helper()
	if err := p.d.Ports().Apply(context.Background(), ms); err != nil {
		t.Fatalf("Apply %v: %v", ms, err)
	}
}

// probe is one client of a published port.
type probe struct {
	name     string
	proto    Protocol
	fromNS   string
	dst      netip.Addr
	port     uint16
	wantPeer netip.Addr // the client address the server sees; invalid: no answer
}

func (pr probe) run(t *testing.T) {
	t.Helper()
	addr := netip.AddrPortFrom(pr.dst, pr.port).String()
	var got string
	var err error
	if pr.proto == UDP {
		got, _, err = udpPeerSeenBy(pr.fromNS, 0, addr)
	} else {
		got, err = peerSeenBy(pr.fromNS, addr)
	}
	switch {
	case !pr.wantPeer.IsValid() && err == nil:
		t.Errorf("%s: %s/%s answered (peer %s), want no answer", pr.name, addr, pr.proto, got)
	case pr.wantPeer.IsValid() && err != nil:
		t.Errorf("%s: %s/%s: %v", pr.name, addr, pr.proto, err)
	case pr.wantPeer.IsValid() && got != pr.wantPeer.String():
		t.Errorf("%s: %s/%s: server saw peer %s, want %s", pr.name, addr, pr.proto, got, pr.wantPeer)
	}
}

func TestPortTablePublishes(t *testing.T) {
	p := newPortsEnv(t)
	gw := p.d.Gateway()
	loopback := netip.MustParseAddr("127.0.0.1")
	p.apply(t,
		PortMapping{TCP, 18080, p.tcpA},
		PortMapping{TCP, 18081, p.tcpB},
		PortMapping{UDP, 18080, p.udp},
	)
	// Outside clients keep their address; the host's loopback connections
	// and a container reaching its own host's port (hairpin) are
	// masqueraded behind the gateway, the only way their replies return.
	published := []probe{
		{name: "outside to uplink", proto: TCP, fromNS: p.outside, dst: p.uplink, port: 18080, wantPeer: p.remote},
		{name: "outside to the second port", proto: TCP, fromNS: p.outside, dst: p.uplink, port: 18081, wantPeer: p.remote},
		{name: "outside udp", proto: UDP, fromNS: p.outside, dst: p.uplink, port: 18080, wantPeer: p.remote},
		{name: "host to its uplink address", proto: TCP, fromNS: p.hostNS, dst: p.uplink, port: 18080, wantPeer: p.uplink},
		{name: "host to 127.0.0.1", proto: TCP, fromNS: p.hostNS, dst: loopback, port: 18080, wantPeer: gw},
		{name: "host to 127.0.0.1 udp", proto: UDP, fromNS: p.hostNS, dst: loopback, port: 18080, wantPeer: gw},
		{name: "host to the gateway", proto: TCP, fromNS: p.hostNS, dst: gw, port: 18081, wantPeer: gw},
		{name: "other container to uplink", proto: TCP, fromNS: p.b.NetNSPath, dst: p.uplink, port: 18080, wantPeer: gw},
		{name: "container to its own port", proto: TCP, fromNS: p.a.NetNSPath, dst: p.uplink, port: 18080, wantPeer: gw},
		{name: "unpublished port", proto: TCP, fromNS: p.outside, dst: p.uplink, port: 18082},
	}
	for _, pr := range published {
		t.Run(pr.name, pr.run)
	}
	if t.Failed() {
		return
	}

	// Setup again (a restarted daemon) leaves the port table alone.
	p.setup(t, p.d)
	probe{name: "after Setup", proto: TCP, fromNS: p.outside, dst: p.uplink, port: 18080, wantPeer: p.remote}.run(t)

	// The new set replaces the old: 18080 is gone on both protocols, 18081
	// stays.
	p.apply(t, PortMapping{TCP, 18081, p.tcpB})
	if n := len(listTable(t, p.hostNS, p.d.Ports().Name())[chainPorts]); n != 1 {
		t.Errorf("ports chain has %d rules after removing two mappings, want 1", n)
	}
	for _, pr := range []probe{
		{name: "removed tcp", proto: TCP, fromNS: p.outside, dst: p.uplink, port: 18080},
		{name: "removed tcp from the host", proto: TCP, fromNS: p.hostNS, dst: loopback, port: 18080},
		{name: "removed udp", proto: UDP, fromNS: p.outside, dst: p.uplink, port: 18080},
		{name: "kept", proto: TCP, fromNS: p.outside, dst: p.uplink, port: 18081, wantPeer: p.remote},
	} {
		t.Run(pr.name, pr.run)
	}

	// The empty set deletes the table.
	p.apply(t)
	if tableExists(t, p.hostNS, p.d.Ports().Name()) {
		t.Error("port table still exists after applying no mappings")
	}
	probe{name: "all removed", proto: TCP, fromNS: p.outside, dst: p.uplink, port: 18081}.run(t)
}

func TestPortTableCheckFree(t *testing.T) {
	p := newPortsEnv(t)
	ctx := context.Background()
	// Host sockets: TCP on one address only, UDP on all.
	tcpHost := netip.MustParseAddrPort(serveRemoteAddr(t, p.hostNS, p.d.Gateway()))
	udpHost := netip.MustParseAddrPort(serveUDPRemoteAddr(t, p.hostNS, netip.IPv4Unspecified()))
	p.apply(t, PortMapping{TCP, 18080, p.tcpA}) // published, so nothing of the host listens
	tests := []struct {
		name  string
		m     PortMapping
		inUse bool
	}{
		{name: "free", m: PortMapping{TCP, 18081, p.tcpA}},
		{name: "published by the table itself", m: PortMapping{TCP, 18080, p.tcpA}},
		{name: "tcp listener on one address", m: PortMapping{TCP, tcpHost.Port(), p.tcpA}, inUse: true},
		{name: "udp socket", m: PortMapping{UDP, udpHost.Port(), p.udp}, inUse: true},
		{name: "same port, other protocol", m: PortMapping{TCP, udpHost.Port(), p.tcpA}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := p.d.Ports().CheckFree(ctx, []PortMapping{tc.m})
			if tc.inUse != errors.Is(err, ErrPortInUse) || (!tc.inUse && err != nil) {
				t.Fatalf("CheckFree(%s) = %v, want in use: %v", tc.m, err, tc.inUse)
			}
		})
	}
}

// TestPortTableMovedUDPPort moves a UDP port from one container to another
// while a client keeps its source port: the client must reach the new
// target at once, not the old one until conntrack forgets the flow.
func TestPortTableMovedUDPPort(t *testing.T) {
	const clientPort = 40053
	p := newPortsEnv(t)
	addr := netip.AddrPortFrom(p.uplink, 18053).String()
	for i, target := range []netip.AddrPort{p.udp, p.udpB, p.udp} {
		p.apply(t, PortMapping{UDP, 18053, target})
		peer, server, err := udpPeerSeenBy(p.outside, clientPort, addr)
		if err != nil || peer != p.remote.String() || server != target.String() {
			t.Fatalf("step %d: %s from port %d answered by %q (peer %q), err %v; want %s", i, addr, clientPort, server, peer, err, target)
		}
	}
}

// TestPortTableReplaceIsAtomic replaces the table over and over while a
// client keeps connecting to a mapping present in every version: with one
// transaction per Apply no connection ever finds the port unpublished,
// which would show as an error, or as a dial slowed by a retransmitted SYN.
func TestPortTableReplaceIsAtomic(t *testing.T) {
	const (
		minRounds = 200
		minDials  = 100
		// slowDial is below the 1s initial retransmission timeout: a SYN
		// that found no mapping and was answered by the retransmission.
		slowDial = 900 * time.Millisecond
		// giveUp bounds the test if the client cannot keep up; a hang guard.
		giveUp = 30 * time.Second
	)
	p := newPortsEnv(t)
	keep := PortMapping{TCP, 18080, p.tcpA}
	sets := [][]PortMapping{
		{keep, {TCP, 18081, p.tcpB}},
		{keep, {TCP, 18082, p.tcpB}, {UDP, 18080, p.udp}},
	}
	p.apply(t, sets[0]...)

	done := make(chan struct{})
	var dials, failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		addr := netip.AddrPortFrom(p.uplink, keep.HostPort).String()
		for {
			select {
			case <-done:
				return
			default:
			}
			start := time.Now()
			got, err := peerSeenBy(p.outside, addr)
			dials.Add(1)
			if took := time.Since(start); err == nil && took > slowDial {
				err = errors.New("took " + took.String())
			}
			if err != nil || got != p.remote.String() {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, errors.Join(err, errors.New("peer "+strconv.Quote(got))))
			}
		}
	}()
	deadline := time.Now().Add(giveUp)
	rounds := 0
	for ; rounds < minRounds || (dials.Load() < minDials && time.Now().Before(deadline)); rounds++ {
		if err := p.d.Ports().Apply(context.Background(), sets[rounds%2]); err != nil {
			close(done)
			wg.Wait()
			t.Fatalf("Apply round %d: %v", rounds, err)
		}
	}
	close(done)
	wg.Wait()
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d connections to the kept mapping failed while the table was replaced; first: %v", n, dials.Load(), firstErr.Load())
	}
	if n := dials.Load(); n < minDials {
		t.Fatalf("only %d connections during %d replacements in %s", n, rounds, giveUp)
	}
	last := sets[(rounds-1)%2]
	if n := len(listTable(t, p.hostNS, p.d.Ports().Name())[chainPorts]); n != len(last) {
		t.Errorf("ports chain has %d rules, want %d (the last set, nothing accumulated)", n, len(last))
	}
	t.Logf("%d connections during %d replacements, none failed", dials.Load(), rounds)
}

// TestGuardKeepsContainersOffHostLoopback checks the price of
// route_localnet: a container that routes 127.0.0.0/8 to the gateway
// (root in its own netns can) must not reach a service the host binds to
// 127.0.0.1. It proves the setup by removing the guard once.
func TestGuardKeepsContainersOffHostLoopback(t *testing.T) {
	// blocked is how long a dial that must fail waits: on a local veth a
	// connection takes well under a millisecond.
	const blocked = time.Second
	p := newPortsEnv(t)
	// In the container: loopback addresses leave through eth0 to the
	// gateway, and may come back (route_localnet on its side too).
	ch := netnstest.Handle(t, p.a.NetNSPath)
	lo, err := ch.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.AddrDel(lo, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("127.0.0.1/8"))}); err != nil {
		t.Fatalf("remove 127.0.0.1 from the container's lo: %v", err)
	}
	eth, err := ch.LinkByName(containerIfname)
	if err != nil {
		t.Fatal(err)
	}
	if err := enableRouteLocalnet(p.a.NetNSPath, containerIfname); err != nil {
		t.Fatal(err)
	}
	route := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(loopbackNet), Gw: p.d.Gateway().AsSlice()}
	if err := ch.RouteAdd(route); err != nil {
		t.Fatalf("route 127.0.0.0/8 via the gateway in the container: %v", err)
	}
	secret := serveRemoteAddr(t, p.hostNS, netip.MustParseAddr("127.0.0.1"))
	reach := func() error {
		return netnsutil.InNetNS(p.a.NetNSPath, func() error {
			c, err := net.DialTimeout("tcp", secret, blocked)
			if err == nil {
				c.Close()
			}
			return err
		})
	}

	if err := reach(); err == nil {
		t.Fatalf("container reached the host's %s through the bridge", secret)
	}
	ns, err := netns.GetFromPath(p.hostNS)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := p.d.deleteTable(ns); err != nil {
		t.Fatal(err)
	}
	if err := reach(); err != nil {
		t.Fatalf("without the guard the container does not reach %s either (%v): the test proves nothing", secret, err)
	}
	p.setup(t, p.d)
	if err := reach(); err == nil {
		t.Fatalf("container reached the host's %s after Setup restored the guard", secret)
	}
}
