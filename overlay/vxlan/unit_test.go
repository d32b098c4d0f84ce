package vxlan

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// Tests here need no root: names, validation, the remote and route diffs
// and the isolation table's rules.

func testDriver(t *testing.T, prefix string) *Driver {
	t.Helper()
	d, err := New(Config{Prefix: prefix, VTEP: netip.MustParseAddr("192.0.2.1"), NetNSDir: "/nonexistent"})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestNewValidates(t *testing.T) {
	vtep := netip.MustParseAddr("192.0.2.1")
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"minimal", Config{Prefix: "shoal", VTEP: vtep}, true},
		{"longest prefix", Config{Prefix: "abcdef", VTEP: vtep}, true},
		{"prefix too long", Config{Prefix: "abcdefg", VTEP: vtep}, false},
		{"prefix with a dash", Config{Prefix: "a-b", VTEP: vtep}, false},
		{"prefix starting with a digit", Config{Prefix: "1ab", VTEP: vtep}, false},
		{"upper case prefix", Config{Prefix: "Ab", VTEP: vtep}, false},
		{"no prefix", Config{VTEP: vtep}, false},
		{"no VTEP", Config{Prefix: "ab"}, false},
		{"unspecified VTEP", Config{Prefix: "ab", VTEP: netip.IPv4Unspecified()}, false},
		{"bad port", Config{Prefix: "ab", VTEP: vtep, Port: 70000}, false},
		{"WireGuard interface", Config{Prefix: "ab", VTEP: vtep, WireGuardIf: "abwg"}, true},
		{"WireGuard interface named like an uplink", Config{Prefix: "ab", VTEP: vtep, WireGuardIf: "abu0"}, false},
		{"WireGuard interface name too long", Config{Prefix: "ab", VTEP: vtep, WireGuardIf: "wireguard-shoal0"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := New(tc.cfg)
			if tc.ok != (err == nil) {
				t.Fatalf("New = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v is not ErrInvalidConfig", err)
			}
			if d != nil && (d.cfg.Port != DefaultPort || d.cfg.NetNSDir != DefaultNetNSDir) {
				t.Errorf("defaults not applied: %+v", d.cfg)
			}
		})
	}
}

func TestNames(t *testing.T) {
	d := testDriver(t, "sh")
	longer := testDriver(t, "shx0")
	for _, name := range []string{d.bridgeName(), d.vxlanName(maxVNI), d.vethName("any endpoint id"),
		testDriver(t, "abcdef").vethName("x"), testDriver(t, "abcdef").vxlanName(1)} {
		if len(name) > maxIfNameLen {
			t.Errorf("link name %q longer than %d bytes", name, maxIfNameLen)
		}
	}
	if vni, ok := d.vniOf(d.vxlanName(4100)); !ok || vni != 4100 {
		t.Errorf("vniOf(vxlanName(4100)) = %d, %v", vni, ok)
	}
	// Another driver's names never parse as ours.
	for _, name := range []string{longer.vxlanName(4100), "shx00100", "shx0010040", "shxzzzzzz", "shx000000"} {
		if vni, ok := d.vniOf(name); ok {
			t.Errorf("vniOf(%q) = %d, want not ours", name, vni)
		}
	}
	if id, ok := d.networkIDOf("sh-ov-net1"); !ok || id != "net1" {
		t.Errorf("networkIDOf = %q, %v", id, ok)
	}
	for _, file := range []string{"shx0-ov-net1", "sh-ov-", "sh-ov-.x", "other"} {
		if id, ok := d.networkIDOf(file); ok {
			t.Errorf("networkIDOf(%q) = %q, want not ours", file, id)
		}
	}
	if !d.isVethName(d.vethName("e1")) || d.isVethName(d.bridgeName()) || d.isVethName(longer.vethName("e1")) {
		t.Error("isVethName misclassifies")
	}
	if d.vethName("e1") == d.vethName("e2") {
		t.Error("two ids, one veth name")
	}

	for _, name := range []string{d.uplinkName(maxVNI), testDriver(t, "abcdef").uplinkName(maxVNI), d.uplinkSandboxName()} {
		if len(name) > maxIfNameLen {
			t.Errorf("link name %q longer than %d bytes", name, maxIfNameLen)
		}
	}
	if vni, ok := d.uplinkVNI(d.uplinkName(4100)); !ok || vni != 4100 {
		t.Errorf("uplinkVNI(uplinkName(4100)) = %d, %v", vni, ok)
	}
	for _, name := range []string{d.uplinkSandboxName(), longer.uplinkName(4100), d.vxlanName(4100), "shu00100", "shu000000"} {
		if vni, ok := d.uplinkVNI(name); ok {
			t.Errorf("uplinkVNI(%q) = %d, want not an uplink", name, vni)
		}
	}
	// Uplinks are neither veths of endpoints nor vxlan devices.
	for _, name := range []string{d.uplinkSandboxName(), d.uplinkName(4100)} {
		if _, ok := d.vniOf(name); ok || d.isVethName(name) {
			t.Errorf("%q taken for a vxlan device or an endpoint's veth", name)
		}
	}
	// Only uplinks match the wildcard the isolation table uses in the host
	// netns; the sandbox end never is there.
	for _, name := range []string{d.vxlanName(4100), d.vethName("e1"), d.bridgeName()} {
		if strings.HasPrefix(name, d.uplinkWildcard()) {
			t.Errorf("%q matches the uplink wildcard %q*", name, d.uplinkWildcard())
		}
	}
}

