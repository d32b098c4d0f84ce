package vxlan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/overlay/wg"
)

// encryptedSetup is the common setup of the encrypted-network tests: two
// hosts with a WireGuard interface each, encrypted network e1
// (10.20.1.0/24) with container a on host 1 and b on host 2, remotes and
// WireGuard peers programmed as the agent would.
type encryptedSetup struct {
	w        *world
	h1, h2   *testHost
	n        Network
	a, b     string // container netns paths
	epA, epB Endpoint
	echoA    string // TCP echo on a
	echoB    string // TCP echo on b
	udpEchoB string // UDP echo on b

	// routed lists, per host, the addresses of its tasks on encrypted
	// networks: the other host's WireGuard peer AllowedIPs for it.
	routed map[*testHost][]netip.Addr
}

func setupEncrypted(tb testing.TB) *encryptedSetup {
	tb.Helper()
	w := newWorld(tb, 2)
	w.addWireGuard(tb)
	s := &encryptedSetup{w: w, h1: w.hosts[0], h2: w.hosts[1], n: encNetwork("e1", 4200, "10.20.1.0/24")}
	s.a, s.b = w.container(tb, "a"), w.container(tb, "b")
	s.epA, s.epB = endpoint("ep-a", "10.20.1.2"), endpoint("ep-b", "10.20.1.3")
	s.h1.ensure(tb, s.n)
	s.h2.ensure(tb, s.n)
	s.h1.attach(tb, s.n.ID, s.epA, s.a)
	s.h2.attach(tb, s.n.ID, s.epB, s.b)
	s.h1.setRemotes(tb, s.n.ID, remotesOf(s.epB)...)
	s.h2.setRemotes(tb, s.n.ID, remotesOf(s.epA)...)
	s.routed = map[*testHost][]netip.Addr{s.h1: addrs(s.epA), s.h2: addrs(s.epB)}
	s.peers(tb)
	s.echoA = serveEcho(tb, s.a, ap(s.epA.Addr, 7000))
	s.echoB = serveEcho(tb, s.b, ap(s.epB.Addr, 7000))
	s.udpEchoB = serveUDPEcho(tb, s.b, ap(s.epB.Addr, 7001))
	return s
}

// peers (re)programs both WireGuard interfaces from s.routed.
func (s *encryptedSetup) peers(tb testing.TB) {
	tb.Helper()
	s.w.setPeers(tb, func(h *testHost) []netip.Addr { return s.routed[h] })
}

// wantTable is the isolation table host h should have for the encrypted
// networks nets, as rule comments.
func wantTable(h *testHost, nets ...Network) []string {
	var rn []routedNet
	for _, n := range nets {
		rn = append(rn, routedNet{id: n.ID, uplink: h.d.uplinkName(n.VNI), subnet: n.Subnet})
	}
	slices.SortFunc(rn, func(a, b routedNet) int { return strings.Compare(a.uplink, b.uplink) })
	return comments(h.d.routedRules(rn))
}

