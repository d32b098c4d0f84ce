package vxlan

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

// Attach connects a container to network networkID, creating or repairing:
// a veth pair whose sandbox end (named from ep.ID, alias ep.ID) is a port of
// the sandbox bridge and whose other end is ifName in the container's netns
// (containerNetNS, a path), with ep.MAC, ep.Addr at the subnet's prefix
// length as its only IPv4 address and the network's MTU, up. The only route
// it adds is the subnet's own (the address's connected route): the default
// route is the agent's, normally via the node-local bridge for egress.
//
// Attaching the same endpoint again repairs it and keeps the pair (and the
// container's open connections). A pair whose container end is gone or sits
// elsewhere (the container got a new netns) is replaced. An ifName that exists
// in the container and is not this endpoint's is refused with ErrNameTaken.
// The network must exist (ErrNoNetwork). When Attach returns, both ends are
// operationally up, so the container's first packets are not lost (it waits
// up to a second for the kernel to process the new carrier).
func (d *Driver) Attach(ctx context.Context, networkID string, ep Endpoint, containerNetNS, ifName string) error {
	if err := validateAttach(networkID, ep, containerNetNS, ifName); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("attach %s to network %s: %w", ep.ID, networkID, err)
	}
	if err := d.attachLocked(ctx, networkID, ep, containerNetNS, ifName); err != nil {
		return fmt.Errorf("attach %s to network %s: %w", ep.ID, networkID, err)
	}
	return nil
}

func validateAttach(networkID string, ep Endpoint, containerNetNS, ifName string) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("attach %s to network %s: %w: %s", ep.ID, networkID, ErrInvalidEndpoint, fmt.Sprintf(format, args...))
	}
	switch {
	case !validID(networkID):
		return bad("network id %q", networkID)
	case !validID(ep.ID):
		return bad("endpoint id must be 1-%d characters of [A-Za-z0-9_.-], not starting with '.' or '-'", maxIDLen)
	case !ep.Addr.IsValid() || !ep.Addr.Addr().Is4():
		return bad("address %s is not IPv4", ep.Addr)
	case len(ep.MAC) != 6 || ep.MAC[0]&1 != 0 || slices.Equal(ep.MAC, make([]byte, 6)):
		return bad("MAC %s is not a unicast Ethernet address", ep.MAC)
	case containerNetNS == "":
		return bad("container netns path is empty")
	case !validIfName(ifName):
		return bad("interface name %q must be 1-%d bytes without '/', ':' or spaces", ifName, maxIfNameLen)
	}
	return nil
}