func TestNormalize(t *testing.T) {
	d := testDriver(t, "sh")
	good := network("n1", 4100, "10.10.1.0/24")
	n, err := d.normalize(good)
	if err != nil {
		t.Fatal(err)
	}
	if n.MTU != DefaultMTU {
		t.Errorf("defaults not applied: %+v", n)
	}
	for _, tc := range []struct {
		name   string
		change func(*Network)
	}{
		{"empty id", func(n *Network) { n.ID = "" }},
		{"id with a slash", func(n *Network) { n.ID = "a/b" }},
		{"VNI 0", func(n *Network) { n.VNI = 0 }},
		{"VNI 2^24", func(n *Network) { n.VNI = 1 << 24 }},
		{"IPv6 subnet", func(n *Network) { n.Subnet = netip.MustParsePrefix("fd00::/64") }},
		{"/31", func(n *Network) { n.Subnet = netip.MustParsePrefix("10.10.1.0/31") }},
		{"gateway outside", func(n *Network) { n.Gateway = netip.MustParseAddr("10.10.2.1") }},
		{"gateway is the network address", func(n *Network) { n.Gateway = netip.MustParseAddr("10.10.1.0") }},
		{"MTU too small", func(n *Network) { n.MTU = 67 }},
		{"encrypted without a WireGuard interface", func(n *Network) { n.Encrypted = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := good
			tc.change(&n)
			if _, err := d.normalize(n); !errors.Is(err, ErrInvalidNetwork) {
				t.Errorf("normalize = %v, want ErrInvalidNetwork", err)
			}
		})
	}
}

func TestNormalizeEncrypted(t *testing.T) {
	d, err := New(Config{Prefix: "sh", VTEP: netip.MustParseAddr("192.0.2.1"), WireGuardIf: "wg0"})
	if err != nil {
		t.Fatal(err)
	}
	n := network("e1", 4100, "10.10.1.0/24")
	n.Encrypted = true
	got, err := d.normalize(n)
	if err != nil || got.MTU != EncryptedDefaultMTU {
		t.Errorf("normalize = %+v, %v; want MTU %d", got, err, EncryptedDefaultMTU)
	}
	n.MTU = 1380
	if got, err := d.normalize(n); err != nil || got.MTU != 1380 {
		t.Errorf("normalize with MTU 1380 = %+v, %v", got, err)
	}
	n = network("e1", 4100, "169.254.0.0/16")
	n.Encrypted = true
	if _, err := d.normalize(n); !errors.Is(err, ErrInvalidNetwork) {
		t.Errorf("normalize of a subnet holding the uplink next hop = %v, want ErrInvalidNetwork", err)
	}
}

