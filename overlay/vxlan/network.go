package vxlan

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

// ipForward is the sysctl that stays 0 in a plain network's sandbox, which
// only bridges: a sandbox that routed would let a container reach past its
// network through the gateway address. An encrypted network's sandbox
// routes between its bridge and its uplink, and the host netns routes
// between the uplinks and WireGuard: 1 in both.
const ipForward = "/proc/sys/net/ipv4/ip_forward"

// EnsureNetwork creates or repairs network n's sandbox: a netns pinned at
// SandboxPath(n.ID) holding the bridge (gateway address, a fixed MAC derived
// from the gateway, MTU, up), and
//
//   - for a plain network, with IP forwarding off, the vxlan device (VNI,
//     port, Config.VTEP, no learning, proxy ARP, MTU, on the bridge, up),
//     created in the host netns and then moved, so its UDP socket stays on
//     the underlay;
//   - for an encrypted network, no vxlan device but an uplink veth to the
//     host netns (<prefix>up in the sandbox, <prefix>u<VNI hex> in the
//     host, MTU), IP forwarding on and proxy ARP on the bridge; in the host
//     netns, the route for the subnet to the sandbox, IP forwarding on, and
//     the isolation table updated (see the package doc). An encrypted
//     network whose subnet overlaps another encrypted network's, or an
//     address or route of the host netns (the underlay, the WireGuard
//     interface's own subnet), is refused with ErrInvalidNetwork, as is one
//     whose VNI another encrypted network uses. Config.WireGuardIf must be
//     set; the interface itself need not exist yet (SetRemotes needs it).
//
// It is idempotent and keeps existing endpoints and remotes working, with two
// exceptions: a vxlan device whose VNI, port or VTEP differs from n is
// replaced, and its remotes with it; and a network whose Encrypted flag
// changed is rebuilt the other way (vxlan device or uplink), losing its
// remotes. Callers always follow EnsureNetwork with SetRemotes. A changed MTU
// reaches the sandbox ends of existing veths at once and the container ends
// at their next Attach.
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
	host, err := openNS(d.hostNS)
	if err != nil {
		return err
	}
	defer host.Close()
	if n.Encrypted {
		// Before anything is made: a refused network leaves no trace.
		if err := d.checkRouted(host, n); err != nil {
			return err
		}
	}
	path := d.sandboxPath(n.ID)
	if err := netnsutil.CreateNetNS(path); err != nil {
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
	// New namespaces may inherit forwarding from the host's (PLATFORM.md);
	// enforce it either way.
	if err := netnsutil.SetSysctls(path, d.sandboxSysctls(n)...); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if n.Encrypted {
		err = d.ensureRouted(host, sb, n)
	} else {
		err = d.ensurePlain(host, sb, br, n)
	}
	if err != nil {
		return err
	}
	if err := d.syncPortMTUs(sb.h, br, n.MTU); err != nil {
		return err
	}
	d.log.Debug("network ensured", "network", n.ID, "vni", n.VNI, "subnet", n.Subnet,
		"encrypted", n.Encrypted, "mtu", n.MTU)
	return nil
}

// ensurePlain gives a plain network's sandbox its vxlan device, after
// removing the uplink of a network that was encrypted (and the host state
// that went with it).
func (d *Driver) ensurePlain(host, sb *nsHandle, br netlink.Link, n Network) error {
	removed, err := d.deleteUplink(sb.h)
	if err != nil {
		return err
	}
	if removed {
		if err := d.syncHostLocked(host); err != nil {
			return err
		}
		d.log.Info("network no longer encrypted: uplink removed", "network", n.ID)
	}
	return d.ensureVxlan(sb, br, n)
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
		addrOf(vx.SrcAddr) == d.cfg.VTEP &&
		!vx.Learning && vx.Proxy && vx.Group == nil
}

