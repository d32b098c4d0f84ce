package vxlan

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"
)

// ipForward is the sysctl that must stay 0 in a sandbox: a sandbox only
// bridges, and a sandbox that routed would let a container reach past its
// network through the gateway address.
const ipForward = "/proc/sys/net/ipv4/ip_forward"

// EnsureNetwork creates or repairs network n's sandbox: a netns pinned at
// SandboxPath(n.ID) with IP forwarding off, holding the bridge (gateway
// address, a fixed MAC derived from the gateway, MTU, up) and the vxlan
// device (VNI, port, local VTEP, no learning, proxy ARP, MTU, on the bridge,
// up). The vxlan is created in the host netns and then moved, so its UDP
// socket stays on the underlay.
//
// It is idempotent and keeps existing endpoints and remotes working, with one
// exception: a vxlan device whose VNI, port or VTEP differs from n is
// replaced, and its remotes with it; callers always follow EnsureNetwork with
// SetRemotes. A changed MTU reaches the sandbox ends of existing veths at
// once and the container ends at their next Attach.
func (d *Driver) EnsureNetwork(ctx context.Context, n Network) error {
	n, err := d.normalize(n)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ensure network %s: %w", n.ID, err)
	}
	if err := d.ensureNetworkLocked(ctx, n); err != nil {
		return fmt.Errorf("ensure network %s: %w", n.ID, err)
	}
	return nil
}

func (d *Driver) ensureNetworkLocked(ctx context.Context, n Network) error {
	path := d.sandboxPath(n.ID)
	if err := createNetNS(path); err != nil {
		return err
	}
	// New namespaces start with forwarding off (PLATFORM.md); enforce it in
	// case someone turned it on.
	if err := setSysctl(path, ipForward, "0"); err != nil {
		return err
	}
	sb, err := openNS(path)
	if err != nil {
		return err
	}
	defer sb.Close()
	br, err := d.ensureBridge(sb.h, n)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.ensureVxlan(sb, br, n); err != nil {
		return err
	}
	if err := d.syncPortMTUs(sb.h, br, n.MTU); err != nil {
		return err
	}
	d.log.Debug("network ensured", "network", n.ID, "vni", n.VNI, "subnet", n.Subnet, "vtep", n.VTEP, "mtu", n.MTU)
	return nil
}

// ensureBridge creates the sandbox bridge or brings it to the desired state.
func (d *Driver) ensureBridge(h *netlink.Handle, n Network) (netlink.Link, error) {
	name := d.bridgeName()
	mac := macFor(n.Gateway)
	link, err := h.LinkByName(name)
	switch {
	case isNotFound(err):
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.MTU = n.MTU
		attrs.HardwareAddr = mac
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("look up new bridge %s: %w", name, err)
		}
	case err != nil:
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		// Only Shoal creates links in a sandbox; a non-bridge here is ours
		// from a broken run.
		if err := h.LinkDel(link); err != nil {
			return nil, fmt.Errorf("delete non-bridge %s (%s): %w", name, link.Type(), err)
		}
		return d.ensureBridge(h, n)
	}
	// An MTU set explicitly sticks; left alone, a bridge follows its ports.
	if link.Attrs().MTU != n.MTU {
		if err := h.LinkSetMTU(link, n.MTU); err != nil {
			return nil, fmt.Errorf("set bridge %s MTU %d: %w", name, n.MTU, err)
		}
	}
	if link.Attrs().HardwareAddr.String() != mac.String() {
		if err := h.LinkSetHardwareAddr(link, mac); err != nil {
			return nil, fmt.Errorf("set bridge %s MAC %s: %w", name, mac, err)
		}
	}
	if err := setOnlyAddr(h, link, netip.PrefixFrom(n.Gateway, n.Subnet.Bits())); err != nil {
		return nil, err
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring bridge %s up: %w", name, err)
	}
	return link, nil
}

// vxlanMatches reports whether an existing vxlan device is the one n needs.
func (d *Driver) vxlanMatches(vx *netlink.Vxlan, n Network) bool {
	return vx.Attrs().Name == d.vxlanName(n.VNI) &&
		vx.VxlanId == int(n.VNI) &&
		vx.Port == d.cfg.Port &&
		addrOf(vx.SrcAddr) == n.VTEP &&
		!vx.Learning && vx.Proxy && vx.Group == nil
}