func TestDiffRoutes(t *testing.T) {
	ip := netip.MustParseAddr
	right := func(r netlink.Route) bool { return r.Protocol == routeProtocol }
	route := func(a string, ok bool) netlink.Route {
		r := netlink.Route{Dst: ipNet(netip.PrefixFrom(ip(a), 32))}
		if ok {
			r.Protocol = routeProtocol
		}
		return r
	}
	for _, tc := range []struct {
		name    string
		have    []netlink.Route
		want    []netip.Addr
		set     []netip.Addr
		deleted []string
	}{
		{name: "nothing to nothing"},
		{name: "add to empty", want: []netip.Addr{ip("10.0.0.1"), ip("10.0.0.2")}, set: []netip.Addr{ip("10.0.0.1"), ip("10.0.0.2")}},
		{name: "unchanged", have: []netlink.Route{route("10.0.0.1", true), route("10.0.0.2", true)},
			want: []netip.Addr{ip("10.0.0.2"), ip("10.0.0.1")}},
		{name: "remove one, the other untouched", have: []netlink.Route{route("10.0.0.1", true), route("10.0.0.2", true)},
			want: []netip.Addr{ip("10.0.0.1")}, deleted: []string{"10.0.0.2/32"}},
		{name: "wrong shape replaced", have: []netlink.Route{route("10.0.0.1", false)},
			want: []netip.Addr{ip("10.0.0.1")}, set: []netip.Addr{ip("10.0.0.1")}, deleted: []string{"10.0.0.1/32"}},
		{name: "duplicate dropped", have: []netlink.Route{route("10.0.0.1", true), route("10.0.0.1", true)},
			want: []netip.Addr{ip("10.0.0.1")}, deleted: []string{"10.0.0.1/32"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, del := diffRoutes(tc.have, right, tc.want)
			var deleted []string
			for _, r := range del {
				deleted = append(deleted, r.Dst.String())
			}
			if !slices.Equal(set, tc.set) || !slices.Equal(deleted, tc.deleted) {
				t.Errorf("diffRoutes = set %v, delete %v; want %v, %v", set, deleted, tc.set, tc.deleted)
			}
		})
	}
}

func TestValidateRoutedRemotes(t *testing.T) {
	gw := netip.MustParsePrefix("10.0.0.1/24")
	r := func(a string) Remote { return Remote{Addr: netip.MustParseAddr(a)} }
	for _, tc := range []struct {
		name string
		rs   []Remote
		ok   bool
	}{
		{"empty", nil, true},
		{"two, MAC and VTEP unset", []Remote{r("10.0.0.2"), r("10.0.0.254")}, true},
		{"4-in-6", []Remote{r("::ffff:10.0.0.2")}, true},
		{"outside the subnet", []Remote{r("10.0.1.2")}, false},
		{"the gateway", []Remote{r("10.0.0.1")}, false},
		{"the network address", []Remote{r("10.0.0.0")}, false},
		{"the broadcast address", []Remote{r("10.0.0.255")}, false},
		{"IPv6", []Remote{r("fd00::2")}, false},
		{"twice", []Remote{r("10.0.0.2"), r("10.0.0.2")}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := validateRoutedRemotes(tc.rs, gw)
			if tc.ok != (err == nil) {
				t.Fatalf("validateRoutedRemotes = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidRemote) {
				t.Errorf("error %v is not ErrInvalidRemote", err)
			}
		})
	}
}

