package vxlan

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

// Encrypted networks: routed at layer 3 over the host's WireGuard interface
// (see the package doc, "Encryption").

// routeProtocol marks the routes the driver adds (rtm_protocol, shown by
// `ip route` as "proto 83"), so that in the host netns it removes only
// routes it made. 83 is 0x53, "S", and not among iproute2's rt_protos.
const routeProtocol netlink.RouteProtocol = 83

// uplinkNextHop is the next hop each end of an uplink routes through: an
// onlink gateway with a permanent neighbour entry giving the other end's
// MAC. Neither end has an address, no ARP crosses the uplink, and the
// address exists only in the two neighbour tables, so it cannot clash with
// a real network; the kernel only requires it not to be a local address of
// the namespace. 169.254.0.0/16 is link-local (RFC 3927): the next hop is
// meaningful on its link only, which is what it is used for.
var uplinkNextHop = netip.AddrFrom4([4]byte{169, 254, 83, 1})

// Sysctls of the sandbox bridge, %s being its name.
const (
	// proxyARPFmt makes the bridge answer containers' ARP requests for a
	// remote endpoint (an address with a route out of the uplink) with its
	// own MAC.
	proxyARPFmt = "/proc/sys/net/ipv4/conf/%s/proxy_arp"
	// proxyDelayFmt is how long the kernel may hold a proxy answer to a
	// broadcast request: a random time up to this value, in 1/100 s
	// (default 80). Set to 0, it answers at once; by default every remote's
	// first packet would wait up to 0.8 s.
	proxyDelayFmt = "/proc/sys/net/ipv4/neigh/%s/proxy_delay"
)

// bridgeNFCall are br_netfilter's switches (present while the module is
// loaded, 1 in every new netns): bridged frames through the iptables,
// ip6tables and arptables hooks. Off in sandboxes, where no rule looks at
// bridged frames: measured with iperf3 between containers on two
// simulated hosts, the plain overlay went from 0.86 to 0.90-0.92 of the
// underlay with them off (BenchmarkOverlayIperf3).
var bridgeNFCall = []string{
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
	"/proc/sys/net/bridge/bridge-nf-call-arptables",
}

// sandboxSysctls is what a sandbox of network n needs: a plain network's
// sandbox only bridges (forwarding off, which also disables proxy ARP); an
// encrypted network's routes between its bridge and its uplink and answers
// for remote endpoints by proxy ARP at once.
func (d *Driver) sandboxSysctls(n Network) []netnsutil.Sysctl {
	br := d.bridgeName()
	var out []netnsutil.Sysctl
	if !n.Encrypted {
		out = []netnsutil.Sysctl{
			{Path: ipForward, Value: "0"},
			{Path: fmt.Sprintf(proxyARPFmt, br), Value: "0"},
		}
	} else {
		out = []netnsutil.Sysctl{
			{Path: ipForward, Value: "1"},
			{Path: fmt.Sprintf(proxyARPFmt, br), Value: "1"},
			{Path: fmt.Sprintf(proxyDelayFmt, br), Value: "0"},
		}
	}
	// Nothing in a sandbox filters: the host's br_netfilter would pass
	// every bridged frame through the IP hooks for nothing.
	if _, err := os.Stat(bridgeNFCall[0]); err == nil {
		for _, p := range bridgeNFCall {
			out = append(out, netnsutil.Sysctl{Path: p, Value: "0"})
		}
	}
	return out
}

// routedNet is an encrypted network as read back from the kernel.
type routedNet struct {
	id     string
	uplink string       // host end of its uplink
	index  int          // its ifindex in the host netns
	subnet netip.Prefix // from the sandbox bridge
}

