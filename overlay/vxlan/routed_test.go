package vxlan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"

	"github.com/shoal-project/shoal/overlay/netnsutil"
	"github.com/shoal-project/shoal/overlay/netnsutil/netnstest"
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
		sb, hh := netnstest.Handle(t, sbPath), netnstest.Handle(t, h.ns)
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
		for _, l := range []netlink.Link{up, hostUp, mustLink(t, sb, h.d.bridgeName()), mustLink(t, netnstest.Handle(t, s.a), "eth1")} {
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
		checkNoBridgeNF(t, sbPath)
		for _, sc := range []struct{ ns, path, want string }{
			{sbPath, ipForward, "1"},
			{sbPath, fmt.Sprintf(proxyARPFmt, h.d.bridgeName()), "1"},
			{sbPath, fmt.Sprintf(proxyDelayFmt, h.d.bridgeName()), "0"},
			{h.ns, ipForward, "1"},
		} {
			if got := netnstest.ReadSysctl(t, sc.ns, sc.path); got != sc.want {
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
		sb, hh := netnstest.Handle(t, h.d.SandboxPath(s.n.ID)), netnstest.Handle(t, h.ns)
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
		h := netnstest.Handle(t, ns)
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
		sb := netnstest.Handle(t, sbPath)
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
		err := netnsutil.InNetNS(s.h2.ns, func() error {
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
		ul := netnstest.Handle(t, s.w.ul)
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