func TestRoutedRules(t *testing.T) {
	d, err := New(Config{Prefix: "sh", VTEP: netip.MustParseAddr("192.0.2.1"), WireGuardIf: "shwg"})
	if err != nil {
		t.Fatal(err)
	}
	nets := []routedNet{
		{id: "a", uplink: "shu001004", subnet: netip.MustParsePrefix("10.0.4.0/24")},
		{id: "b", uplink: "shu001005", subnet: netip.MustParsePrefix("10.0.5.0/24")},
	}
	want := []string{
		"forward: accept shwg to shu001004 10.0.4.0/24",
		"forward: accept shu001004 to shwg 10.0.4.0/24",
		"forward: accept shwg to shu001005 10.0.5.0/24",
		"forward: accept shu001005 to shwg 10.0.5.0/24",
		"forward: drop other from shwg",
		"forward: drop other to shwg",
		"forward: drop other from shu*",
		"forward: drop other to shu*",
		"input: drop from shu* to the host",
	}
	if got := comments(d.routedRules(nets)); !slices.Equal(got, want) {
		t.Errorf("rules:\n  %q\nwant\n  %q", got, want)
	}
	// Without a WireGuard interface (a Config changed under existing
	// networks) nothing passes.
	d.cfg.WireGuardIf = ""
	if got := comments(d.routedRules(nets)); !slices.Equal(got, want[6:]) {
		t.Errorf("rules without WireGuard:\n  %q\nwant\n  %q", got, want[6:])
	}
}

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestDiffRemotes(t *testing.T) {
	ip := netip.MustParseAddr
	const m1, m2, m3 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
	v1, v2 := ip("192.0.2.1"), ip("192.0.2.2")
	r1 := Remote{Addr: ip("10.0.0.1"), MAC: mac(m1), VTEP: v1}
	r2 := Remote{Addr: ip("10.0.0.2"), MAC: mac(m2), VTEP: v2}
	n1 := neighEntry{IP: r1.Addr, MAC: m1, Permanent: true}
	n2 := neighEntry{IP: r2.Addr, MAC: m2, Permanent: true}
	f1, f2 := fdbEntry{MAC: m1, VTEP: v1}, fdbEntry{MAC: m2, VTEP: v2}
	for _, tc := range []struct {
		name      string
		haveNeigh []neighEntry
		haveFDB   []fdbEntry
		want      []Remote
		changes   remoteChanges
	}{
		{name: "nothing to nothing"},
		{
			name: "add to empty", want: []Remote{r1, r2},
			changes: remoteChanges{setFDB: []fdbEntry{f1, f2}, setNeigh: []neighEntry{n1, n2}},
		},
		{
			name: "unchanged", haveNeigh: []neighEntry{n1, n2}, haveFDB: []fdbEntry{f1, f2}, want: []Remote{r2, r1},
		},
		{
			name: "remove one, others untouched", haveNeigh: []neighEntry{n1, n2}, haveFDB: []fdbEntry{f1, f2},
			want:    []Remote{r1},
			changes: remoteChanges{delNeigh: []neighEntry{n2}, delFDB: []fdbEntry{f2}},
		},
		{
			name: "remove all", haveNeigh: []neighEntry{n1, n2}, haveFDB: []fdbEntry{f1, f2},
			changes: remoteChanges{delNeigh: []neighEntry{n1, n2}, delFDB: []fdbEntry{f1, f2}},
		},
		{
			name: "remote moved to another host", haveNeigh: []neighEntry{n1}, haveFDB: []fdbEntry{f1},
			want:    []Remote{{Addr: r1.Addr, MAC: r1.MAC, VTEP: v2}},
			changes: remoteChanges{setFDB: []fdbEntry{{MAC: m1, VTEP: v2}}, delFDB: []fdbEntry{f1}},
		},
		{
			name: "address got a new MAC", haveNeigh: []neighEntry{n1}, haveFDB: []fdbEntry{f1},
			want: []Remote{{Addr: r1.Addr, MAC: mac(m3), VTEP: v1}},
			changes: remoteChanges{
				setFDB:   []fdbEntry{{MAC: m3, VTEP: v1}},
				delFDB:   []fdbEntry{f1},
				setNeigh: []neighEntry{{IP: r1.Addr, MAC: m3, Permanent: true}},
			},
		},
		{
			name: "learned neighbour made permanent", haveNeigh: []neighEntry{{IP: r1.Addr, MAC: m1}}, haveFDB: []fdbEntry{f1},
			want:    []Remote{r1},
			changes: remoteChanges{setNeigh: []neighEntry{n1}},
		},
		{
			name: "extra destinations of a MAC dropped", haveNeigh: []neighEntry{n1},
			haveFDB: []fdbEntry{{MAC: m1, VTEP: v2}, f1},
			want:    []Remote{r1},
			changes: remoteChanges{delFDB: []fdbEntry{{MAC: m1, VTEP: v2}}},
		},
		{
			name: "stray default destination removed", haveNeigh: []neighEntry{n1},
			haveFDB: []fdbEntry{f1, {MAC: "00:00:00:00:00:00", VTEP: v2}},
			want:    []Remote{r1},
			changes: remoteChanges{delFDB: []fdbEntry{{MAC: "00:00:00:00:00:00", VTEP: v2}}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := diffRemotes(tc.haveNeigh, tc.haveFDB, tc.want)
			if !slices.Equal(got.delNeigh, tc.changes.delNeigh) || !slices.Equal(got.setFDB, tc.changes.setFDB) ||
				!slices.Equal(got.delFDB, tc.changes.delFDB) || !slices.Equal(got.setNeigh, tc.changes.setNeigh) {
				t.Errorf("diffRemotes =\n  %+v\nwant\n  %+v", got, tc.changes)
			}
		})
	}
}

