package vxlan

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/shoal-project/shoal/overlay/netnsutil/netnstest"
)

// twoHostNetwork is the common setup: network n1 (VNI 4100, 10.10.1.0/24) on
// two hosts, container a on host 1 and b on host 2, remotes programmed.
type twoHostNetwork struct {
	w        *world
	h1, h2   *testHost
	n        Network
	a, b     string // container netns paths
	epA, epB Endpoint
	echoB    string // TCP echo on b
	udpEchoB string // UDP echo on b
	echoA    string // TCP echo on a
	remoteA  Remote
	remoteB  Remote
}

func setupTwoHosts(tb testing.TB) *twoHostNetwork {
	tb.Helper()
	w := newWorld(tb, 2)
	s := &twoHostNetwork{w: w, h1: w.hosts[0], h2: w.hosts[1], n: network("n1", 4100, "10.10.1.0/24")}
	s.a, s.b = w.container(tb, "a"), w.container(tb, "b")
	s.epA, s.epB = endpoint("ep-a", "10.10.1.2"), endpoint("ep-b", "10.10.1.3")
	s.h1.ensure(tb, s.n)
	s.h2.ensure(tb, s.n)
	s.h1.attach(tb, s.n.ID, s.epA, s.a)
	s.h2.attach(tb, s.n.ID, s.epB, s.b)
	s.remoteA, s.remoteB = remote(s.epA, s.h1), remote(s.epB, s.h2)
	s.h1.setRemotes(tb, s.n.ID, s.remoteB)
	s.h2.setRemotes(tb, s.n.ID, s.remoteA)
	s.echoB = serveEcho(tb, s.b, ap(s.epB.Addr, 7000))
	s.udpEchoB = serveUDPEcho(tb, s.b, ap(s.epB.Addr, 7001))
	s.echoA = serveEcho(tb, s.a, ap(s.epA.Addr, 7000))
	return s
}