// ensureVxlan keeps the sandbox's vxlan device if it matches n, replaces it
// otherwise, and deletes any other vxlan device in the sandbox.
func (d *Driver) ensureVxlan(sb *nsHandle, br netlink.Link, n Network) error {
	links, err := sb.h.LinkList()
	if err != nil {
		return fmt.Errorf("list links in sandbox: %w", err)
	}
	var vx netlink.Link
	for _, l := range links {
		v, ok := l.(*netlink.Vxlan)
		if !ok {
			continue
		}
		if vx == nil && d.vxlanMatches(v, n) {
			vx = l
			continue
		}
		if err := sb.h.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete stale vxlan %s: %w", l.Attrs().Name, err)
		}
		d.log.Info("deleted stale vxlan", "network", n.ID, "link", l.Attrs().Name, "vni", v.VxlanId)
	}
	if vx == nil {
		if vx, err = d.createVxlan(sb, n); err != nil {
			return err
		}
	}
	name := vx.Attrs().Name
	if vx.Attrs().MTU != n.MTU {
		if err := sb.h.LinkSetMTU(vx, n.MTU); err != nil {
			return fmt.Errorf("set vxlan %s MTU %d: %w", name, n.MTU, err)
		}
	}
	if vx.Attrs().MasterIndex != br.Attrs().Index {
		if err := sb.h.LinkSetMaster(vx, br); err != nil {
			return fmt.Errorf("add vxlan %s to bridge: %w", name, err)
		}
	}
	if err := sb.h.LinkSetUp(vx); err != nil {
		return fmt.Errorf("bring vxlan %s up: %w", name, err)
	}
	return nil
}

// createVxlan creates n's vxlan device in the host netns and moves it into
// the sandbox. A device keeps the UDP socket of the namespace it was created
// in, so encapsulated packets leave from the host's underlay while the
// device itself sits on the sandbox bridge (as Docker's overlay does).
func (d *Driver) createVxlan(sb *nsHandle, n Network) (netlink.Link, error) {
	host, err := openNS(d.hostNS)
	if err != nil {
		return nil, err
	}
	defer host.Close()
	name := d.vxlanName(n.VNI)
	// A leftover of a crash between create and move.
	if l, err := host.h.LinkByName(name); err == nil {
		if err := host.h.LinkDel(l); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("delete leftover vxlan %s in host netns: %w", name, err)
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = n.MTU
	vx := &netlink.Vxlan{
		LinkAttrs: attrs,
		VxlanId:   int(n.VNI),
		SrcAddr:   n.VTEP.AsSlice(),
		Port:      d.cfg.Port,
		// Remote MACs are programmed (SetRemotes), never learned from
		// arriving packets, which anyone on the underlay could forge.
		Learning: false,
		// Proxy answers containers' ARP requests from the device's static
		// neighbour table; with no default FDB entry nothing is flooded.
		Proxy: true,
	}
	if err := host.h.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("create vxlan %s (VNI %d, local %s, port %d) in host netns: %w",
			name, n.VNI, n.VTEP, d.cfg.Port, err)
	}
	l, err := host.h.LinkByName(name)
	if err == nil {
		err = host.h.LinkSetNsFd(l, int(sb.ns))
		if err != nil {
			err = fmt.Errorf("move vxlan %s into sandbox: %w", name, err)
		}
	} else {
		err = fmt.Errorf("look up new vxlan %s: %w", name, err)
	}
	if err != nil {
		if l != nil {
			if derr := host.h.LinkDel(l); derr != nil && !isNotFound(derr) {
				err = errors.Join(err, fmt.Errorf("delete vxlan %s: %w", name, derr))
			}
		}
		return nil, err
	}
	l, err = sb.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up vxlan %s in sandbox: %w", name, err)
	}
	d.log.Info("created vxlan", "network", n.ID, "vni", n.VNI, "vtep", n.VTEP, "link", name)
	return l, nil
}

// syncPortMTUs sets the MTU on the sandbox ends of the network's veths.
func (d *Driver) syncPortMTUs(h *netlink.Handle, br netlink.Link, mtu int) error {
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links in sandbox: %w", err)
	}
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); !ok || l.Attrs().MasterIndex != br.Attrs().Index || l.Attrs().MTU == mtu {
			continue
		}
		if err := h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set veth %s MTU %d: %w", l.Attrs().Name, mtu, err)
		}
	}
	return nil
}

// RemoveNetwork deletes network id's sandbox: its vxlan device (freeing the
// VNI at once), its veths (the containers lose their interface on this
// network), its bridge and the sandbox file. Removing a network that does
// not exist is not an error.
func (d *Driver) RemoveNetwork(ctx context.Context, id string) error {
	if !validID(id) {
		return fmt.Errorf("remove network: %w: id %q", ErrInvalidNetwork, id)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove network %s: %w", id, err)
	}
	if err := d.removeNetworkLocked(id); err != nil {
		return fmt.Errorf("remove network %s: %w", id, err)
	}
	return nil
}

func (d *Driver) removeNetworkLocked(id string) error {
	path := d.sandboxPath(id)
	ok, err := isNetNSFile(path)
	if err != nil {
		return err
	}
	if ok {
		sb, err := openNS(path)
		if err != nil {
			return err
		}
		err = deleteAllLinks(sb.h)
		sb.Close()
		if err != nil {
			return err
		}
	}
	// The namespace itself goes with its last reference; the links that
	// matter are gone already even if something still holds it.
	if err := removeNetNSFile(path); err != nil {
		return err
	}
	if ok {
		d.log.Info("removed network", "network", id)
	}
	return nil
}

