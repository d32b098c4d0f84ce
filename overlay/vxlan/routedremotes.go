package vxlan

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeChanges is what SetRemotes does to an encrypted network's routes, in
// field order: removed remotes stop being routed in the sandbox first (so
// its proxy ARP stops answering for them), then in the host netns; new
// remotes are routed to WireGuard in the host netns before the sandbox
// sends them anything.
type routeChanges struct {
	delSandbox []netlink.Route
	delHost    []netlink.Route
	setHost    []netip.Addr
	setSandbox []netip.Addr
}

func (c routeChanges) empty() bool {
	return len(c.delSandbox)+len(c.delHost)+len(c.setHost)+len(c.setSandbox) == 0
}

// diffRoutes compares the routes read back (have, all /32s of the subnet,
// the driver's) with the addresses wanted: a route of the right shape
// (right) to a wanted address is kept, untouched; every other route is
// deleted; a wanted address without a kept route gets one. Deletions come
// first, so a replaced route of the wrong shape is never deleted after its
// replacement is written.
func diffRoutes(have []netlink.Route, right func(netlink.Route) bool, want []netip.Addr) (set []netip.Addr, del []netlink.Route) {
	wanted := make(map[netip.Addr]bool, len(want))
	for _, a := range want {
		wanted[a] = true
	}
	kept := make(map[netip.Addr]bool, len(have))
	for _, r := range have {
		p, _ := prefixOf(r.Dst)
		if a := p.Addr(); wanted[a] && !kept[a] && right(r) {
			kept[a] = true
			continue
		}
		del = append(del, r)
	}
	for _, a := range want {
		if !kept[a] {
			set = append(set, a)
		}
	}
	return set, del
}

// validateRoutedRemotes checks an encrypted network's remotes against its
// gateway prefix (the bridge's address) and returns their addresses: IPv4
// host addresses of the subnet, not the gateway, each listed once.
func validateRoutedRemotes(want []Remote, gw netip.Prefix) ([]netip.Addr, error) {
	subnet := gw.Masked()
	addrs := make([]netip.Addr, 0, len(want))
	seen := make(map[netip.Addr]bool, len(want))
	for _, r := range want {
		a := r.Addr.Unmap()
		switch {
		case !a.Is4():
			return nil, fmt.Errorf("%w: address %s is not IPv4", ErrInvalidRemote, r.Addr)
		case !subnet.Contains(a) || a == subnet.Addr() || a == subnetBroadcast(subnet):
			return nil, fmt.Errorf("%w: address %s is not a host address of subnet %s", ErrInvalidRemote, a, subnet)
		case a == gw.Addr():
			return nil, fmt.Errorf("%w: address %s is the gateway's", ErrInvalidRemote, a)
		case seen[a]:
			return nil, fmt.Errorf("%w: address %s listed twice", ErrInvalidRemote, a)
		}
		seen[a] = true
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// hostRoute is the host netns's route to remote endpoint a of an encrypted
// network: straight into the WireGuard interface, whose peers' AllowedIPs
// pick the host.
func hostRoute(wg netlink.Link, a netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: wg.Attrs().Index, Dst: ipNet(netip.PrefixFrom(a, 32)),
		Scope: netlink.SCOPE_LINK, Protocol: routeProtocol,
	}
}

func isHostRoute(r netlink.Route) bool {
	return r.Gw == nil && r.Scope == netlink.SCOPE_LINK && r.Protocol == routeProtocol
}

// setRoutedRemotes is SetRemotes on an encrypted network; up is the
// sandbox's uplink end and gw the bridge's address.
func (d *Driver) setRoutedRemotes(sb *nsHandle, up netlink.Link, gw netip.Prefix, networkID string, want []Remote) error {
	addrs, err := validateRoutedRemotes(want, gw)
	if err != nil {
		return err
	}
	if d.cfg.WireGuardIf == "" {
		return fmt.Errorf("%w: encrypted network, and the driver has no WireGuard interface", ErrInvalidConfig)
	}
	subnet := gw.Masked()
	inSubnet := func(r netlink.Route) bool {
		p, ok := prefixOf(r.Dst)
		return ok && p.Bits() == 32 && subnet.Contains(p.Addr())
	}
	host, err := openNS(d.hostNS)
	if err != nil {
		return err
	}
	defer host.Close()
	wg, err := host.h.LinkByName(d.cfg.WireGuardIf)
	if err != nil && (!isNotFound(err) || len(addrs) > 0) {
		return fmt.Errorf("look up WireGuard interface %s in host netns: %w", d.cfg.WireGuardIf, err)
	}
	var haveHost []netlink.Route
	if wg != nil {
		rs, err := host.h.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{LinkIndex: wg.Attrs().Index, Protocol: routeProtocol},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return fmt.Errorf("list routes on %s: %w", d.cfg.WireGuardIf, err)
		}
		for _, r := range rs {
			if inSubnet(r) {
				haveHost = append(haveHost, r)
			}
		}
	}
	rs, err := sb.h.RouteList(up, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes on uplink in sandbox: %w", err)
	}
	var haveSandbox []netlink.Route
	for _, r := range rs {
		if inSubnet(r) {
			haveSandbox = append(haveSandbox, r)
		}
	}
	var c routeChanges
	c.setHost, c.delHost = diffRoutes(haveHost, isHostRoute, addrs)
	c.setSandbox, c.delSandbox = diffRoutes(haveSandbox, isViaUplink, addrs)
	if c.empty() {
		return nil
	}
	if err := applyRoutes(host.h, sb.h, wg, up, c); err != nil {
		return err
	}
	d.log.Debug("remotes updated", "network", networkID, "remotes", len(addrs),
		"host_set", len(c.setHost), "host_deleted", len(c.delHost),
		"sandbox_set", len(c.setSandbox), "sandbox_deleted", len(c.delSandbox))
	return nil
}

// applyRoutes writes c: host routes through hostH on wg, sandbox routes
// through sbH on up. Deleting what is already gone is fine; the first other
// failure stops it, and the next SetRemotes, reading the kernel again,
// completes the work.
func applyRoutes(hostH, sbH *netlink.Handle, wg, up netlink.Link, c routeChanges) error {
	gone := func(err error) bool { return err == nil || errors.Is(err, unix.ESRCH) || isNotFound(err) }
	for _, r := range c.delSandbox {
		if err := sbH.RouteDel(&r); !gone(err) {
			return fmt.Errorf("delete sandbox route %s: %w", r.Dst, err)
		}
	}
	for _, r := range c.delHost {
		if err := hostH.RouteDel(&r); !gone(err) {
			return fmt.Errorf("delete host route %s: %w", r.Dst, err)
		}
	}
	for _, a := range c.setHost {
		if err := hostH.RouteReplace(hostRoute(wg, a)); err != nil {
			return fmt.Errorf("route %s to %s in host netns: %w", a, wg.Attrs().Name, err)
		}
	}
	for _, a := range c.setSandbox {
		if err := sbH.RouteReplace(viaUplink(up, netip.PrefixFrom(a, 32))); err != nil {
			return fmt.Errorf("route %s to the uplink in sandbox: %w", a, err)
		}
	}
	return nil
}