func validIfName(s string) bool {
	if s == "" || len(s) > maxIfNameLen || s == "." || s == ".." {
		return false
	}
	for _, c := range []byte(s) {
		if c == '/' || c == ':' || c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

func (d *Driver) attachLocked(ctx context.Context, networkID string, ep Endpoint, containerNetNS, ifName string) error {
	sb, br, gw, err := d.openNetworkLocked(networkID)
	if err != nil {
		return err
	}
	defer sb.Close()
	subnet, addr := gw.Masked(), ep.Addr.Addr()
	if !subnet.Contains(addr) || addr == subnet.Addr() || addr == subnetBroadcast(subnet) {
		return fmt.Errorf("%w: address %s is not a host address of subnet %s", ErrInvalidEndpoint, addr, subnet)
	}
	if addr == gw.Addr() {
		return fmt.Errorf("%w: address %s is the gateway's", ErrInvalidEndpoint, addr)
	}
	mtu := br.Attrs().MTU
	cn, err := openNS(containerNetNS)
	if err != nil {
		return err
	}
	defer cn.Close()
	if err := ctx.Err(); err != nil {
		return err
	}
	outer, created, err := d.ensureVeth(sb, cn, br, ep, ifName, mtu)
	if outer == nil {
		return err
	}
	if err == nil {
		err = configureContainerEnd(cn, ifName, netip.PrefixFrom(addr, subnet.Bits()), ep, mtu)
	}
	if err == nil {
		// Sandbox end last: the port forwards once the container can answer.
		if err = sb.h.LinkSetUp(outer); err != nil {
			err = fmt.Errorf("bring %s up: %w", outer.Attrs().Name, err)
		}
	}
	if err != nil && created {
		// Leave nothing half made behind: deleting one end deletes both.
		if derr := sb.h.LinkDel(outer); derr != nil && !isNotFound(derr) {
			err = errors.Join(err, fmt.Errorf("roll back veth %s: %w", outer.Attrs().Name, derr))
		}
	}
	if err == nil {
		d.waitOperUp(ctx, []*nsHandle{cn, sb}, []string{ifName, outer.Attrs().Name})
	}
	if err == nil && created {
		d.log.Info("attached endpoint", "network", networkID, "endpoint", ep.ID, "addr", addr, "veth", outer.Attrs().Name)
	}
	return err
}

// waitOperUp waits until the links (names[i] in nss[i]) are operationally
// up, for at most operUpTimeout. A veth's carrier change is processed
// asynchronously (the kernel's linkwatch work, which also activates the
// queue and enables the bridge port); measured here, a container that sent
// right after Attach lost its first packet one time in three and waited a
// second for TCP to retry. Waiting here lets Attach's contract be "traffic flows when it
// returns". Running out of time is logged, not an error: the link comes up
// on its own.
func (d *Driver) waitOperUp(ctx context.Context, nss []*nsHandle, names []string) {
	deadline := time.Now().Add(operUpTimeout)
	for i, name := range names {
		for {
			l, err := nss[i].h.LinkByName(name)
			if err == nil && l.Attrs().OperState == netlink.OperUp {
				break
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				d.log.Warn("link not operationally up yet", "link", name, "netns", nss[i].path, "err", err)
				return
			}
			time.Sleep(operUpPoll)
		}
	}
}

// openNetworkLocked opens network id's sandbox and returns it with its
// bridge and the bridge's address (the gateway, with the subnet's length).
// ErrNoNetwork if any is missing. The caller closes the sandbox.
func (d *Driver) openNetworkLocked(id string) (*nsHandle, netlink.Link, netip.Prefix, error) {
	path := d.sandboxPath(id)
	ok, err := netnsutil.IsNetNSFile(path)
	if err != nil {
		return nil, nil, netip.Prefix{}, err
	}
	if !ok {
		return nil, nil, netip.Prefix{}, fmt.Errorf("%w: no sandbox %s", ErrNoNetwork, path)
	}
	sb, err := openNS(path)
	if err != nil {
		return nil, nil, netip.Prefix{}, err
	}
	br, err := sb.h.LinkByName(d.bridgeName())
	if err != nil {
		sb.Close()
		if isNotFound(err) {
			return nil, nil, netip.Prefix{}, fmt.Errorf("%w: no bridge in sandbox %s", ErrNoNetwork, path)
		}
		return nil, nil, netip.Prefix{}, fmt.Errorf("look up bridge in sandbox: %w", err)
	}
	addrs, err := sb.h.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		sb.Close()
		return nil, nil, netip.Prefix{}, fmt.Errorf("list bridge addresses: %w", err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok {
			return sb, br, p, nil
		}
	}
	sb.Close()
	return nil, nil, netip.Prefix{}, fmt.Errorf("%w: bridge in sandbox %s has no address", ErrNoNetwork, path)
}

func subnetBroadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ensureVeth returns the sandbox end of ep's veth pair, creating the pair if
// it does not exist as a pair between the sandbox and ifName in the
// container. created reports a new pair.
func (d *Driver) ensureVeth(sb, cn *nsHandle, br netlink.Link, ep Endpoint, ifName string, mtu int) (outer netlink.Link, created bool, err error) {
	name := d.vethName(ep.ID)
	outer, oerr := sb.h.LinkByName(name)
	if oerr != nil && !isNotFound(oerr) {
		return nil, false, fmt.Errorf("look up veth %s: %w", name, oerr)
	}
	// An empty alias is a pair whose creation was cut short before its
	// alias was set: this endpoint's, since the name is.
	if oerr == nil && outer.Attrs().Alias != ep.ID && outer.Attrs().Alias != "" {
		return nil, false, fmt.Errorf("%w: veth %s in the sandbox belongs to endpoint %q", ErrNameTaken, name, outer.Attrs().Alias)
	}
	inner, ierr := cn.h.LinkByName(ifName)
	if ierr != nil && !isNotFound(ierr) {
		return nil, false, fmt.Errorf("look up %s in %s: %w", ifName, cn.path, ierr)
	}
	if oerr == nil && ierr == nil && isPeer(outer, inner) {
		return outer, false, d.portSettings(sb, outer, br, ep.ID, mtu)
	}
	if ierr == nil {
		return nil, false, fmt.Errorf("%w: %s exists in %s and is not endpoint %s's", ErrNameTaken, ifName, cn.path, ep.ID)
	}
	if oerr == nil {
		// The container end is gone or elsewhere (a new container netns).
		if err := sb.h.LinkDel(outer); err != nil && !isNotFound(err) {
			return nil, false, fmt.Errorf("delete stale veth %s: %w", name, err)
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = mtu
	attrs.MasterIndex = br.Attrs().Index
	veth := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         ifName,
		PeerHardwareAddr: ep.MAC,
		PeerMTU:          uint32(mtu),
		PeerNamespace:    netlink.NsFd(cn.ns),
	}
	if err := sb.h.LinkAdd(veth); err != nil {
		return nil, false, fmt.Errorf("create veth %s (peer %s in %s): %w", name, ifName, cn.path, err)
	}
	if outer, err = sb.h.LinkByName(name); err != nil {
		return nil, false, fmt.Errorf("look up new veth %s: %w", name, err)
	}
	// The kernel ignores an alias in the creating request.
	if err := sb.h.LinkSetAlias(outer, ep.ID); err != nil {
		return outer, true, fmt.Errorf("set alias of veth %s: %w", name, err)
	}
	return outer, true, nil
}

// isPeer reports whether outer (in the sandbox) and inner (in the container)
// are the two ends of one veth pair: each one's link index names the other.
func isPeer(outer, inner netlink.Link) bool {
	_, ok1 := outer.(*netlink.Veth)
	_, ok2 := inner.(*netlink.Veth)
	return ok1 && ok2 &&
		outer.Attrs().ParentIndex == inner.Attrs().Index &&
		inner.Attrs().ParentIndex == outer.Attrs().Index
}

// portSettings repairs an existing sandbox end: alias, MTU and bridge
// membership.
func (d *Driver) portSettings(sb *nsHandle, outer, br netlink.Link, id string, mtu int) error {
	name := outer.Attrs().Name
	if outer.Attrs().Alias != id {
		if err := sb.h.LinkSetAlias(outer, id); err != nil {
			return fmt.Errorf("set alias of %s: %w", name, err)
		}
	}
	if outer.Attrs().MTU != mtu {
		if err := sb.h.LinkSetMTU(outer, mtu); err != nil {
			return fmt.Errorf("set %s MTU %d: %w", name, mtu, err)
		}
	}
	if outer.Attrs().MasterIndex != br.Attrs().Index {
		if err := sb.h.LinkSetMaster(outer, br); err != nil {
			return fmt.Errorf("add %s to bridge: %w", name, err)
		}
	}
	return nil
}

// configureContainerEnd sets ifName's MTU, MAC and only address, and brings
// it up.
func configureContainerEnd(cn *nsHandle, ifName string, addr netip.Prefix, ep Endpoint, mtu int) error {
	l, err := cn.h.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", ifName, cn.path, err)
	}
	if l.Attrs().MTU != mtu {
		if err := cn.h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set %s MTU %d in %s: %w", ifName, mtu, cn.path, err)
		}
	}
	if l.Attrs().HardwareAddr.String() != ep.MAC.String() {
		if err := cn.h.LinkSetHardwareAddr(l, ep.MAC); err != nil {
			return fmt.Errorf("set %s MAC %s in %s: %w", ifName, ep.MAC, cn.path, err)
		}
	}
	if err := setOnlyAddr(cn.h, l, addr); err != nil {
		return fmt.Errorf("in %s: %w", cn.path, err)
	}
	if err := cn.h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring %s up in %s: %w", ifName, cn.path, err)
	}
	return nil
}