// readRoutedLocked reads the host's encrypted networks back from the
// kernel: the uplinks in the host netns (name: VNI, alias: network id) that
// pair with the uplink of that network's sandbox, whose bridge gives the
// subnet; sorted by uplink name. Uplinks of this driver that do not qualify
// are returned as orphans.
func (d *Driver) readRoutedLocked(host *nsHandle) (nets []routedNet, orphans []netlink.Link, err error) {
	links, err := host.h.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("list links in host netns: %w", err)
	}
	for _, l := range links {
		if _, ok := d.uplinkVNI(l.Attrs().Name); !ok {
			continue
		}
		id := l.Attrs().Alias
		subnet, ok, err := d.uplinkSubnet(id, l)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			orphans = append(orphans, l)
			continue
		}
		nets = append(nets, routedNet{id: id, uplink: l.Attrs().Name, index: l.Attrs().Index, subnet: subnet})
	}
	slices.SortFunc(nets, func(a, b routedNet) int { return cmp.Compare(a.uplink, b.uplink) })
	return nets, orphans, nil
}

// uplinkSubnet returns the subnet of network id's sandbox bridge if hostEnd
// is the host end of that sandbox's uplink; ok is false if it is not, or id
// is not a valid id, or the sandbox, its bridge, the bridge's address or
// the uplink is missing.
func (d *Driver) uplinkSubnet(id string, hostEnd netlink.Link) (netip.Prefix, bool, error) {
	if !validID(id) {
		return netip.Prefix{}, false, nil
	}
	sb, _, gw, err := d.openNetworkLocked(id)
	if errors.Is(err, ErrNoNetwork) {
		return netip.Prefix{}, false, nil
	}
	if err != nil {
		return netip.Prefix{}, false, err
	}
	defer sb.Close()
	up, err := sb.h.LinkByName(d.uplinkSandboxName())
	if isNotFound(err) {
		return netip.Prefix{}, false, nil
	}
	if err != nil {
		return netip.Prefix{}, false, fmt.Errorf("look up uplink in sandbox of %s: %w", id, err)
	}
	return gw.Masked(), isPeer(up, hostEnd), nil
}

// checkRouted refuses (ErrInvalidNetwork) encrypted network n if another
// encrypted network has its VNI (and so its uplink's name), or if its subnet
// overlaps another encrypted network's or anything the host netns routes
// elsewhere: an address on any link but the driver's uplinks, or a route
// other than a default route, except the driver's own routes on the
// WireGuard interface. Encrypted networks share the host's routing table;
// an overlap would send one network's traffic into another's or off the
// host.
func (d *Driver) checkRouted(host *nsHandle, n Network) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %q: subnet %s overlaps %s", ErrInvalidNetwork, n.ID, n.Subnet, fmt.Sprintf(format, args...))
	}
	nets, _, err := d.readRoutedLocked(host)
	if err != nil {
		return err
	}
	for _, o := range nets {
		switch {
		case o.id == n.ID:
		case o.uplink == d.uplinkName(n.VNI):
			return fmt.Errorf("%w %q: VNI %d is used by encrypted network %q", ErrInvalidNetwork, n.ID, n.VNI, o.id)
		case o.subnet.Overlaps(n.Subnet):
			return bad("encrypted network %q (%s)", o.id, o.subnet)
		}
	}
	links, err := host.h.LinkList()
	if err != nil {
		return fmt.Errorf("list links in host netns: %w", err)
	}
	names := make(map[int]string, len(links))
	ours := make(map[int]bool)
	wg := -1
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
		if _, ok := d.uplinkVNI(l.Attrs().Name); ok {
			ours[l.Attrs().Index] = true
		}
		if l.Attrs().Name == d.cfg.WireGuardIf {
			wg = l.Attrs().Index
		}
	}
	addrs, err := host.h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses in host netns: %w", err)
	}
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if ok && !ours[a.LinkIndex] && p.Masked().Overlaps(n.Subnet) {
			return bad("address %s on %s", p, names[a.LinkIndex])
		}
	}
	routes, err := host.h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes in host netns: %w", err)
	}
	for _, r := range routes {
		p, ok := prefixOf(r.Dst)
		switch {
		case !ok || p.Bits() == 0, ours[r.LinkIndex],
			r.LinkIndex == wg && r.Protocol == routeProtocol:
			continue
		case p.Overlaps(n.Subnet):
			return bad("route %s dev %s in the host netns", p, names[r.LinkIndex])
		}
	}
	return nil
}