func TestEncryptedCrossHost(t *testing.T) {
	s := setupEncrypted(t)
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"a to b, 64 KiB over TCP", func() error { return tcpRoundTrip(s.a, s.echoB, 64<<10) }},
		{"b to a, 64 KiB over TCP", func() error { return tcpRoundTrip(s.b, s.echoA, 64<<10) }},
		// 1392 bytes of payload fill a 1420-byte packet, the network's MTU.
		{"a to b, 1392-byte UDP datagram", func() error { return udpRoundTrip(s.a, s.udpEchoB, 1392) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("layout", func(t *testing.T) {
		h := s.h1
		sbPath := h.d.SandboxPath(s.n.ID)
		sb, hh := handleIn(t, sbPath), handleIn(t, h.ns)
		links, err := sb.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if _, ok := l.(*netlink.Vxlan); ok {
				t.Errorf("vxlan device %s in an encrypted network's sandbox", l.Attrs().Name)
			}
		}
		up := mustLink(t, sb, h.d.uplinkSandboxName())
		hostUp := mustLink(t, hh, h.d.uplinkName(s.n.VNI))
		if !isPeer(up, hostUp) || hostUp.Attrs().Alias != s.n.ID {
			t.Errorf("uplink %s / %s (alias %q) is not a pair of network %s", up.Attrs().Name, hostUp.Attrs().Name, hostUp.Attrs().Alias, s.n.ID)
		}
		for _, l := range []netlink.Link{up, hostUp, mustLink(t, sb, h.d.bridgeName()), mustLink(t, handleIn(t, s.a), "eth1")} {
			if l.Attrs().MTU != EncryptedDefaultMTU {
				t.Errorf("%s MTU %d, want %d", l.Attrs().Name, l.Attrs().MTU, EncryptedDefaultMTU)
			}
		}
		routes, err := hh.RouteList(hostUp, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) != 1 || !isViaUplink(routes[0]) || routes[0].Dst.String() != s.n.Subnet.String() {
			t.Errorf("host routes on the uplink: %v, want only %s via %s onlink", routes, s.n.Subnet, uplinkNextHop)
		}
		checkRouted(t, h, s.n, s.epB.Addr.Addr())
		for _, sc := range []struct{ ns, path, want string }{
			{sbPath, ipForward, "1"},
			{sbPath, fmt.Sprintf(proxyARPFmt, h.d.bridgeName()), "1"},
			{sbPath, fmt.Sprintf(proxyDelayFmt, h.d.bridgeName()), "0"},
			{h.ns, ipForward, "1"},
		} {
			if got := readSysctl(t, sc.ns, sc.path); got != sc.want {
				t.Errorf("%s in %s = %s, want %s", sc.path, sc.ns, got, sc.want)
			}
		}
		if got, want := tableComments(t, h), wantTable(h, s.n); !slices.Equal(got, want) {
			t.Errorf("isolation table:\n  %q\nwant\n  %q", got, want)
		}
		nets, err := h.d.Networks(ctx)
		if err != nil || !slices.Equal(nets, []string{s.n.ID}) {
			t.Errorf("Networks = %v, %v", nets, err)
		}
		eps, err := h.d.Endpoints(ctx, s.n.ID)
		if err != nil || !slices.Equal(eps, []string{s.epA.ID}) {
			t.Errorf("Endpoints = %v, %v", eps, err)
		}
	})

	t.Run("everything again changes nothing", func(t *testing.T) {
		h := s.h1
		sb, hh := handleIn(t, h.d.SandboxPath(s.n.ID)), handleIn(t, h.ns)
		upBefore := mustLink(t, hh, h.d.uplinkName(s.n.VNI)).Attrs().Index
		vethBefore := mustLink(t, sb, h.d.vethName(s.epA.ID)).Attrs().Index
		handles := ruleHandles(t, h)
		h.ensure(t, s.n)
		h.attach(t, s.n.ID, s.epA, s.a)
		h.setRemotes(t, s.n.ID, remotesOf(s.epB)...)
		if mustLink(t, hh, h.d.uplinkName(s.n.VNI)).Attrs().Index != upBefore ||
			mustLink(t, sb, h.d.vethName(s.epA.ID)).Attrs().Index != vethBefore {
			t.Error("EnsureNetwork or Attach recreated an unchanged link")
		}
		if got := ruleHandles(t, h); !slices.Equal(got, handles) {
			t.Errorf("isolation table rewritten: rule handles %v, then %v", handles, got)
		}
		if err := tcpRoundTrip(s.a, s.echoB, 1<<10); err != nil {
			t.Error(err)
		}
	})
}

