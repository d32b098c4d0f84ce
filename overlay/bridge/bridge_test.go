package bridge

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/overlay/netnsutil"
	"github.com/shoal-project/shoal/overlay/netnsutil/netnstest"
)

func TestSetupIdempotentAndRepairs(t *testing.T) {
	e := newEnv(t)
	d := e.newDriver(t)
	h := netnstest.Handle(t, e.hostNS)
	steps := []struct {
		name   string
		damage func(t *testing.T, br netlink.Link)
	}{
		{name: "fresh"},
		{name: "again"},
		{name: "bridge down without address", damage: func(t *testing.T, br netlink.Link) {
			addrs, _ := h.AddrList(br, netlink.FAMILY_V4)
			for _, a := range addrs {
				if err := h.AddrDel(br, &a); err != nil {
					t.Fatal(err)
				}
			}
			if err := h.LinkSetDown(br); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "MAC and MTU changed", damage: func(t *testing.T, br netlink.Link) {
			if err := h.LinkSetHardwareAddr(br, net.HardwareAddr{0x02, 0, 0, 0, 0, 9}); err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetMTU(br, 1400); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "table deleted", damage: func(t *testing.T, _ netlink.Link) {
			ns, err := netns.GetFromPath(e.hostNS)
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Close()
			if err := d.deleteTable(ns); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "port added", damage: func(t *testing.T, _ netlink.Link) {
			e.attach(t, d, e.id("port"))
		}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.damage != nil {
				br, err := h.LinkByName(e.cfg.Name)
				if err != nil {
					t.Fatal(err)
				}
				s.damage(t, br)
			}
			e.setup(t, d)
			checkBridge(t, e, d, h)
		})
	}
	if err := d.Detach(context.Background(), e.prefix+"-port"); err != nil {
		t.Fatal(err)
	}
}

// checkBridge asserts the state Setup promises.
func checkBridge(t *testing.T, e *testEnv, d *Driver, h *netlink.Handle) {
	t.Helper()
	br, err := h.LinkByName(e.cfg.Name)
	if err != nil {
		t.Fatalf("bridge missing: %v", err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		t.Fatalf("link %s is a %s", e.cfg.Name, br.Type())
	}
	a := br.Attrs()
	if a.Flags&net.FlagUp == 0 {
		t.Error("bridge is down")
	}
	if a.MTU != DefaultMTU {
		t.Errorf("bridge MTU %d, want %d", a.MTU, DefaultMTU)
	}
	if got, want := a.HardwareAddr.String(), "02:53:ac:1d:00:01"; got != want {
		t.Errorf("bridge MAC %s, want %s (derived from gateway)", got, want)
	}
	addrs, err := h.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "172.29.0.1/16" {
		t.Errorf("bridge addresses %v, want only 172.29.0.1/16", addrs)
	}
	if v := readIPForward(t, e.hostNS); v != "1" {
		t.Errorf("ip_forward in host netns = %s, want 1", v)
	}
	if v := netnstest.ReadSysctl(t, e.hostNS, "/proc/sys/net/ipv4/conf/"+e.cfg.Name+"/route_localnet"); v != "1" {
		t.Errorf("route_localnet on the bridge = %s, want 1", v)
	}
	rules := listTable(t, e.hostNS, d.TableName())
	post, fwd := rules[chainPostrouting], rules[chainForward]
	if len(post) != 1 || !slices.ContainsFunc(post[0].Exprs, func(x expr.Any) bool { _, ok := x.(*expr.Masq); return ok }) {
		t.Errorf("postrouting rules %v, want exactly one masquerade rule", post)
	}
	if len(fwd) != 2 {
		t.Errorf("forward chain has %d rules, want 2 (no duplicates)", len(fwd))
	}
	if guard := rules[chainGuard]; len(guard) != 2 {
		t.Errorf("guard chain has %d rules, want 2 (loopback source and destination)", len(guard))
	}
}

// listTable returns the rules per chain of the ip table name in the netns at
// nsPath, failing the test if the table does not exist.
func listTable(t *testing.T, nsPath, name string) map[string][]*nftables.Rule {
	t.Helper()
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tb, err := c.ListTableOfFamily(name, nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatalf("table %s not found: %v", name, err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*nftables.Rule{}
	for _, ch := range chains {
		if ch.Table.Name != name {
			continue
		}
		rs, err := c.GetRules(tb, ch)
		if err != nil {
			t.Fatal(err)
		}
		out[ch.Name] = rs
	}
	return out
}

func tableExists(t *testing.T, nsPath, name string) bool {
	t.Helper()
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == name })
}

// checkEndpoint asserts eth0, lo and the default route inside ep's netns.
func checkEndpoint(t *testing.T, ep Endpoint) {
	t.Helper()
	h := netnstest.Handle(t, ep.NetNSPath)
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("%s: no eth0: %v", ep.ID, err)
	}
	if eth.Attrs().Flags&net.FlagUp == 0 || eth.Attrs().MTU != DefaultMTU {
		t.Errorf("%s: eth0 flags %v MTU %d, want up and %d", ep.ID, eth.Attrs().Flags, eth.Attrs().MTU, DefaultMTU)
	}
	if eth.Attrs().HardwareAddr.String() != ep.MAC.String() {
		t.Errorf("%s: eth0 MAC %s, want %s", ep.ID, eth.Attrs().HardwareAddr, ep.MAC)
	}
	addrs, err := h.AddrList(eth, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != ep.Address.String() {
		t.Errorf("%s: eth0 addresses %v, want %s", ep.ID, addrs, ep.Address)
	}
	routes, err := h.RouteList(eth, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		isDefault := r.Dst == nil || r.Dst.String() == "0.0.0.0/0"
		return isDefault && r.Gw.Equal(ep.Gateway.AsSlice())
	}) {
		t.Errorf("%s: no default route via %s in %v", ep.ID, ep.Gateway, routes)
	}
	lo, err := h.LinkByName("lo")
	if err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: lo not up (%v)", ep.ID, err)
	}
}

func sameEndpoint(a, b Endpoint) bool {
	return a.ID == b.ID && a.NetNSPath == b.NetNSPath && a.Address == b.Address &&
		a.Gateway == b.Gateway && a.MAC.String() == b.MAC.String()
}

func TestAttachConnectivity(t *testing.T) {
	e := newEnv(t)
	d := e.newDriver(t)
	e.setup(t, d)
	a := e.attach(t, d, e.id("a"))
	b := e.attach(t, d, e.id("b"))
	if a.Address == b.Address {
		t.Fatalf("both endpoints got %s", a.Address)
	}
	for _, ep := range []Endpoint{a, b} {
		if !d.Subnet().Contains(ep.Address.Addr()) || ep.Address.Bits() != 16 || ep.Gateway != d.Gateway() {
			t.Errorf("endpoint %+v outside subnet %s / gateway %s", ep, d.Subnet(), d.Gateway())
		}
		if want := filepath.Join(e.cfg.StateDir, "netns", ep.ID); ep.NetNSPath != want {
			t.Errorf("netns path %s, want %s", ep.NetNSPath, want)
		}
		checkEndpoint(t, ep)
	}
	// Every path keeps the source address: nothing on the bridge is NATed.
	tests := []struct {
		name     string
		fromNS   string
		serverNS string
		serverIP netip.Addr
		wantPeer netip.Addr
	}{
		{name: "a to b", fromNS: a.NetNSPath, serverNS: b.NetNSPath, serverIP: b.Address.Addr(), wantPeer: a.Address.Addr()},
		{name: "b to a", fromNS: b.NetNSPath, serverNS: a.NetNSPath, serverIP: a.Address.Addr(), wantPeer: b.Address.Addr()},
		{name: "a to gateway", fromNS: a.NetNSPath, serverNS: e.hostNS, serverIP: d.Gateway(), wantPeer: a.Address.Addr()},
		{name: "host to b", fromNS: e.hostNS, serverNS: b.NetNSPath, serverIP: b.Address.Addr(), wantPeer: d.Gateway()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveRemoteAddr(t, tc.serverNS, tc.serverIP)
			got, err := peerSeenBy(tc.fromNS, addr)
			if err != nil {
				t.Fatalf("dial %s: %v", addr, err)
			}
			if got != tc.wantPeer.String() {
				t.Fatalf("server saw peer %s, want %s", got, tc.wantPeer)
			}
		})
	}
	again, err := d.Attach(context.Background(), a.ID)
	if err != nil {
		t.Fatalf("Attach again: %v", err)
	}
	if !sameEndpoint(again, a) {
		t.Fatalf("Attach again = %+v, want %+v", again, a)
	}
	if ids, _ := d.Endpoints(); !slices.Equal(ids, []string{a.ID, b.ID}) {
		t.Fatalf("Endpoints = %v, want [%s %s]", ids, a.ID, b.ID)
	}
	for _, ep := range []Endpoint{a, b} {
		if err := d.Detach(context.Background(), ep.ID); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRestartKeepsEndpoints(t *testing.T) {
	e := newEnv(t)
	d1 := e.newDriver(t)
	e.setup(t, d1)
	a := e.attach(t, d1, e.id("a"))
	b := e.attach(t, d1, e.id("b"))

	d2 := e.newDriver(t) // the restarted daemon
	e.setup(t, d2)
	ids, err := d2.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []string{a.ID, b.ID}) {
		t.Fatalf("Endpoints after restart = %v, want [%s %s]", ids, a.ID, b.ID)
	}
	c := e.attach(t, d2, e.id("c"))
	if c.Address == a.Address || c.Address == b.Address {
		t.Fatalf("new endpoint reused %s", c.Address)
	}
	a2 := e.attach(t, d2, a.ID)
	if !sameEndpoint(a2, a) {
		t.Fatalf("Attach after restart = %+v, want %+v", a2, a)
	}
	// The old endpoint still works after the restart's Setup and Attach.
	addr := serveRemoteAddr(t, a.NetNSPath, a.Address.Addr())
	if got, err := peerSeenBy(c.NetNSPath, addr); err != nil || got != c.Address.Addr().String() {
		t.Fatalf("c to a after restart: peer %q, err %v", got, err)
	}
	for _, id := range []string{a.ID, b.ID, c.ID} {
		if err := d2.Detach(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMasquerade(t *testing.T) {
	e := newEnv(t)
	d := e.newDriver(t)
	e.setup(t, d)
	ep := e.attach(t, d, e.id("a"))
	t.Cleanup(func() { d.Detach(context.Background(), ep.ID) })

	outside, uplink, remote := e.newOutside(t)

	tests := []struct {
		name     string
		serverNS string
		serverIP netip.Addr
		wantPeer netip.Addr
	}{
		{name: "leaving through the uplink is masqueraded", serverNS: outside, serverIP: remote, wantPeer: uplink},
		{name: "to the host over the bridge keeps the source", serverNS: e.hostNS, serverIP: d.Gateway(), wantPeer: ep.Address.Addr()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveRemoteAddr(t, tc.serverNS, tc.serverIP)
			got, err := peerSeenBy(ep.NetNSPath, addr)
			if err != nil {
				t.Fatalf("dial %s from container: %v", addr, err)
			}
			if got != tc.wantPeer.String() {
				t.Fatalf("server saw peer %s, want %s", got, tc.wantPeer)
			}
		})
	}
}

func TestDetachFreesEverything(t *testing.T) {
	e := newEnv(t)
	e.cfg.Subnet = netip.MustParsePrefix("10.77.0.0/29") // 5 container addresses
	d := e.newDriver(t)
	e.setup(t, d)
	h := netnstest.Handle(t, e.hostNS)
	var eps []Endpoint
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		eps = append(eps, e.attach(t, d, e.id(n)))
	}
	t.Cleanup(func() {
		ids, _ := d.Endpoints()
		for _, id := range ids {
			d.Detach(context.Background(), id)
		}
	})
	full := e.id("full")
	if _, err := d.Attach(context.Background(), full); !errors.Is(err, ErrSubnetFull) {
		t.Fatalf("Attach to a full subnet = %v, want ErrSubnetFull", err)
	}
	if _, err := os.Stat(filepath.Join(e.cfg.StateDir, "netns", full)); !os.IsNotExist(err) {
		t.Fatalf("failed Attach left a netns file (stat: %v)", err)
	}

	gone := eps[2]
	for i := range 2 { // the second Detach must be a no-op
		if err := d.Detach(context.Background(), gone.ID); err != nil {
			t.Fatalf("Detach #%d: %v", i+1, err)
		}
	}
	if _, err := h.LinkByName(VethName(gone.ID)); err == nil {
		t.Error("host veth still exists after Detach")
	}
	if _, err := os.Stat(gone.NetNSPath); !os.IsNotExist(err) {
		t.Errorf("netns file still exists after Detach (stat: %v)", err)
	}
	ids, err := d.Endpoints()
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ids, gone.ID) || len(ids) != 4 {
		t.Errorf("Endpoints after Detach = %v", ids)
	}
	reused := e.attach(t, d, e.id("new"))
	if reused.Address != gone.Address {
		t.Fatalf("new endpoint got %s, want the freed %s", reused.Address, gone.Address)
	}
	checkEndpoint(t, reused)
}

func TestAttachRepairs(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, e *testEnv, ep Endpoint)
	}{
		{name: "host veth deleted", damage: func(t *testing.T, e *testEnv, ep Endpoint) {
			h := netnstest.Handle(t, e.hostNS)
			l, err := h.LinkByName(VethName(ep.ID))
			if err != nil {
				t.Fatal(err)
			}
			if err := h.LinkDel(l); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "netns file lost", damage: func(t *testing.T, e *testEnv, ep Endpoint) {
			if err := netnsutil.RemoveNetNSFile(ep.NetNSPath); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "netns file is a stale placeholder", damage: func(t *testing.T, e *testEnv, ep Endpoint) {
			if err := netnsutil.RemoveNetNSFile(ep.NetNSPath); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(ep.NetNSPath, nil, 0o444); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			d := e.newDriver(t)
			e.setup(t, d)
			ep := e.attach(t, d, e.id("a"))
			peer := e.attach(t, d, e.id("b"))
			t.Cleanup(func() {
				d.Detach(context.Background(), ep.ID)
				d.Detach(context.Background(), peer.ID)
			})
			tc.damage(t, e, ep)
			got := e.attach(t, d, ep.ID)
			if !sameEndpoint(got, ep) {
				t.Fatalf("repaired endpoint %+v, want %+v", got, ep)
			}
			checkEndpoint(t, got)
			addr := serveRemoteAddr(t, peer.NetNSPath, peer.Address.Addr())
			if p, err := peerSeenBy(got.NetNSPath, addr); err != nil || p != got.Address.Addr().String() {
				t.Fatalf("repaired endpoint to peer: saw %q, err %v", p, err)
			}
		})
	}
}

func TestTeardown(t *testing.T) {
	e := newEnv(t)
	d := e.newDriver(t)
	ctx := context.Background()
	id := e.id("a")
	if _, err := d.Attach(ctx, id); !errors.Is(err, ErrNotSetUp) {
		t.Fatalf("Attach before Setup = %v, want ErrNotSetUp", err)
	}
	e.setup(t, d)
	ep := e.attach(t, d, id)
	// A port left published (the caller did not clear it) goes with the bridge.
	if err := d.Ports().Apply(ctx, []PortMapping{{Protocol: TCP, HostPort: 18080, Target: netip.AddrPortFrom(ep.Address.Addr(), 80)}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Teardown(ctx); !errors.Is(err, ErrEndpointsAttached) {
		t.Fatalf("Teardown with endpoints = %v, want ErrEndpointsAttached", err)
	}
	if err := d.Detach(ctx, id); err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the second Teardown must be a no-op
		if err := d.Teardown(ctx); err != nil {
			t.Fatalf("Teardown #%d: %v", i+1, err)
		}
	}
	h := netnstest.Handle(t, e.hostNS)
	if _, err := h.LinkByName(e.cfg.Name); err == nil {
		t.Error("bridge still exists after Teardown")
	}
	if tableExists(t, e.hostNS, d.TableName()) {
		t.Error("nftables table still exists after Teardown")
	}
	if tableExists(t, e.hostNS, d.Ports().Name()) {
		t.Error("port table still exists after Teardown")
	}
}