// ensureRouted builds what an encrypted network has beyond its bridge: no
// vxlan device, an uplink veth to the host netns with a next hop in each
// direction, the host's isolation table, the host's route for the subnet,
// and forwarding in the host netns. Routes to remote endpoints are
// SetRemotes'. Routes are added only once the isolation table covers the
// uplink.
func (d *Driver) ensureRouted(host, sb *nsHandle, n Network) error {
	if err := d.deleteVxlans(sb.h, n.ID, nil); err != nil {
		return err
	}
	up, hostUp, err := d.ensureUplink(host, sb, n)
	if err != nil {
		return err
	}
	if err := setNextHop(sb.h, up, hostUp.Attrs().HardwareAddr); err != nil {
		return fmt.Errorf("in sandbox: %w", err)
	}
	if err := setNextHop(host.h, hostUp, up.Attrs().HardwareAddr); err != nil {
		return fmt.Errorf("in host netns: %w", err)
	}
	// A changed subnet leaves remote routes outside it behind.
	if err := pruneRoutes(sb.h, up, func(r netlink.Route) bool {
		p, ok := prefixOf(r.Dst)
		return ok && p.Bits() == 32 && n.Subnet.Contains(p.Addr())
	}); err != nil {
		return fmt.Errorf("in sandbox: %w", err)
	}
	if err := d.syncHostLocked(host); err != nil {
		return err
	}
	if err := ensureSubnetRoute(host.h, hostUp, n.Subnet); err != nil {
		return err
	}
	// Left on when the last encrypted network goes: other software in the
	// namespace (overlay/bridge, for one) may rely on it.
	return netnsutil.SetSysctl(host.path, ipForward, "1")
}