func TestEncryptedIsolation(t *testing.T) {
	s := setupEncrypted(t)
	h1, h2 := s.h1, s.h2
	n2 := encNetwork("e2", 4201, "10.20.2.0/24")
	p := network("p1", 4300, "10.30.1.0/24")
	for _, h := range s.w.hosts {
		h.ensure(t, n2)
		h.ensure(t, p)
	}
	c, d := s.w.container(t, "c"), s.w.container(t, "d") // e2 on h1, h2
	e, f := s.w.container(t, "e"), s.w.container(t, "f") // p1 on h1, h2
	epC, epD := endpoint("c", "10.20.2.2"), endpoint("d", "10.20.2.3")
	epE, epF := endpoint("e", "10.30.1.2"), endpoint("f", "10.30.1.3")
	h1.attach(t, n2.ID, epC, c)
	h2.attach(t, n2.ID, epD, d)
	h1.attach(t, p.ID, epE, e)
	h2.attach(t, p.ID, epF, f)
	h1.setRemotes(t, n2.ID, remotesOf(epD)...)
	h2.setRemotes(t, n2.ID, remotesOf(epC)...)
	h1.setRemotes(t, p.ID, remote(epF, h2))
	h2.setRemotes(t, p.ID, remote(epE, h1))
	s.routed[h1] = addrs(s.epA, epC)
	s.routed[h2] = addrs(s.epB, epD)
	s.peers(t)
	echoC := serveEcho(t, c, ap(epC.Addr, 7001))
	echoD := serveEcho(t, d, ap(epD.Addr, 7001))
	echoF := serveEcho(t, f, ap(epF.Addr, 7002))

	// c routes everything to its gateway, d sends e1's subnet straight out
	// of its interface (ARP): neither may reach e1 or p1.
	addRoute := func(ns string, r *netlink.Route) {
		t.Helper()
		h := handleIn(t, ns)
		r.LinkIndex = mustLink(t, h, "eth1").Attrs().Index
		if err := h.RouteAdd(r); err != nil {
			t.Fatalf("add route %s in %s: %v", r.Dst, ns, err)
		}
	}
	addRoute(c, &netlink.Route{Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: n2.Gateway.AsSlice()})
	addRoute(d, &netlink.Route{Dst: ipNet(s.n.Subnet), Scope: netlink.SCOPE_LINK})

	for _, tc := range []struct {
		name     string
		from, to string
		open     bool
	}{
		{"e1 a to e1 b", s.a, s.echoB, true},
		{"e2 c to e2 d", c, echoD, true},
		{"e2 d to e2 c", d, echoC, true},
		{"p1 e to p1 f", e, echoF, true},
		{"e2 c via its gateway to e1 b on another host", c, s.echoB, false},
		{"e2 c via its gateway to e1 a on its own host", c, s.echoA, false},
		{"e2 c via its gateway to p1 f", c, echoF, false},
		{"e2 d on-link to e1 a on another host", d, s.echoA, false},
		{"e2 d on-link to e1 b on its own host", d, s.echoB, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.open {
				if err := tcpRoundTrip(tc.from, tc.to, 16<<10); err != nil {
					t.Fatal(err)
				}
				return
			}
			if conn, err := dialIn(tc.from, tc.to, closedTimeout); err == nil {
				conn.Close()
				t.Fatal("connected across networks")
			}
		})
	}

	// The host's table holds even when a sandbox routes what it should not
	// (as if compromised): e2's sandbox on h1 sends to the host's own
	// WireGuard address and to e1's b through its uplink.
	t.Run("a sandbox routing past its network", func(t *testing.T) {
		sbPath := h1.d.SandboxPath(n2.ID)
		sb := handleIn(t, sbPath)
		up := mustLink(t, sb, h1.d.uplinkSandboxName())
		hostAddr := netip.AddrPortFrom(h1.wg.addr.Addr(), 7300)
		hostEcho := serveEcho(t, h1.ns, hostAddr)
		for _, dst := range []netip.Addr{hostAddr.Addr(), s.epB.Addr.Addr()} {
			if err := sb.RouteAdd(viaUplink(up, netip.PrefixFrom(dst, 32))); err != nil {
				t.Fatal(err)
			}
		}
		before := ruleCounters(t, h1.ns, h1.d.WireGuardTableName())
		for _, to := range []string{hostEcho, s.echoB} {
			if conn, err := dialIn(sbPath, to, closedTimeout); err == nil {
				conn.Close()
				t.Errorf("sandbox of e2 reached %s", to)
			}
		}
		after := ruleCounters(t, h1.ns, h1.d.WireGuardTableName())
		for _, rule := range []string{
			"input: drop from " + h1.d.uplinkWildcard() + "* to the host",
			"forward: drop other to " + h1.wg.name,
		} {
			if after[rule] <= before[rule] {
				t.Errorf("counter of %q: %d, then %d; want it to grow", rule, before[rule], after[rule])
			}
		}
		// The host itself still reaches its own address.
		if err := tcpRoundTrip(h1.ns, hostEcho, 1<<10); err != nil {
			t.Errorf("host to its own WireGuard address: %v", err)
		}
	})
}