// Detach removes endpoint endpointID from network networkID: deleting the
// sandbox end of its veth deletes the container end too. Detaching an
// endpoint or from a network that does not exist is not an error.
func (d *Driver) Detach(ctx context.Context, networkID, endpointID string) error {
	if !validID(networkID) || !validID(endpointID) {
		return fmt.Errorf("detach %q from network %q: %w", endpointID, networkID, ErrInvalidEndpoint)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("detach %s from network %s: %w", endpointID, networkID, err)
	}
	path := d.sandboxPath(networkID)
	ok, err := netnsutil.IsNetNSFile(path)
	if err != nil {
		return fmt.Errorf("detach %s from network %s: %w", endpointID, networkID, err)
	}
	if !ok {
		return nil
	}
	sb, err := openNS(path)
	if err != nil {
		return fmt.Errorf("detach %s from network %s: %w", endpointID, networkID, err)
	}
	defer sb.Close()
	name := d.vethName(endpointID)
	l, err := sb.h.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("detach %s from network %s: look up veth %s: %w", endpointID, networkID, name, err)
	}
	if l.Attrs().Alias != endpointID {
		return nil // another endpoint's, whose id hashes alike
	}
	if err := sb.h.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("detach %s from network %s: delete veth %s: %w", endpointID, networkID, name, err)
	}
	d.log.Info("detached endpoint", "network", networkID, "endpoint", endpointID)
	return nil
}

// Endpoints lists, sorted, the ids of the endpoints attached to network
// networkID, read back from the sandbox's veths (their alias): after a
// restart, what the caller may need to detach. It returns ErrNoNetwork if
// the network does not exist.
func (d *Driver) Endpoints(ctx context.Context, networkID string) ([]string, error) {
	if !validID(networkID) {
		return nil, fmt.Errorf("list endpoints of network %q: %w", networkID, ErrInvalidNetwork)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints of network %s: %w", networkID, err)
	}
	sb, _, _, err := d.openNetworkLocked(networkID)
	if err != nil {
		return nil, fmt.Errorf("list endpoints of network %s: %w", networkID, err)
	}
	defer sb.Close()
	links, err := sb.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list endpoints of network %s: %w", networkID, err)
	}
	var ids []string
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok && d.isVethName(l.Attrs().Name) && validID(l.Attrs().Alias) {
			ids = append(ids, l.Attrs().Alias)
		}
	}
	slices.Sort(ids)
	return ids, nil
}