// deleteAllLinks deletes every link but lo in a sandbox, vxlan devices first
// so that no frame enters or leaves the overlay while the rest goes.
func deleteAllLinks(h *netlink.Handle) error {
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links in sandbox: %w", err)
	}
	slices.SortStableFunc(links, func(a, b netlink.Link) int {
		_, av := a.(*netlink.Vxlan)
		_, bv := b.(*netlink.Vxlan)
		switch {
		case av && !bv:
			return -1
		case bv && !av:
			return 1
		}
		return 0
	})
	for _, l := range links {
		if l.Attrs().Name == "lo" {
			continue
		}
		if err := h.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete %s in sandbox: %w", l.Attrs().Name, err)
		}
	}
	return nil
}

// Networks lists, sorted, the ids of the networks whose sandbox exists, as
// read from NetNSDir: after a restart, what the previous process set up.
func (d *Driver) Networks(ctx context.Context) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	files, err := d.sandboxFilesLocked()
	if err != nil {
		return nil, fmt.Errorf("list networks: %w", err)
	}
	var ids []string
	for id, pinned := range files {
		if pinned {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// sandboxFilesLocked maps the network id of every sandbox file of this driver
// to whether it is a mounted namespace (false: a stale placeholder).
func (d *Driver) sandboxFilesLocked() (map[string]bool, error) {
	entries, err := os.ReadDir(d.cfg.NetNSDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read netns dir %s: %w", d.cfg.NetNSDir, err)
	}
	files := make(map[string]bool)
	for _, e := range entries {
		id, ok := d.networkIDOf(e.Name())
		if !ok {
			continue
		}
		pinned, err := isNetNSFile(d.sandboxPath(id))
		if err != nil {
			return nil, err
		}
		files[id] = pinned
	}
	return files, nil
}

// Reconcile makes the host's networks exactly desired: it removes every
// sandbox of this driver's prefix that is not desired (stale after a daemon
// restart, or a network removed while the daemon was down) and every vxlan
// device a crash left behind in the host netns, then ensures each desired
// network as EnsureNetwork does. It validates all of desired before changing
// anything, goes on past a failing network and returns every error joined.
// Remotes and endpoints are the caller's: follow with SetRemotes and Attach.
func (d *Driver) Reconcile(ctx context.Context, desired []Network) error {
	want := make(map[string]Network, len(desired))
	vnis := make(map[uint32]string, len(desired))
	for _, n := range desired {
		n, err := d.normalize(n)
		if err != nil {
			return fmt.Errorf("reconcile: %w", err)
		}
		if _, dup := want[n.ID]; dup {
			return fmt.Errorf("reconcile: %w %q: listed twice", ErrInvalidNetwork, n.ID)
		}
		if other, dup := vnis[n.VNI]; dup {
			return fmt.Errorf("reconcile: %w %q: VNI %d already used by %q", ErrInvalidNetwork, n.ID, n.VNI, other)
		}
		want[n.ID], vnis[n.VNI] = n, n.ID
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	files, err := d.sandboxFilesLocked()
	if err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	var errs []error
	for id := range files {
		if _, ok := want[id]; ok {
			continue
		}
		if err := d.removeNetworkLocked(id); err != nil {
			errs = append(errs, fmt.Errorf("remove stale network %s: %w", id, err))
			continue
		}
		d.log.Info("removed stale network", "network", id)
	}
	if err := d.removeHostLeftoversLocked(); err != nil {
		errs = append(errs, err)
	}
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if err := d.ensureNetworkLocked(ctx, want[id]); err != nil {
			errs = append(errs, fmt.Errorf("ensure network %s: %w", id, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	return nil
}

// removeHostLeftoversLocked deletes vxlan devices of this driver in the host
// netns: they only live there between creation and the move into their
// sandbox, so one found outside a locked operation is a crash's leftover.
func (d *Driver) removeHostLeftoversLocked() error {
	host, err := openNS(d.hostNS)
	if err != nil {
		return err
	}
	defer host.Close()
	links, err := host.h.LinkList()
	if err != nil {
		return fmt.Errorf("list links in host netns: %w", err)
	}
	for _, l := range links {
		if _, ok := l.(*netlink.Vxlan); !ok {
			continue
		}
		if _, ok := d.vniOf(l.Attrs().Name); !ok {
			continue
		}
		if err := host.h.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete leftover vxlan %s in host netns: %w", l.Attrs().Name, err)
		}
		d.log.Info("deleted leftover vxlan in host netns", "link", l.Attrs().Name)
	}
	return nil
}
