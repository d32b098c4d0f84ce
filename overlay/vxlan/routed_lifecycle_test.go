// Encrypted networks over time: remotes coming and going, removal, and
// what a restarted driver finds and reconciles.
package vxlan

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/overlay/netnsutil/netnstest"
)

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
			checkReach(t, conn, s.a, s.echoB, echoC, st.reachC)
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
			h := netnstest.Handle(t, path)
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
		hh := netnstest.Handle(t, h1.ns)
		wgLink := mustLink(t, hh, h1.wg.name)
		sb := netnstest.Handle(t, h1.d.SandboxPath(s.n.ID))
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
	hh := netnstest.Handle(t, h.ns)
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
		sb := netnstest.Handle(t, h.d.SandboxPath(p.ID))
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