func TestValidateRemotes(t *testing.T) {
	ip := netip.MustParseAddr
	vtep := ip("192.0.2.1")
	r := Remote{Addr: ip("10.0.0.1"), MAC: mac("02:00:00:00:00:01"), VTEP: ip("192.0.2.2")}
	with := func(f func(*Remote)) Remote { c := r; f(&c); return c }
	for _, tc := range []struct {
		name string
		rs   []Remote
		ok   bool
	}{
		{"empty", nil, true},
		{"one", []Remote{r}, true},
		{"same MAC twice behind one VTEP", []Remote{r, with(func(c *Remote) { c.Addr = ip("10.0.0.2") })}, true},
		{"address twice", []Remote{r, with(func(c *Remote) { c.MAC = mac("02:00:00:00:00:02") })}, false},
		{"MAC behind two VTEPs", []Remote{r, with(func(c *Remote) { c.Addr, c.VTEP = ip("10.0.0.2"), ip("192.0.2.3") })}, false},
		{"multicast MAC", []Remote{with(func(c *Remote) { c.MAC = mac("01:00:5e:00:00:01") })}, false},
		{"IPv6 VTEP", []Remote{with(func(c *Remote) { c.VTEP = ip("2001:db8::1") })}, false},
		{"no VTEP", []Remote{with(func(c *Remote) { c.VTEP = netip.Addr{} })}, false},
		{"IPv6 address", []Remote{with(func(c *Remote) { c.Addr = ip("fd00::1") })}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateRemotes(tc.rs, vtep)
			if tc.ok != (err == nil) {
				t.Fatalf("validateRemotes = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidRemote) {
				t.Errorf("error %v is not ErrInvalidRemote", err)
			}
		})
	}
}

func TestVNIElements(t *testing.T) {
	els := vniElements([]uint32{0x010203, 4100, 0x010203})
	if len(els) != 2 || !slices.Equal(els[0].Key, []byte{0x00, 0x10, 0x04}) || !slices.Equal(els[1].Key, []byte{1, 2, 3}) {
		t.Errorf("vniElements = %+v", els)
	}
}