func TestEncryptedOnTheWire(t *testing.T) {
	s := setupEncrypted(t)
	ctx := context.Background()
	run := s.w.run
	// A plain network alongside, the control: what it carries is visible.
	p := network("p1", 4300, "10.30.1.0/24")
	s.h1.ensure(t, p)
	s.h2.ensure(t, p)
	pc1, pc2 := s.w.container(t, "p1"), s.w.container(t, "p2")
	epP1, epP2 := endpoint("ep-p1", "10.30.1.2"), endpoint("ep-p2", "10.30.1.3")
	s.h1.attach(t, p.ID, epP1, pc1)
	s.h2.attach(t, p.ID, epP2, pc2)
	s.h1.setRemotes(t, p.ID, remote(epP2, s.h2))
	s.h2.setRemotes(t, p.ID, remote(epP1, s.h1))
	echoP2 := serveEcho(t, pc2, ap(epP2.Addr, 7000))

	t.Run("container traffic travels only inside WireGuard", func(t *testing.T) {
		count := probeTable(t, s.h2.ns, run+"-probe", DefaultPort, wg.DefaultListenPort)
		marker := []byte("cleartext-marker-" + run + "-")
		payload := bytes.Repeat(marker, (64<<10)/len(marker))
		// send echoes payload from container netns from to echo addr
		// while host 2's port on the underlay bridge is captured; it
		// returns the frames seen and those with the marker in clear.
		send := func(from, to string) (frames, marked int) {
			t.Helper()
			c, err := dialSettled(from, to)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			capt := startCapture(t, s.w.ul, fmt.Sprintf("%su%d", run, 2), marker)
			c, err = dialIn(from, to, ioTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(ioTimeout))
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(payload)
				errc <- err
			}()
			got := make([]byte, len(payload))
			_, err = io.ReadFull(c, got)
			if err := errors.Join(err, <-errc); err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("echo from %s to %s: %v", from, to, err)
			}
			capt.stop()
			return capt.counts()
		}

		// Nothing has used the plain network yet: no VXLAN at all may reach
		// host 2 while the encrypted network carries the marker.
		vxlanBefore, wgBefore := count(DefaultPort), count(wg.DefaultListenPort)
		rxBefore := s.h2.rxBytes(t, s.h1)
		frames, marked := send(s.a, s.echoB)
		if frames == 0 || marked != 0 {
			t.Errorf("underlay: %d frames, %d with the marker in clear; want some, none", frames, marked)
		}
		if n := count(DefaultPort) - vxlanBefore; n != 0 {
			t.Errorf("%d VXLAN packets reached host 2", n)
		}
		if n := count(wg.DefaultListenPort) - wgBefore; n == 0 {
			t.Error("no WireGuard packet reached host 2")
		}
		if rx := s.h2.rxBytes(t, s.h1) - rxBefore; rx < int64(len(payload)) {
			t.Errorf("WireGuard received %d bytes from host 1, want at least the %d sent", rx, len(payload))
		}

		// The control: the same over the plain network is seen.
		vxlanBefore = count(DefaultPort)
		if _, marked := send(pc1, echoP2); marked == 0 || count(DefaultPort) == vxlanBefore {
			t.Errorf("control: over the plain network, %d frames with the marker and %d VXLAN packets; "+
				"want some of each, or the checks above prove nothing", marked, count(DefaultPort)-vxlanBefore)
		}
	})

	t.Run("forged cleartext VXLAN never reaches the container", func(t *testing.T) {
		// The plain network's VXLAN socket on host 1 takes the forged
		// packets; a forged packet for the plain network is the control.
		target := ap(s.epA.Addr, 9000)
		targetP := ap(epP1.Addr, 9000)
		listenA := listenUDP(t, s.a, target)
		listenP := listenUDP(t, pc1, targetP)

		var forger net.Conn
		err := inNetNS(s.h2.ns, func() error {
			var err error
			forger, err = net.Dial("udp", netip.AddrPortFrom(s.h1.vtep, DefaultPort).String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer forger.Close()
		forgedMAC := net.HardwareAddr{0x02, 0xee, 0, 0, 0, 0x66}
		delivered := func(vni uint32, ep Endpoint, to netip.AddrPort, pc net.PacketConn, wait time.Duration) bool {
			from := netip.AddrPortFrom(ep.Addr.Addr().Next().Next().Next(), 4444)
			payload := []byte("forged " + t.Name())
			pkt := forgedVXLAN(vni, forgedMAC, ep.MAC, from, to, payload)
			buf := make([]byte, 256)
			deadline := time.Now().Add(wait)
			for time.Now().Before(deadline) {
				if _, err := forger.Write(pkt); err != nil {
					t.Fatal(err)
				}
				pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				n, _, err := pc.ReadFrom(buf)
				if err == nil && string(buf[:n]) == string(payload) {
					return true
				}
			}
			return false
		}
		if !delivered(p.VNI, epP1, targetP, listenP, ioTimeout) {
			t.Fatal("control: a forged packet for the plain network was not delivered, the check below proves nothing")
		}
		if delivered(s.n.VNI, s.epA, target, listenA, closedTimeout) {
			t.Error("forged packet for the encrypted network delivered")
		}
		// As the agent does: every VXLAN packet for an encrypted VNI is
		// dropped, whatever interface it arrives on.
		if err := s.h1.d.SetEncryptedVNIs(ctx, []uint32{s.n.VNI}, ""); err != nil {
			t.Fatal(err)
		}
		if delivered(s.n.VNI, s.epA, target, listenA, closedTimeout) {
			t.Error("forged packet for the encrypted network delivered after SetEncryptedVNIs")
		}
		if n := vxlanDropCount(t, s.h1); n == 0 {
			t.Error("SetEncryptedVNIs' rule dropped nothing")
		}
		if c, err := dialSettled(s.a, s.echoB); err != nil {
			t.Errorf("encrypted network after SetEncryptedVNIs: %v", err)
		} else {
			c.Close()
		}
		if err := tcpRoundTrip(s.a, s.echoB, 1<<10); err != nil {
			t.Errorf("encrypted network after SetEncryptedVNIs: %v", err)
		}
	})

	t.Run("plain IP routed at the host from the underlay never reaches the container", func(t *testing.T) {
		// Someone on the underlay routes e1's subnet to host 1.
		ul := handleIn(t, s.w.ul)
		br := mustLink(t, ul, s.w.run+"ul")
		if err := ul.AddrAdd(br, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("192.0.2.254/24"))}); err != nil {
			t.Fatal(err)
		}
		if err := ul.RouteAdd(&netlink.Route{Dst: ipNet(s.n.Subnet), Gw: s.h1.vtep.AsSlice()}); err != nil {
			t.Fatal(err)
		}
		rule := "forward: drop other to " + s.h1.d.uplinkWildcard() + "*"
		before := ruleCounters(t, s.h1.ns, s.h1.d.WireGuardTableName())[rule]
		if conn, err := dialIn(s.w.ul, s.echoA, closedTimeout); err == nil {
			conn.Close()
			t.Fatal("the underlay reached a container of an encrypted network")
		}
		if after := ruleCounters(t, s.h1.ns, s.h1.d.WireGuardTableName())[rule]; after <= before {
			t.Errorf("counter of %q: %d, then %d; want it to grow", rule, before, after)
		}
	})
}