// ensureUplink creates or repairs network n's uplink: a veth pair with
// <prefix>up in the sandbox and <prefix>u<VNI> (alias n.ID) in the host
// netns, both with the network's MTU and up. It returns the sandbox end and
// the host end. A host end of this name that is another existing
// network's is refused (ErrInvalidNetwork: the VNI is taken); a stale one is
// replaced.
func (d *Driver) ensureUplink(host, sb *nsHandle, n Network) (netlink.Link, netlink.Link, error) {
	sbName, hostName := d.uplinkSandboxName(), d.uplinkName(n.VNI)
	up, serr := sb.h.LinkByName(sbName)
	if serr != nil && !isNotFound(serr) {
		return nil, nil, fmt.Errorf("look up uplink %s in sandbox: %w", sbName, serr)
	}
	hostUp, herr := host.h.LinkByName(hostName)
	if herr != nil && !isNotFound(herr) {
		return nil, nil, fmt.Errorf("look up uplink %s in host netns: %w", hostName, herr)
	}
	if herr == nil {
		if _, ok := hostUp.(*netlink.Veth); !ok {
			return nil, nil, fmt.Errorf("%w: %s in the host netns is a %s, not an uplink", ErrNameTaken, hostName, hostUp.Type())
		}
		// Another network's, unless stale (checkRouted has refused this
		// already; checked again in case of a leftover). An empty alias is a
		// pair whose creation was cut short.
		if owner := hostUp.Attrs().Alias; owner != n.ID && owner != "" {
			if _, live, err := d.uplinkSubnet(owner, hostUp); err != nil {
				return nil, nil, err
			} else if live {
				return nil, nil, fmt.Errorf("%w %q: VNI %d is used by encrypted network %q", ErrInvalidNetwork, n.ID, n.VNI, owner)
			}
		}
	}
	if serr == nil && herr == nil && isPeer(up, hostUp) {
		return up, hostUp, d.uplinkSettings(host, sb, up, hostUp, n)
	}
	// Whatever is left of another pair goes; deleting either end of a veth
	// deletes both.
	if serr == nil {
		if err := sb.h.LinkDel(up); err != nil && !isNotFound(err) {
			return nil, nil, fmt.Errorf("delete stale uplink %s in sandbox: %w", sbName, err)
		}
	}
	if herr == nil {
		if err := host.h.LinkDel(hostUp); err != nil && !isNotFound(err) {
			return nil, nil, fmt.Errorf("delete stale uplink %s in host netns: %w", hostName, err)
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = sbName
	attrs.MTU = n.MTU
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: hostName, PeerMTU: uint32(n.MTU), PeerNamespace: netlink.NsFd(host.ns)}
	if err := sb.h.LinkAdd(veth); err != nil {
		return nil, nil, fmt.Errorf("create uplink %s (peer %s in host netns): %w", sbName, hostName, err)
	}
	up, err := sb.h.LinkByName(sbName)
	if err != nil {
		return nil, nil, fmt.Errorf("look up new uplink %s: %w", sbName, err)
	}
	if hostUp, err = host.h.LinkByName(hostName); err != nil {
		return nil, nil, fmt.Errorf("look up new uplink %s in host netns: %w", hostName, err)
	}
	d.log.Info("created uplink", "network", n.ID, "link", hostName)
	return up, hostUp, d.uplinkSettings(host, sb, up, hostUp, n)
}

// uplinkSettings repairs an uplink pair: alias, MTU, both ends up.
func (d *Driver) uplinkSettings(host, sb *nsHandle, up, hostUp netlink.Link, n Network) error {
	if hostUp.Attrs().Alias != n.ID {
		if err := host.h.LinkSetAlias(hostUp, n.ID); err != nil {
			return fmt.Errorf("set alias of uplink %s: %w", hostUp.Attrs().Name, err)
		}
	}
	for _, e := range []struct {
		ns *nsHandle
		l  netlink.Link
	}{{sb, up}, {host, hostUp}} {
		if e.l.Attrs().MTU != n.MTU {
			if err := e.ns.h.LinkSetMTU(e.l, n.MTU); err != nil {
				return fmt.Errorf("set uplink %s MTU %d: %w", e.l.Attrs().Name, n.MTU, err)
			}
		}
		if err := e.ns.h.LinkSetUp(e.l); err != nil {
			return fmt.Errorf("bring uplink %s up: %w", e.l.Attrs().Name, err)
		}
	}
	return nil
}

// setNextHop makes uplinkNextHop resolve to mac on link, permanently.
func setNextHop(h *netlink.Handle, link netlink.Link, mac net.HardwareAddr) error {
	idx := link.Attrs().Index
	neighs, err := h.NeighList(idx, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", link.Attrs().Name, err)
	}
	for _, n := range neighs {
		if addrOf(n.IP) == uplinkNextHop && n.State == netlink.NUD_PERMANENT && n.HardwareAddr.String() == mac.String() {
			return nil
		}
	}
	if err := h.NeighSet(&netlink.Neigh{
		LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: uplinkNextHop.AsSlice(), HardwareAddr: mac,
	}); err != nil {
		return fmt.Errorf("set next hop %s at %s on %s: %w", uplinkNextHop, mac, link.Attrs().Name, err)
	}
	return nil
}

// viaUplink is the route to dst out of an uplink end: through the next hop,
// which needs no address on the link ("onlink").
func viaUplink(link netlink.Link, dst netip.Prefix) *netlink.Route {
	return &netlink.Route{
		LinkIndex: link.Attrs().Index, Dst: ipNet(dst), Gw: uplinkNextHop.AsSlice(),
		Flags: int(netlink.FLAG_ONLINK), Protocol: routeProtocol,
	}
}

// isViaUplink reports whether r has viaUplink's shape.
func isViaUplink(r netlink.Route) bool {
	return addrOf(r.Gw) == uplinkNextHop && r.Flags&int(netlink.FLAG_ONLINK) != 0 && r.Protocol == routeProtocol
}

// ensureSubnetRoute makes "subnet via <next hop> dev <host end> onlink" the
// only IPv4 route on the uplink's host end.
func ensureSubnetRoute(h *netlink.Handle, hostUp netlink.Link, subnet netip.Prefix) error {
	routes, err := h.RouteList(hostUp, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes on %s: %w", hostUp.Attrs().Name, err)
	}
	found := false
	for _, r := range routes {
		if p, ok := prefixOf(r.Dst); ok && p == subnet && isViaUplink(r) {
			found = true
			continue
		}
		if err := h.RouteDel(&r); err != nil && !isNotFound(err) && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete stale route %s on %s: %w", r.Dst, hostUp.Attrs().Name, err)
		}
	}
	if found {
		return nil
	}
	if err := h.RouteReplace(viaUplink(hostUp, subnet)); err != nil {
		return fmt.Errorf("route %s to uplink %s: %w", subnet, hostUp.Attrs().Name, err)
	}
	return nil
}