func TestCrossHost(t *testing.T) {
	s := setupTwoHosts(t)
	ctx := context.Background()

	// Everything again: idempotent, and nothing is recreated.
	sb := netnstest.Handle(t, s.h1.d.SandboxPath(s.n.ID))
	vxBefore := mustLink(t, sb, s.h1.d.vxlanName(s.n.VNI)).Attrs().Index
	vethBefore := mustLink(t, sb, s.h1.d.vethName(s.epA.ID)).Attrs().Index
	s.h1.ensure(t, s.n)
	s.h1.attach(t, s.n.ID, s.epA, s.a)
	checkProgrammed(t, s.h1, s.n.ID, []Remote{s.remoteB})
	s.h1.setRemotes(t, s.n.ID, s.remoteB)
	if mustLink(t, sb, s.h1.d.vxlanName(s.n.VNI)).Attrs().Index != vxBefore ||
		mustLink(t, sb, s.h1.d.vethName(s.epA.ID)).Attrs().Index != vethBefore {
		t.Error("EnsureNetwork or Attach recreated an unchanged link")
	}

	for _, tc := range []struct {
		name string
		run  func() error
	}{
		{"a to b, 64 KiB over TCP", func() error { return tcpRoundTrip(s.a, s.echoB, 64<<10) }},
		{"b to a, 64 KiB over TCP", func() error { return tcpRoundTrip(s.b, s.echoA, 64<<10) }},
		{"a to b, 1400-byte UDP datagram", func() error { return udpRoundTrip(s.a, s.udpEchoB, 1400) }},
		// 1472 bytes of payload fill a 1500-byte packet: with MTU 1450 the
		// container fragments it; with a 1500 MTU the sandbox bridge would
		// drop the frame it cannot pass to the 1450 vxlan device.
		{"a to b, 1472-byte UDP datagram", func() error { return udpRoundTrip(s.a, s.udpEchoB, 1472) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.run(); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("layout", func(t *testing.T) {
		ch := netnstest.Handle(t, s.a)
		eth := mustLink(t, ch, "eth1")
		if eth.Attrs().MTU != DefaultMTU || eth.Attrs().HardwareAddr.String() != s.epA.MAC.String() {
			t.Errorf("container eth1: MTU %d MAC %s, want %d %s", eth.Attrs().MTU, eth.Attrs().HardwareAddr, DefaultMTU, s.epA.MAC)
		}
		routes, err := ch.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if p, _ := prefixOf(r.Dst); r.LinkIndex == eth.Attrs().Index && p != s.n.Subnet {
				t.Errorf("route %v on eth1: want only the subnet's", r)
			}
		}
		sb := netnstest.Handle(t, s.h1.d.SandboxPath(s.n.ID))
		br := mustLink(t, sb, s.h1.d.bridgeName())
		if got, want := br.Attrs().HardwareAddr.String(), macFor(s.n.Gateway).String(); got != want {
			t.Errorf("bridge MAC %s, want %s", got, want)
		}
		vx, ok := mustLink(t, sb, s.h1.d.vxlanName(s.n.VNI)).(*netlink.Vxlan)
		if !ok || vx.VxlanId != int(s.n.VNI) || vx.Learning || !vx.Proxy || vx.Port != DefaultPort ||
			addrOf(vx.SrcAddr) != s.h1.vtep || vx.Attrs().MTU != DefaultMTU || vx.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("vxlan device %+v", vx)
		}
		if got := netnstest.ReadSysctl(t, s.h1.d.SandboxPath(s.n.ID), ipForward); got != "0" {
			t.Errorf("ip_forward in sandbox = %s, want 0", got)
		}
		checkNoBridgeNF(t, s.h1.d.SandboxPath(s.n.ID))
		// Nothing of the driver is left in the host netns.
		hl, err := netnstest.Handle(t, s.h1.ns).LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range hl {
			if _, ok := l.(*netlink.Vxlan); ok {
				t.Errorf("vxlan %s in the host netns", l.Attrs().Name)
			}
		}
		nets, err := s.h1.d.Networks(ctx)
		if err != nil || !slices.Equal(nets, []string{s.n.ID}) {
			t.Errorf("Networks = %v, %v", nets, err)
		}
		eps, err := s.h1.d.Endpoints(ctx, s.n.ID)
		if err != nil || !slices.Equal(eps, []string{s.epA.ID}) {
			t.Errorf("Endpoints = %v, %v", eps, err)
		}
	})

	t.Run("a 1500 MTU loses full-size datagrams, Attach repairs it", func(t *testing.T) {
		ch := netnstest.Handle(t, s.a)
		if err := ch.LinkSetMTU(mustLink(t, ch, "eth1"), 1500); err != nil {
			t.Fatal(err)
		}
		if err := udpRoundTrip(s.a, s.udpEchoB, 1472); err == nil {
			t.Error("a 1472-byte datagram passed with a 1500 MTU: the check above proves nothing")
		}
		s.h1.attach(t, s.n.ID, s.epA, s.a)
		if err := udpRoundTrip(s.a, s.udpEchoB, 1472); err != nil {
			t.Errorf("after Attach repaired the MTU: %v", err)
		}
	})

	t.Run("detach and reattach", func(t *testing.T) {
		if err := s.h2.d.Detach(ctx, s.n.ID, s.epB.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.h2.d.Detach(ctx, s.n.ID, s.epB.ID); err != nil {
			t.Fatalf("second Detach: %v", err)
		}
		if _, err := netnstest.Handle(t, s.b).LinkByName("eth1"); !isNotFound(err) {
			t.Errorf("eth1 still in the container after Detach: %v", err)
		}
		if c, err := dialIn(s.a, s.echoB, closedTimeout); err == nil {
			c.Close()
			t.Error("reached b after Detach")
		}
		s.h2.attach(t, s.n.ID, s.epB, s.b)
		if err := tcpRoundTrip(s.a, s.echoB, 1<<10); err != nil {
			t.Errorf("after reattach: %v", err)
		}
	})

	t.Run("MTU change", func(t *testing.T) {
		// A network's MTU is the same on every host (one L2 segment: a
		// bridge does not fragment, so a host left at a larger MTU would
		// send frames the other drops); both change.
		n := s.n
		n.MTU = 1400
		s.h2.ensure(t, n)
		s.h2.attach(t, n.ID, s.epB, s.b)
		s.h1.ensure(t, n)
		for _, name := range []string{s.h1.d.bridgeName(), s.h1.d.vxlanName(n.VNI), s.h1.d.vethName(s.epA.ID)} {
			if mtu := mustLink(t, sb, name).Attrs().MTU; mtu != 1400 {
				t.Errorf("%s MTU %d after EnsureNetwork with 1400", name, mtu)
			}
		}
		s.h1.attach(t, n.ID, s.epA, s.a)
		if mtu := mustLink(t, netnstest.Handle(t, s.a), "eth1").Attrs().MTU; mtu != 1400 {
			t.Errorf("container MTU %d after Attach, want 1400", mtu)
		}
		// Larger than the MTU: fragmented, and reassembled at the far end.
		if err := udpRoundTrip(s.a, s.udpEchoB, 1472); err != nil {
			t.Error(err)
		}
		s.h1.ensure(t, s.n)
		s.h1.attach(t, s.n.ID, s.epA, s.a)
		s.h2.ensure(t, s.n)
		s.h2.attach(t, s.n.ID, s.epB, s.b)
	})

	t.Run("VTEP change replaces the vxlan device", func(t *testing.T) {
		// The host got a new underlay address: a driver with the new
		// Config.VTEP replaces the device.
		alt := netip.MustParsePrefix("192.0.2.101/24")
		hh := netnstest.Handle(t, s.h1.ns)
		if err := hh.AddrAdd(mustLink(t, hh, s.h1.uplink), &netlink.Addr{IPNet: ipNet(alt)}); err != nil {
			t.Fatal(err)
		}
		cfg := s.h1.cfg
		cfg.VTEP = alt.Addr()
		d := mustNew(t, cfg)
		if err := d.EnsureNetwork(ctx, s.n); err != nil {
			t.Fatal(err)
		}
		vx := mustLink(t, sb, s.h1.d.vxlanName(s.n.VNI)).(*netlink.Vxlan)
		if addrOf(vx.SrcAddr) != alt.Addr() {
			t.Fatalf("vxlan local %s, want %s", vx.SrcAddr, alt.Addr())
		}
		checkProgrammed(t, s.h1, s.n.ID, nil) // the remotes went with the device
		if err := d.SetRemotes(ctx, s.n.ID, []Remote{s.remoteB}); err != nil {
			t.Fatal(err)
		}
		s.h2.setRemotes(t, s.n.ID, Remote{Addr: s.remoteA.Addr, MAC: s.remoteA.MAC, VTEP: alt.Addr()})
		if err := tcpRoundTrip(s.a, s.echoB, 64<<10); err != nil {
			t.Errorf("over the new VTEP: %v", err)
		}
		s.h1.ensure(t, s.n)
		s.h1.setRemotes(t, s.n.ID, s.remoteB)
		s.h2.setRemotes(t, s.n.ID, s.remoteA)
		if err := tcpRoundTrip(s.a, s.echoB, 1<<10); err != nil {
			t.Errorf("back on the default VTEP: %v", err)
		}
	})

	t.Run("attach errors", func(t *testing.T) {
		other := endpoint("ep-x", "10.10.1.9")
		// eth1 in a is ep-a's; another endpoint may not take it.
		err := s.h1.d.Attach(ctx, s.n.ID, other, s.a, "eth1")
		if !errors.Is(err, ErrNameTaken) {
			t.Errorf("Attach on a taken name: %v, want ErrNameTaken", err)
		}
		err = s.h1.d.Attach(ctx, "missing", other, s.a, "eth2")
		if !errors.Is(err, ErrNoNetwork) {
			t.Errorf("Attach to a missing network: %v, want ErrNoNetwork", err)
		}
		outside := endpoint("ep-y", "10.10.2.9")
		err = s.h1.d.Attach(ctx, s.n.ID, outside, s.a, "eth2")
		if !errors.Is(err, ErrInvalidEndpoint) {
			t.Errorf("Attach outside the subnet: %v, want ErrInvalidEndpoint", err)
		}
	})
}

func TestIsolation(t *testing.T) {
	w := newWorld(t, 2)
	h1, h2 := w.hosts[0], w.hosts[1]
	n1 := network("n1", 4100, "10.10.1.0/24")
	n2 := network("n2", 4101, "10.10.1.0/24") // overlaps n1
	n3 := network("n3", 4102, "10.10.3.0/24")
	for _, h := range w.hosts {
		for _, n := range []Network{n1, n2, n3} {
			h.ensure(t, n)
		}
	}
	// The same addresses on n1 and n2.
	a, b := w.container(t, "a"), w.container(t, "b") // n1 on h1, h2
	c, d := w.container(t, "c"), w.container(t, "d") // n2 on h1, h2
	e, f := w.container(t, "e"), w.container(t, "f") // n3 on h1, h2
	epA, epB := endpoint("a", "10.10.1.2"), endpoint("b", "10.10.1.3")
	epC, epD := endpoint("c", "10.10.1.2"), endpoint("d", "10.10.1.3")
	epC.MAC[1], epD.MAC[1] = 0xcc, 0xcc
	epE, epF := endpoint("e", "10.10.3.2"), endpoint("f", "10.10.3.3")
	h1.attach(t, n1.ID, epA, a)
	h2.attach(t, n1.ID, epB, b)
	h1.attach(t, n2.ID, epC, c)
	h2.attach(t, n2.ID, epD, d)
	h1.attach(t, n3.ID, epE, e)
	h2.attach(t, n3.ID, epF, f)
	h1.setRemotes(t, n1.ID, remote(epB, h2))
	h2.setRemotes(t, n1.ID, remote(epA, h1))
	h1.setRemotes(t, n2.ID, remote(epD, h2))
	h2.setRemotes(t, n2.ID, remote(epC, h1))
	h1.setRemotes(t, n3.ID, remote(epF, h2))
	h2.setRemotes(t, n3.ID, remote(epE, h1))

	echoB := serveEcho(t, b, ap(epB.Addr, 7000))
	echoD := serveEcho(t, d, ap(epD.Addr, 7001))
	echoE := serveEcho(t, e, ap(epE.Addr, 7002))
	echoF := serveEcho(t, f, ap(epF.Addr, 7002))

	// a sends everything else to its gateway, as if the agent had made it
	// the default route: the sandbox must not forward it.
	ah := netnstest.Handle(t, a)
	if err := ah.RouteAdd(&netlink.Route{
		LinkIndex: mustLink(t, ah, "eth1").Attrs().Index, Gw: n1.Gateway.AsSlice(),
		Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")),
	}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		from, to string
		open     bool
	}{
		{"n1 a to n1 b", a, echoB, true},
		{"n2 c to n2 d", c, echoD, true},
		{"n3 e to n3 f", e, echoF, true},
		// d listens on 10.10.1.3:7001; on n1 that address is b, which
		// refuses port 7001: a's frames reach b, never d.
		{"n1 a to n2 d's address and port", a, echoD, false},
		{"n2 c to n1 b's address and port", c, echoB, false},
		{"n1 a via its gateway to n3 f on another host", a, echoF, false},
		{"n1 a via its gateway to n3 e on its own host", a, echoE, false},
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
}

func TestSetRemotes(t *testing.T) {
	s := setupTwoHosts(t)
	ctx := context.Background()
	c := s.w.container(t, "c")
	epC := endpoint("ep-c", "10.10.1.4")
	s.h2.attach(t, s.n.ID, epC, c)
	remoteC := remote(epC, s.h2)
	echoC := serveEcho(t, c, ap(epC.Addr, 7000))
	s.h1.setRemotes(t, s.n.ID, s.remoteB, remoteC)
	s.h2.setRemotes(t, s.n.ID, s.remoteA)

	// A long-lived connection to b, which stays a remote throughout.
	conn, err := dialIn(s.a, s.echoB, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	bogus := remoteC
	bogus.VTEP = netip.MustParseAddr("192.0.2.99") // no host there
	steps := []struct {
		name    string
		remotes []Remote
		reachC  bool
	}{
		{"both", []Remote{s.remoteB, remoteC}, true},
		{"c removed", []Remote{s.remoteB}, false},
		{"c back", []Remote{remoteC, s.remoteB}, true},
		{"c behind a wrong VTEP", []Remote{s.remoteB, bogus}, false},
		{"c's VTEP right again", []Remote{s.remoteB, remoteC}, true},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			s.h1.setRemotes(t, s.n.ID, st.remotes...)
			checkProgrammed(t, s.h1, s.n.ID, st.remotes)
			checkReach(t, conn, s.a, s.echoB, echoC, st.reachC)
		})
	}

	t.Run("stray entries are removed, read back from the kernel", func(t *testing.T) {
		sb := netnstest.Handle(t, s.h1.d.SandboxPath(s.n.ID))
		vx := mustLink(t, sb, s.h1.d.vxlanName(s.n.VNI))
		stray := endpoint("stray", "10.10.1.77")
		if err := applyRemotes(sb, vx.Attrs().Index, remoteChanges{
			setFDB:   []fdbEntry{{MAC: stray.MAC.String(), VTEP: s.h2.vtep}},
			setNeigh: []neighEntry{{IP: stray.Addr.Addr(), MAC: stray.MAC.String()}},
		}); err != nil {
			t.Fatal(err)
		}
		// A fresh driver: nothing in memory.
		d := mustNew(t, s.h1.cfg)
		if err := d.SetRemotes(ctx, s.n.ID, []Remote{s.remoteB, remoteC}); err != nil {
			t.Fatal(err)
		}
		checkProgrammed(t, s.h1, s.n.ID, []Remote{s.remoteB, remoteC})
		if err := roundTrip(conn, 8<<10); err != nil {
			t.Fatalf("existing connection to b: %v", err)
		}
	})

	t.Run("invalid sets are refused", func(t *testing.T) {
		dup := s.remoteB
		dup.MAC = remoteC.MAC
		for _, rs := range [][]Remote{{s.remoteB, s.remoteB}, {dup, bogus}} {
			if err := s.h1.d.SetRemotes(ctx, s.n.ID, rs); !errors.Is(err, ErrInvalidRemote) {
				t.Errorf("SetRemotes(%v) = %v, want ErrInvalidRemote", rs, err)
			}
		}
		if err := s.h1.d.SetRemotes(ctx, "missing", nil); !errors.Is(err, ErrNoNetwork) {
			t.Errorf("SetRemotes on a missing network = %v, want ErrNoNetwork", err)
		}
	})
}

// checkProgrammed compares the vxlan device's entries with want.
func checkProgrammed(t *testing.T, h *testHost, netID string, want []Remote) {
	t.Helper()
	sb := netnstest.Handle(t, h.d.SandboxPath(netID))
	vx, err := h.d.findVxlan(sb)
	if err != nil {
		t.Fatal(err)
	}
	neighs, fdb, err := readRemotes(sb, vx)
	if err != nil {
		t.Fatal(err)
	}
	if c := diffRemotes(neighs, fdb, want); !c.empty() {
		t.Errorf("programmed entries differ from %v: neighbours %v, fdb %v", want, neighs, fdb)
	}
	if len(neighs) != len(want) || len(fdb) != len(want) {
		t.Errorf("%d neighbour and %d fdb entries for %d remotes", len(neighs), len(fdb), len(want))
	}
}

func TestReconcileAfterRestart(t *testing.T) {
	s := setupTwoHosts(t)
	ctx := context.Background()
	stale := network("stale", 4101, "10.10.2.0/24")
	s.h1.ensure(t, stale)
	staleC := s.w.container(t, "s")
	s.h1.attach(t, stale.ID, endpoint("ep-s", "10.10.2.2"), staleC)
	conn, err := dialIn(s.a, s.echoB, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// What a crash could leave: a vxlan device not yet moved into its
	// sandbox, and a sandbox file that was never mounted onto.
	hh := netnstest.Handle(t, s.h1.ns)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = s.h1.d.vxlanName(4102)
	if err := hh.LinkAdd(&netlink.Vxlan{LinkAttrs: attrs, VxlanId: 4102, Port: DefaultPort}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.h1.d.SandboxPath("half"), nil, 0o444); err != nil {
		t.Fatal(err)
	}

	// The restarted daemon: a new Driver with the same config.
	d := mustNew(t, s.h1.cfg)
	nets, err := d.Networks(ctx)
	if err != nil || !slices.Equal(nets, []string{s.n.ID, stale.ID}) {
		t.Fatalf("Networks after restart = %v, %v", nets, err)
	}
	fresh := network("fresh", 4103, "10.10.3.0/24")
	if err := d.Reconcile(ctx, []Network{s.n, fresh}); err != nil {
		t.Fatal(err)
	}
	nets, err = d.Networks(ctx)
	if err != nil || !slices.Equal(nets, []string{fresh.ID, s.n.ID}) {
		t.Errorf("Networks after Reconcile = %v, %v", nets, err)
	}
	for _, id := range []string{stale.ID, "half"} {
		if _, err := os.Stat(d.SandboxPath(id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("sandbox file of %s still there: %v", id, err)
		}
	}
	if _, err := hh.LinkByName(attrs.Name); !isNotFound(err) {
		t.Errorf("leftover vxlan in the host netns: %v", err)
	}
	if _, err := netnstest.Handle(t, staleC).LinkByName("eth1"); !isNotFound(err) {
		t.Errorf("stale network's container interface still there: %v", err)
	}
	if err := roundTrip(conn, 8<<10); err != nil {
		t.Errorf("connection over the kept network: %v", err)
	}
	if err := tcpRoundTrip(s.a, s.echoB, 8<<10); err != nil {
		t.Errorf("new connection over the kept network: %v", err)
	}
	eps, err := d.Endpoints(ctx, s.n.ID)
	if err != nil || !slices.Equal(eps, []string{s.epA.ID}) {
		t.Errorf("Endpoints after restart = %v, %v", eps, err)
	}
	// Remotes and attachments re-applied by the agent are no-ops.
	s.h1.setRemotes(t, s.n.ID, s.remoteB)
	if err := d.Attach(ctx, s.n.ID, s.epA, s.a, "eth1"); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(conn, 8<<10); err != nil {
		t.Errorf("connection after re-applying: %v", err)
	}

	conn.Close() // before its path goes, so its server need not time out

	if err := d.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if nets, err := d.Networks(ctx); err != nil || len(nets) != 0 {
		t.Errorf("Networks after Reconcile(nil) = %v, %v", nets, err)
	}
	if _, err := netnstest.Handle(t, s.a).LinkByName("eth1"); !isNotFound(err) {
		t.Errorf("container interface outlived its network: %v", err)
	}
}

// checkNoBridgeNF checks that bridged frames in the sandbox skip the IP
// hooks, when br_netfilter is loaded (without it they do anyway).
func checkNoBridgeNF(t *testing.T, sandbox string) {
	t.Helper()
	if _, err := os.Stat(bridgeNFCall[0]); err != nil {
		t.Logf("br_netfilter is not loaded: bridged frames skip the IP hooks anyway")
		return
	}
	for _, p := range bridgeNFCall {
		if got := netnstest.ReadSysctl(t, sandbox, p); got != "0" {
			t.Errorf("%s in the sandbox = %s, want 0", p, got)
		}
	}
}