// vxlanDropCount reads the counter of SetEncryptedVNIs' drop rule on h.
func vxlanDropCount(t *testing.T, h *testHost) uint64 {
	t.Helper()
	c := nftablesIn(t, h.ns)
	tb := &nftables.Table{Name: h.d.TableName(), Family: nftables.TableFamilyINet}
	rules, err := c.GetRules(tb, &nftables.Chain{Name: chainInput, Table: tb})
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, r := range rules {
		for _, e := range r.Exprs {
			if cnt, ok := e.(*expr.Counter); ok {
				n += cnt.Packets
			}
		}
	}
	return n
}

func TestEncryptedSetRemotes(t *testing.T) {
	s := setupEncrypted(t)
	ctx := context.Background()
	h1 := s.h1
	c := s.w.container(t, "c")
	epC := endpoint("ep-c", "10.20.1.4")
	s.h2.attach(t, s.n.ID, epC, c)
	echoC := serveEcho(t, c, ap(epC.Addr, 7000))
	s.routed[s.h2] = addrs(s.epB, epC)
	s.peers(t)

	// A long-lived connection to b, which stays a remote throughout. The
	// first attempt may meet a WireGuard handshake still settling (two
	// hosts that initiate at once retry after 5 s): try for a while.
	conn, err := dialSettled(s.a, s.echoB)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	for _, st := range []struct {
		name    string
		remotes []Endpoint
		reachC  bool
	}{
		{"both", []Endpoint{s.epB, epC}, true},
		{"c removed", []Endpoint{s.epB}, false},
		{"c back", []Endpoint{epC, s.epB}, true},
	} {
		t.Run(st.name, func(t *testing.T) {
			h1.setRemotes(t, s.n.ID, remotesOf(st.remotes...)...)
			checkRouted(t, h1, s.n, addrs(st.remotes...)...)
			if err := roundTrip(conn, 8<<10); err != nil {
				t.Fatalf("existing connection to b: %v", err)
			}
			if err := tcpRoundTrip(s.a, s.echoB, 1<<10); err != nil {
				t.Fatalf("new connection to b: %v", err)
			}
			cc, err := dialIn(s.a, echoC, closedTimeout)
			if err == nil {
				err = roundTrip(cc, 1<<10)
				cc.Close()
			}
			if st.reachC && err != nil {
				t.Fatalf("c unreachable: %v", err)
			}
			if !st.reachC && err == nil {
				t.Fatal("c reachable")
			}
		})
	}

	t.Run("re-applying the same set changes nothing", func(t *testing.T) {
		sbPath := h1.d.SandboxPath(s.n.ID)
		routesBefore := [][]string{allRoutes(t, h1.ns), allRoutes(t, sbPath)}
		watch := watchRoutes(t, h1.ns, sbPath)
		h1.ensure(t, s.n)
		h1.setRemotes(t, s.n.ID, remotesOf(s.epB, epC)...)
		// A route of the test's own in each namespace, last: once its
		// events are seen, any the driver caused have been too.
		sentinel := &netlink.Route{Dst: ipNet(netip.MustParsePrefix("10.77.0.0/24")), Type: unix.RTN_BLACKHOLE}
		for _, path := range []string{h1.ns, sbPath} {
			h := handleIn(t, path)
			if err := h.RouteAdd(sentinel); err != nil {
				t.Fatal(err)
			}
			watch.waitFor(t, path+": type 24 10.77.0.0/24")
			if err := h.RouteDel(sentinel); err != nil {
				t.Fatal(err)
			}
		}
		var driver []string
		for _, e := range watch.take() {
			if !strings.Contains(e, "10.77.0.0/24") {
				driver = append(driver, e)
			}
		}
		if len(driver) != 0 {
			t.Errorf("route changes on re-apply: %q", driver)
		}
		routesAfter := [][]string{allRoutes(t, h1.ns), allRoutes(t, sbPath)}
		for i := range routesBefore {
			if !slices.Equal(routesBefore[i], routesAfter[i]) {
				t.Errorf("routes changed:\n  %q\nthen\n  %q", routesBefore[i], routesAfter[i])
			}
		}
	})

	t.Run("stray routes are removed, read back from the kernel, others' kept", func(t *testing.T) {
		hh := handleIn(t, h1.ns)
		wgLink := mustLink(t, hh, h1.wg.name)
		sb := handleIn(t, h1.d.SandboxPath(s.n.ID))
		up := mustLink(t, sb, h1.d.uplinkSandboxName())
		stray := netip.MustParseAddr("10.20.1.77")
		foreign := hostRoute(wgLink, netip.MustParseAddr("10.20.1.78"))
		foreign.Protocol = unix.RTPROT_STATIC // someone else's
		for _, r := range []*netlink.Route{hostRoute(wgLink, stray), foreign} {
			if err := hh.RouteAdd(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := sb.RouteAdd(viaUplink(up, netip.PrefixFrom(stray, 32))); err != nil {
			t.Fatal(err)
		}
		// A fresh driver: nothing in memory.
		d := mustNew(t, h1.cfg)
		if err := d.SetRemotes(ctx, s.n.ID, remotesOf(s.epB, epC)); err != nil {
			t.Fatal(err)
		}
		checkRouted(t, h1, s.n, addrs(s.epB, epC)...)
		rs, err := hh.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: foreign.Dst}, netlink.RT_FILTER_DST)
		if err != nil || len(rs) != 1 {
			t.Errorf("someone else's route on the WireGuard interface: %v, %v; want it kept", rs, err)
		}
		if err := hh.RouteDel(foreign); err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(conn, 8<<10); err != nil {
			t.Fatalf("existing connection to b: %v", err)
		}
	})

	t.Run("a restarted driver continues", func(t *testing.T) {
		handles := ruleHandles(t, h1)
		routes := allRoutes(t, h1.ns)
		d := mustNew(t, h1.cfg)
		nets, err := d.Networks(ctx)
		if err != nil || !slices.Equal(nets, []string{s.n.ID}) {
			t.Fatalf("Networks after restart = %v, %v", nets, err)
		}
		if err := d.Reconcile(ctx, []Network{s.n}); err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(conn, 8<<10); err != nil {
			t.Errorf("connection across the restart: %v", err)
		}
		// Re-applied by the agent: no-ops.
		if err := d.SetRemotes(ctx, s.n.ID, remotesOf(s.epB, epC)); err != nil {
			t.Fatal(err)
		}
		if err := d.Attach(ctx, s.n.ID, s.epA, s.a, "eth1"); err != nil {
			t.Fatal(err)
		}
		if got := ruleHandles(t, h1); !slices.Equal(got, handles) {
			t.Errorf("isolation table rewritten: rule handles %v, then %v", handles, got)
		}
		if got := allRoutes(t, h1.ns); !slices.Equal(got, routes) {
			t.Errorf("host routes changed:\n  %q\nthen\n  %q", routes, got)
		}
		if err := roundTrip(conn, 8<<10); err != nil {
			t.Errorf("connection after re-applying: %v", err)
		}
		if err := tcpRoundTrip(s.a, echoC, 1<<10); err != nil {
			t.Errorf("new connection to c: %v", err)
		}
	})

	t.Run("invalid sets are refused", func(t *testing.T) {
		for _, rs := range [][]Remote{
			{{Addr: netip.MustParseAddr("10.20.2.3")}}, // outside the subnet
			{{Addr: s.n.Gateway}},
			{{Addr: netip.MustParseAddr("10.20.1.255")}},
			{{Addr: netip.MustParseAddr("fd00::3")}},
			{{Addr: s.epB.Addr.Addr()}, {Addr: s.epB.Addr.Addr()}},
		} {
			if err := h1.d.SetRemotes(ctx, s.n.ID, rs); !errors.Is(err, ErrInvalidRemote) {
				t.Errorf("SetRemotes(%v) = %v, want ErrInvalidRemote", rs, err)
			}
		}
		checkRouted(t, h1, s.n, addrs(s.epB, epC)...)
	})
}