// ensureVxlan keeps the sandbox's vxlan device if it matches n, replaces it
// otherwise, and deletes any other vxlan device in the sandbox.
func (d *Driver) ensureVxlan(sb *nsHandle, br netlink.Link, n Network) error {
	var vx netlink.Link
	err := d.deleteVxlans(sb.h, n.ID, func(v *netlink.Vxlan) bool {
		if vx == nil && d.vxlanMatches(v, n) {
			vx = v
			return true
		}
		return false
	})
	if err != nil {
		return err
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

// deleteVxlans deletes the vxlan devices in a sandbox that keep (nil: none)
// does not keep.
func (d *Driver) deleteVxlans(h *netlink.Handle, networkID string, keep func(*netlink.Vxlan) bool) error {
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links in sandbox: %w", err)
	}
	for _, l := range links {
		v, ok := l.(*netlink.Vxlan)
		if !ok || keep != nil && keep(v) {
			continue
		}
		if err := h.LinkDel(l); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete stale vxlan %s: %w", l.Attrs().Name, err)
		}
		d.log.Info("deleted stale vxlan", "network", networkID, "link", l.Attrs().Name, "vni", v.VxlanId)
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
		SrcAddr:   d.cfg.VTEP.AsSlice(),
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
			name, n.VNI, d.cfg.VTEP, d.cfg.Port, err)
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
	d.log.Info("created vxlan", "network", n.ID, "vni", n.VNI, "vtep", d.cfg.VTEP, "link", name)
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
// VNI at once) or its uplink, its veths (the containers lose their interface
// on this network), its bridge and the sandbox file. For an encrypted
// network it also removes, in the host netns, the uplink's host end, the
// route for the subnet and the routes to the network's remote endpoints on
// the WireGuard interface, and updates the isolation table (deleted with the
// last encrypted network). Removing a network that does not exist is not an
// error.
func (d *Driver) RemoveNetwork(ctx context.Context, id string) error {
	if !validID(id) {
		return fmt.Errorf("remove network: %w: id %q", ErrInvalidNetwork, id)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove network %s: %w", id, err)
	}
	encrypted, err := d.removeNetworkLocked(id)
	if err == nil && (encrypted || d.cfg.WireGuardIf != "") {
		// With a WireGuard interface even a network without a sandbox may
		// have left routes behind (a sandbox lost with its mount namespace).
		err = d.syncHostNSLocked()
	}
	if err != nil {
		return fmt.Errorf("remove network %s: %w", id, err)
	}
	return nil
}

// removeNetworkLocked deletes network id's sandbox; encrypted reports that
// it had an uplink, whose host end went with it: the caller syncs the host
// netns (syncHostLocked).
func (d *Driver) removeNetworkLocked(id string) (encrypted bool, err error) {
	path := d.sandboxPath(id)
	ok, err := netnsutil.IsNetNSFile(path)
	if err != nil {
		return false, err
	}
	if ok {
		sb, err := openNS(path)
		if err != nil {
			return false, err
		}
		encrypted, err = d.deleteAllLinks(sb.h)
		sb.Close()
		if err != nil {
			return encrypted, err
		}
	}
	// The namespace itself goes with its last reference; the links that
	// matter are gone already even if something still holds it.
	if err := netnsutil.RemoveNetNSFile(path); err != nil {
		return encrypted, err
	}
	if ok {
		d.log.Info("removed network", "network", id, "encrypted", encrypted)
	}
	return encrypted, nil
}

// syncHostNSLocked opens the host netns for syncHostLocked.
func (d *Driver) syncHostNSLocked() error {
	host, err := openNS(d.hostNS)
	if err != nil {
		return err
	}
	defer host.Close()
	return d.syncHostLocked(host)
}

// deleteAllLinks deletes every link but lo in a sandbox, the vxlan device or
// uplink first so that no packet enters or leaves the overlay while the rest
// goes. uplink reports that there was an uplink.
func (d *Driver) deleteAllLinks(h *netlink.Handle) (uplink bool, err error) {
	links, err := h.LinkList()
	if err != nil {
		return false, fmt.Errorf("list links in sandbox: %w", err)
	}
	first := func(l netlink.Link) bool {
		_, vx := l.(*netlink.Vxlan)
		return vx || l.Attrs().Name == d.uplinkSandboxName()
	}
	slices.SortStableFunc(links, func(a, b netlink.Link) int {
		switch {
		case first(a) && !first(b):
			return -1
		case first(b) && !first(a):
			return 1
		}
		return 0
	})
	for _, l := range links {
		if l.Attrs().Name == "lo" {
			continue
		}
		if l.Attrs().Name == d.uplinkSandboxName() {
			uplink = true
		}
		if err := h.LinkDel(l); err != nil && !isNotFound(err) {
			return uplink, fmt.Errorf("delete %s in sandbox: %w", l.Attrs().Name, err)
		}
	}
	return uplink, nil
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
		pinned, err := netnsutil.IsNetNSFile(d.sandboxPath(id))
		if err != nil {
			return nil, err
		}
		files[id] = pinned
	}
	return files, nil
}

// Reconcile makes the host's networks exactly desired: it removes every
// sandbox of this driver's prefix that is not desired (stale after a daemon
// restart, or a network removed while the daemon was down), every vxlan
// device a crash left behind in the host netns and every uplink in the host
// netns of a network that is not desired as encrypted, then ensures each
// desired network as EnsureNetwork does (a network whose Encrypted flag
// changed is rebuilt), and finally brings the host netns in line: the
// isolation table, and no route of the driver's on the WireGuard interface
// outside an encrypted network. It validates all of desired before changing
// anything (encrypted networks' subnets must not overlap each other), goes on
// past a failing network and returns every error joined. Remotes and
// endpoints are the caller's: follow with SetRemotes and Attach.
func (d *Driver) Reconcile(ctx context.Context, desired []Network) error {
	want := make(map[string]Network, len(desired))
	vnis := make(map[uint32]string, len(desired))
	var encrypted []Network
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
		if n.Encrypted {
			for _, o := range encrypted {
				if o.Subnet.Overlaps(n.Subnet) {
					return fmt.Errorf("reconcile: %w %q: subnet %s overlaps encrypted network %q (%s)",
						ErrInvalidNetwork, n.ID, n.Subnet, o.ID, o.Subnet)
				}
			}
			encrypted = append(encrypted, n)
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
		if _, err := d.removeNetworkLocked(id); err != nil {
			errs = append(errs, fmt.Errorf("remove stale network %s: %w", id, err))
			continue
		}
		d.log.Info("removed stale network", "network", id)
	}
	host, err := openNS(d.hostNS)
	if err != nil {
		return fmt.Errorf("reconcile: %w", errors.Join(append(errs, err)...))
	}
	defer host.Close()
	if err := d.removeHostLeftoversLocked(host, want); err != nil {
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
	if err := d.syncHostLocked(host); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	return nil
}

// removeHostLeftoversLocked deletes, in the host netns, vxlan devices of
// this driver (they only live there between creation and the move into
// their sandbox, so one found outside a locked operation is a crash's
// leftover) and uplinks that are not those of a network in want.
func (d *Driver) removeHostLeftoversLocked(host *nsHandle, want map[string]Network) error {
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
	return d.removeOrphanUplinks(host, want)
}