// pruneRoutes deletes the IPv4 routes on link that keep rejects.
func pruneRoutes(h *netlink.Handle, link netlink.Link, keep func(netlink.Route) bool) error {
	routes, err := h.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes on %s: %w", link.Attrs().Name, err)
	}
	for _, r := range routes {
		if keep(r) {
			continue
		}
		if err := h.RouteDel(&r); err != nil && !isNotFound(err) && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete stale route %s on %s: %w", r.Dst, link.Attrs().Name, err)
		}
	}
	return nil
}

// deleteUplink deletes the sandbox's uplink, if any (with its host end, the
// host's subnet route and both next hops); removed reports whether there
// was one.
func (d *Driver) deleteUplink(h *netlink.Handle) (removed bool, err error) {
	l, err := h.LinkByName(d.uplinkSandboxName())
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up uplink in sandbox: %w", err)
	}
	if err := h.LinkDel(l); err != nil && !isNotFound(err) {
		return false, fmt.Errorf("delete uplink %s: %w", l.Attrs().Name, err)
	}
	return true, nil
}

// syncHostLocked brings the host netns in line with the encrypted networks
// read back from the kernel: the isolation table (see routedTable) and the
// driver's routes on the WireGuard interface, of which those outside every
// encrypted network's subnet are deleted (left by a removed network, or by
// a subnet change).
func (d *Driver) syncHostLocked(host *nsHandle) error {
	nets, _, err := d.readRoutedLocked(host)
	if err != nil {
		return err
	}
	if err := d.syncRoutedTable(host, nets); err != nil {
		return err
	}
	if d.cfg.WireGuardIf == "" {
		return nil
	}
	wg, err := host.h.LinkByName(d.cfg.WireGuardIf)
	if isNotFound(err) {
		return nil // its routes went with it
	}
	if err != nil {
		return fmt.Errorf("look up WireGuard interface %s: %w", d.cfg.WireGuardIf, err)
	}
	return pruneRoutes(host.h, wg, func(r netlink.Route) bool {
		if r.Protocol != routeProtocol {
			return true // not ours
		}
		p, ok := prefixOf(r.Dst)
		return ok && slices.ContainsFunc(nets, func(n routedNet) bool { return n.subnet.Contains(p.Addr()) })
	})
}

// removeOrphanUplinks deletes uplinks in the host netns that belong to no
// network in want (by id, with the VNI in their name), or to no existing
// sandbox.
func (d *Driver) removeOrphanUplinks(host *nsHandle, want map[string]Network) error {
	nets, orphans, err := d.readRoutedLocked(host)
	if err != nil {
		return err
	}
	byName := make(map[string]bool, len(want))
	for _, n := range want {
		if n.Encrypted {
			byName[n.ID+" "+d.uplinkName(n.VNI)] = true
		}
	}
	for _, n := range nets {
		if byName[n.id+" "+n.uplink] {
			continue
		}
		l, err := host.h.LinkByIndex(n.index)
		if err != nil {
			if isNotFound(err) {
				continue
			}
			return fmt.Errorf("look up uplink %s: %w", n.uplink, err)
		}
		orphans = append(orphans, l)
	}
	for _, l := range orphans {
		if err := host.h.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete leftover uplink %s in host netns: %w", l.Attrs().Name, err)
		}
		d.log.Info("deleted leftover uplink in host netns", "link", l.Attrs().Name, "network", l.Attrs().Alias)
	}
	return nil
}