func TestEncryptedRemoveAndReconcile(t *testing.T) {
	w := newWorld(t, 1)
	w.addWireGuard(t)
	h := w.hosts[0]
	ctx := context.Background()
	hh := handleIn(t, h.ns)
	e1 := encNetwork("e1", 4200, "10.20.1.0/24")
	e2 := encNetwork("e2", 4201, "10.20.2.0/24")
	p := network("p1", 4300, "10.30.1.0/24")
	r1, r2 := netip.MustParseAddr("10.20.1.5"), netip.MustParseAddr("10.20.2.5")
	setUp := func(t *testing.T) {
		for _, n := range []Network{e1, e2, p} {
			h.ensure(t, n)
		}
		h.setRemotes(t, e1.ID, Remote{Addr: r1})
		h.setRemotes(t, e2.ID, Remote{Addr: r2})
	}
	setUp(t)
	// hostHas reports the uplinks and the routes into subnet (of any
	// table) left in the host netns.
	hostHas := func(t *testing.T, subnet netip.Prefix) (uplinks, routes []string) {
		t.Helper()
		links, err := hh.LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, h.d.uplinkWildcard()) {
				uplinks = append(uplinks, l.Attrs().Name+" ("+l.Attrs().Alias+")")
			}
		}
		for _, r := range allRoutes(t, h.ns) {
			if dst, _, _ := strings.Cut(r, " "); dst != "<nil>" && netip.MustParsePrefix(dst).Overlaps(subnet) {
				routes = append(routes, r)
			}
		}
		return uplinks, routes
	}

	t.Run("refused", func(t *testing.T) {
		// A route of the host's own, to the underlay's router.
		if err := hh.RouteAdd(&netlink.Route{
			Dst: ipNet(netip.MustParsePrefix("10.55.0.0/16")), Gw: netip.MustParseAddr("192.0.2.254").AsSlice(),
		}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			n    Network
		}{
			{"inside another encrypted network", encNetwork("x", 4400, "10.20.1.128/25")},
			{"containing another encrypted network", encNetwork("x", 4400, "10.20.0.0/16")},
			{"the underlay", encNetwork("x", 4400, "192.0.2.0/24")},
			{"the WireGuard interface's subnet", encNetwork("x", 4400, "10.99.0.0/16")},
			{"a host route", encNetwork("x", 4400, "10.55.3.0/24")},
			{"another encrypted network's VNI", encNetwork("x", e1.VNI, "10.21.0.0/24")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := h.d.EnsureNetwork(ctx, tc.n)
				if !errors.Is(err, ErrInvalidNetwork) {
					t.Fatalf("EnsureNetwork = %v, want ErrInvalidNetwork", err)
				}
				if _, err := os.Stat(h.d.SandboxPath(tc.n.ID)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a refused network left its sandbox file: %v", err)
				}
			})
		}
		// VNIs keep plain networks apart: overlapping subnets are fine.
		plain := network("x", 4400, e1.Subnet.String())
		h.ensure(t, plain)
		if err := h.d.RemoveNetwork(ctx, plain.ID); err != nil {
			t.Fatal(err)
		}
		// So is one encrypted network changing its own subnet.
		moved := e2
		moved.Subnet, moved.Gateway = netip.MustParsePrefix("10.20.3.0/24"), netip.MustParseAddr("10.20.3.1")
		h.ensure(t, moved)
		if _, routes := hostHas(t, e2.Subnet); len(routes) != 0 {
			t.Errorf("routes into e2's old subnet: %q", routes)
		}
		h.ensure(t, e2)
		h.setRemotes(t, e2.ID, Remote{Addr: r2})
		if got, want := tableComments(t, h), wantTable(h, e1, e2); !slices.Equal(got, want) {
			t.Errorf("isolation table:\n  %q\nwant\n  %q", got, want)
		}
	})

	t.Run("the Encrypted flag flips", func(t *testing.T) {
		sb := handleIn(t, h.d.SandboxPath(p.ID))
		enc := p
		enc.Encrypted = true
		h.ensure(t, enc)
		h.setRemotes(t, p.ID, Remote{Addr: netip.MustParseAddr("10.30.1.5")})
		if _, err := sb.LinkByName(h.d.vxlanName(p.VNI)); !isNotFound(err) {
			t.Errorf("vxlan device kept on a network now encrypted: %v", err)
		}
		mustLink(t, sb, h.d.uplinkSandboxName())
		if got, want := tableComments(t, h), wantTable(h, e1, e2, enc); !slices.Equal(got, want) {
			t.Errorf("isolation table:\n  %q\nwant\n  %q", got, want)
		}
		h.ensure(t, p)
		mustLink(t, sb, h.d.vxlanName(p.VNI))
		if uplinks, routes := hostHas(t, p.Subnet); len(routes) != 0 || slices.ContainsFunc(uplinks, func(s string) bool { return strings.Contains(s, p.ID) }) {
			t.Errorf("left in the host netns after the flip back: uplinks %q, routes %q", uplinks, routes)
		}
		if _, err := sb.LinkByName(h.d.uplinkSandboxName()); !isNotFound(err) {
			t.Errorf("uplink kept on a network now plain: %v", err)
		}
		if got, want := tableComments(t, h), wantTable(h, e1, e2); !slices.Equal(got, want) {
			t.Errorf("isolation table:\n  %q\nwant\n  %q", got, want)
		}
	})

	t.Run("RemoveNetwork", func(t *testing.T) {
		if err := h.d.RemoveNetwork(ctx, e2.ID); err != nil {
			t.Fatal(err)
		}
		uplinks, routes := hostHas(t, e2.Subnet)
		if len(routes) != 0 || len(uplinks) != 1 {
			t.Errorf("after removing e2: uplinks %q (want e1's only), routes into its subnet %q", uplinks, routes)
		}
		if got, want := tableComments(t, h), wantTable(h, e1); !slices.Equal(got, want) {
			t.Errorf("isolation table:\n  %q\nwant\n  %q", got, want)
		}
		checkRouted(t, h, e1, r1)
		if err := h.d.RemoveNetwork(ctx, e1.ID); err != nil {
			t.Fatal(err)
		}
		if err := h.d.RemoveNetwork(ctx, e1.ID); err != nil {
			t.Fatalf("second RemoveNetwork: %v", err)
		}
		if uplinks, routes := hostHas(t, netip.MustParsePrefix("0.0.0.0/0")); len(uplinks) != 0 || slices.ContainsFunc(routes, isOurs) {
			t.Errorf("left in the host netns: uplinks %q, routes %q", uplinks, routes)
		}
		if got := tableComments(t, h); got != nil {
			t.Errorf("isolation table left with no encrypted network: %q", got)
		}
		nets, err := h.d.Networks(ctx)
		if err != nil || !slices.Equal(nets, []string{p.ID}) {
			t.Errorf("Networks = %v, %v", nets, err)
		}
	})

	t.Run("Reconcile after a restart", func(t *testing.T) {
		setUp(t)
		stale := encNetwork("e9", 4209, "10.20.9.0/24")
		h.ensure(t, stale)
		h.setRemotes(t, stale.ID, Remote{Addr: netip.MustParseAddr("10.20.9.5")})
		// What a crash could leave: an uplink whose network is gone, a
		// route of the driver's outside every encrypted network, and
		// someone else's route beside it.
		wgLink := mustLink(t, hh, h.wg.name)
		orphanRoute := hostRoute(wgLink, netip.MustParseAddr("10.88.0.5"))
		foreign := hostRoute(wgLink, netip.MustParseAddr("10.88.0.6"))
		foreign.Protocol = unix.RTPROT_STATIC
		for _, r := range []*netlink.Route{orphanRoute, foreign} {
			if err := hh.RouteAdd(r); err != nil {
				t.Fatal(err)
			}
		}
		attrs := netlink.NewLinkAttrs()
		attrs.Name = h.d.uplinkName(0x999)
		if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: w.run + "orph"}); err != nil {
			t.Fatal(err)
		}
		if err := hh.LinkSetAlias(mustLink(t, hh, attrs.Name), "gone"); err != nil {
			t.Fatal(err)
		}

		bad := encNetwork("y", 4500, "10.20.1.0/25") // overlaps e1
		d := mustNew(t, h.cfg)
		if err := d.Reconcile(ctx, []Network{e1, e2, p, bad}); !errors.Is(err, ErrInvalidNetwork) {
			t.Fatalf("Reconcile with overlapping encrypted networks = %v, want ErrInvalidNetwork", err)
		}
		if err := d.Reconcile(ctx, []Network{e1, e2, p}); err != nil {
			t.Fatal(err)
		}
		uplinks, routes := hostHas(t, netip.MustParsePrefix("0.0.0.0/0"))
		want := []string{h.d.uplinkName(e1.VNI) + " (e1)", h.d.uplinkName(e2.VNI) + " (e2)"}
		if !slices.Equal(uplinks, want) {
			t.Errorf("uplinks after Reconcile: %q, want %q", uplinks, want)
		}
		for _, r := range routes {
			if strings.HasPrefix(r, "10.20.9.") || strings.HasPrefix(r, "10.88.0.5/") {
				t.Errorf("leftover route %s", r)
			}
		}
		if !slices.ContainsFunc(routes, func(r string) bool { return strings.HasPrefix(r, "10.88.0.6/") }) {
			t.Error("someone else's route removed")
		}
		checkRouted(t, h, e1, r1) // remotes of kept networks are kept
		checkRouted(t, h, e2, r2)
		if got, want := tableComments(t, h), wantTable(h, e1, e2); !slices.Equal(got, want) {
			t.Errorf("isolation table:\n  %q\nwant\n  %q", got, want)
		}

		if err := d.Reconcile(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if uplinks, routes := hostHas(t, netip.MustParsePrefix("0.0.0.0/0")); len(uplinks) != 0 || slices.ContainsFunc(routes, isOurs) {
			t.Errorf("left in the host netns after Reconcile(nil): uplinks %q, routes %q", uplinks, routes)
		}
		if got := tableComments(t, h); got != nil {
			t.Errorf("isolation table left: %q", got)
		}
	})
}

// isOurs reports whether an allRoutes line is a route of the driver's.
func isOurs(r string) bool { return strings.Contains(r, fmt.Sprintf(" proto %d ", routeProtocol)) }
