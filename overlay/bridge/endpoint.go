package bridge

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

const (
	// containerIfname is the container side of the veth, inside its netns.
	containerIfname = "eth0"
	// vethPrefix starts every host-side veth name; the rest is a hash of the
	// endpoint id, so the name is stable across restarts.
	vethPrefix = "vs"
	// vethHashLen hex characters of the hash (44 bits) keep the name at 13
	// bytes, within the kernel's 15 while making collisions negligible.
	vethHashLen = 11
	// maxIDLen bounds endpoint ids, which name files under StateDir.
	maxIDLen = 128
)

// Endpoint is a container's attachment to the bridge.
type Endpoint struct {
	ID string
	// NetNSPath is the bind-mounted netns file StateDir/netns/ID: pass it to
	// runc as the container's network namespace path.
	NetNSPath string
	Address   netip.Prefix // container address with the subnet's length, e.g. 172.29.0.5/16
	Gateway   netip.Addr   // the bridge's address, the default route's next hop
	MAC       net.HardwareAddr
}

// VethName returns the host-side veth name for endpoint id: "vs" and 11 hex
// characters of the id's SHA-256.
func VethName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return vethPrefix + hex.EncodeToString(sum[:])[:vethHashLen]
}

func validateID(id string) error {
	if len(id) > maxIDLen || !validName(id) {
		return fmt.Errorf("%w: %q must be 1-%d characters of [A-Za-z0-9_.-], not starting with '.' or '-'",
			ErrInvalidID, id, maxIDLen)
	}
	return nil
}

// Attach creates, or returns and repairs, the endpoint of container id: a
// network namespace pinned at StateDir/netns/id with lo up, a veth pair (host
// side VethName(id) on the bridge, container side eth0 in the namespace), an
// address allocated from the subnet and persisted before any kernel object is
// made, a default route via the gateway and the configured MTU. Attaching an
// existing id returns the same endpoint. Setup must have run (ErrNotSetUp).
// If a new attachment fails half way, what it created is removed again.
func (d *Driver) Attach(ctx context.Context, id string) (Endpoint, error) {
	if err := validateID(id); err != nil {
		return Endpoint{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return Endpoint{}, fmt.Errorf("attach %s: %w", id, err)
	}
	h, hostNS, err := d.hostHandle()
	if err != nil {
		return Endpoint{}, fmt.Errorf("attach %s: %w", id, err)
	}
	defer hostNS.Close()
	defer h.Close()
	br, err := h.LinkByName(d.cfg.Name)
	if err != nil {
		if isNotFound(err) {
			return Endpoint{}, fmt.Errorf("attach %s to %s: %w", id, d.cfg.Name, ErrNotSetUp)
		}
		return Endpoint{}, fmt.Errorf("attach %s: look up bridge %s: %w", id, d.cfg.Name, err)
	}

	st, err := loadState(d.statePath)
	if err != nil {
		return Endpoint{}, fmt.Errorf("attach %s: %w", id, err)
	}
	addr, existed := st.Endpoints[id]
	if !existed {
		if addr, err = st.allocate(d.cfg.Subnet, id); err != nil {
			return Endpoint{}, err
		}
		// Persist first: a crash from here on leaves a record that
		// Endpoints reports, so the caller can detach what was half made.
		if err := st.save(d.statePath); err != nil {
			return Endpoint{}, fmt.Errorf("attach %s: %w", id, err)
		}
		d.log.Info("allocated endpoint address", "id", id, "address", addr)
	}
	ep := d.endpoint(id, addr)
	if err := d.plumb(ctx, h, br, ep); err != nil {
		if !existed {
			if derr := d.detachLocked(id); derr != nil {
				d.log.Warn("roll back failed attach", "id", id, "err", derr)
			}
		}
		return Endpoint{}, fmt.Errorf("attach %s: %w", id, err)
	}
	return ep, nil
}

func (d *Driver) endpoint(id string, addr netip.Addr) Endpoint {
	return Endpoint{
		ID:        id,
		NetNSPath: filepath.Join(d.netnsDir, id),
		Address:   netip.PrefixFrom(addr, d.cfg.Subnet.Bits()),
		Gateway:   d.gateway,
		MAC:       macFor(addr),
	}
}

// plumb brings the kernel objects of ep to their desired state, creating what
// is missing; every step is idempotent.
func (d *Driver) plumb(ctx context.Context, h *netlink.Handle, br netlink.Link, ep Endpoint) error {
	if err := netnsutil.CreateNetNS(ep.NetNSPath); err != nil {
		return err
	}
	cns, err := netns.GetFromPath(ep.NetNSPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ep.NetNSPath, err)
	}
	defer cns.Close()
	ch, err := netlink.NewHandleAt(cns)
	if err != nil {
		return fmt.Errorf("open netlink in netns %s: %w", ep.NetNSPath, err)
	}
	defer ch.Close()
	if err := ctx.Err(); err != nil {
		return err
	}
	hostEnd, err := d.ensureVeth(h, ch, cns, br, ep)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := d.configureContainerSide(ch, ep); err != nil {
		return err
	}
	// Host side last: the port starts forwarding once the container side can
	// answer.
	if err := h.LinkSetUp(hostEnd); err != nil {
		return fmt.Errorf("bring %s up: %w", hostEnd.Attrs().Name, err)
	}
	return nil
}

// ensureVeth makes sure the pair exists (host end on the bridge with the MTU,
// container end eth0 in the netns) and returns the host end. A half pair
// (one end missing, e.g. its netns was recreated) is replaced.
func (d *Driver) ensureVeth(h, ch *netlink.Handle, cns netns.NsHandle, br netlink.Link, ep Endpoint) (netlink.Link, error) {
	name := VethName(ep.ID)
	hostEnd, herr := h.LinkByName(name)
	if herr != nil && !isNotFound(herr) {
		return nil, fmt.Errorf("look up veth %s: %w", name, herr)
	}
	inner, cerr := ch.LinkByName(containerIfname)
	if cerr != nil && !isNotFound(cerr) {
		return nil, fmt.Errorf("look up %s in %s: %w", containerIfname, ep.NetNSPath, cerr)
	}
	_, innerIsVeth := inner.(*netlink.Veth)
	if herr == nil && cerr == nil && innerIsVeth {
		return d.attachHostEnd(h, hostEnd, br)
	}
	if herr == nil {
		if err := h.LinkDel(hostEnd); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("delete half veth %s: %w", name, err)
		}
	}
	if cerr == nil {
		if err := ch.LinkDel(inner); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("delete stale %s in %s: %w", containerIfname, ep.NetNSPath, err)
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = d.cfg.MTU
	attrs.MasterIndex = br.Attrs().Index
	veth := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         containerIfname,
		PeerHardwareAddr: ep.MAC,
		PeerNamespace:    netlink.NsFd(cns),
	}
	if err := h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s (peer %s in %s): %w", name, containerIfname, ep.NetNSPath, err)
	}
	hostEnd, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up new veth %s: %w", name, err)
	}
	d.log.Debug("created veth", "id", ep.ID, "veth", name)
	return d.attachHostEnd(h, hostEnd, br)
}

func (d *Driver) attachHostEnd(h *netlink.Handle, hostEnd, br netlink.Link) (netlink.Link, error) {
	name := hostEnd.Attrs().Name
	if hostEnd.Attrs().MTU != d.cfg.MTU {
		if err := h.LinkSetMTU(hostEnd, d.cfg.MTU); err != nil {
			return nil, fmt.Errorf("set %s MTU %d: %w", name, d.cfg.MTU, err)
		}
	}
	if hostEnd.Attrs().MasterIndex != br.Attrs().Index {
		if err := h.LinkSetMaster(hostEnd, br); err != nil {
			return nil, fmt.Errorf("add %s to bridge %s: %w", name, d.cfg.Name, err)
		}
	}
	// Hairpin mode lets the bridge send a frame back out of the port it came
	// in on: a container reaching a port it publishes itself, through the
	// host's address, is DNATed back to its own address, and br_netfilter
	// then bridges that frame instead of routing it.
	if err := h.LinkSetHairpin(hostEnd, true); err != nil {
		return nil, fmt.Errorf("set hairpin mode on %s: %w", name, err)
	}
	return hostEnd, nil
}

// configureContainerSide sets up lo and eth0 (MTU, MAC, only address, up) and
// the default route inside the container's netns.
func (d *Driver) configureContainerSide(ch *netlink.Handle, ep Endpoint) error {
	lo, err := ch.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("look up lo in %s: %w", ep.NetNSPath, err)
	}
	if err := ch.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up in %s: %w", ep.NetNSPath, err)
	}
	eth, err := ch.LinkByName(containerIfname)
	if err != nil {
		return fmt.Errorf("look up %s in %s: %w", containerIfname, ep.NetNSPath, err)
	}
	if eth.Attrs().MTU != d.cfg.MTU {
		if err := ch.LinkSetMTU(eth, d.cfg.MTU); err != nil {
			return fmt.Errorf("set %s MTU in %s: %w", containerIfname, ep.NetNSPath, err)
		}
	}
	if eth.Attrs().HardwareAddr.String() != ep.MAC.String() {
		if err := ch.LinkSetHardwareAddr(eth, ep.MAC); err != nil {
			return fmt.Errorf("set %s MAC in %s: %w", containerIfname, ep.NetNSPath, err)
		}
	}
	if err := setOnlyAddr(ch, eth, ep.Address); err != nil {
		return fmt.Errorf("address %s in %s: %w", containerIfname, ep.NetNSPath, err)
	}
	if err := ch.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring %s up in %s: %w", containerIfname, ep.NetNSPath, err)
	}
	route := &netlink.Route{
		LinkIndex: eth.Attrs().Index,
		Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Gw:        ep.Gateway.AsSlice(),
	}
	if err := ch.RouteReplace(route); err != nil {
		return fmt.Errorf("default route via %s in %s: %w", ep.Gateway, ep.NetNSPath, err)
	}
	return nil
}

// Lookup returns the endpoint of container id as StateDir records it,
// without touching the kernel: for a caller that needs the address of a
// container attached by an earlier daemon process. It returns
// ErrUnknownEndpoint when id has no address.
func (d *Driver) Lookup(id string) (Endpoint, error) {
	if err := validateID(id); err != nil {
		return Endpoint{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, err := loadState(d.statePath)
	if err != nil {
		return Endpoint{}, fmt.Errorf("look up endpoint %s: %w", id, err)
	}
	addr, ok := st.Endpoints[id]
	if !ok {
		return Endpoint{}, fmt.Errorf("look up endpoint %s: %w", id, ErrUnknownEndpoint)
	}
	return d.endpoint(id, addr), nil
}

// Detach removes the endpoint's veth pair, unmounts and deletes its netns file
// and releases its address. Detaching an unknown id is not an error. A
// process still inside the namespace keeps it alive, but without the veth it
// has no network.
func (d *Driver) Detach(ctx context.Context, id string) error {
	if err := validateID(id); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	if err := d.detachLocked(id); err != nil {
		return fmt.Errorf("detach %s: %w", id, err)
	}
	return nil
}

func (d *Driver) detachLocked(id string) error {
	h, hostNS, err := d.hostHandle()
	if err != nil {
		return err
	}
	defer hostNS.Close()
	defer h.Close()
	name := VethName(id)
	// Deleting one end deletes both, wherever the peer is.
	link, err := h.LinkByName(name)
	switch {
	case err == nil:
		if err := h.LinkDel(link); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete veth %s: %w", name, err)
		}
	case !isNotFound(err):
		return fmt.Errorf("look up veth %s: %w", name, err)
	}
	if err := netnsutil.RemoveNetNSFile(filepath.Join(d.netnsDir, id)); err != nil {
		return err
	}
	st, err := loadState(d.statePath)
	if err != nil {
		return err
	}
	if addr, ok := st.Endpoints[id]; ok {
		delete(st.Endpoints, id)
		if err := st.save(d.statePath); err != nil {
			return err
		}
		d.log.Info("released endpoint address", "id", id, "address", addr)
	}
	return nil
}

// Endpoints lists, sorted, the ids that have an allocation or a netns file in
// StateDir: after a restart, everything the caller may need to detach.
func (d *Driver) Endpoints() ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.endpointsLocked()
}

func (d *Driver) endpointsLocked() ([]string, error) {
	st, err := loadState(d.statePath)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(st.Endpoints))
	for id := range st.Endpoints {
		seen[id] = true
	}
	entries, err := os.ReadDir(d.netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list netns dir %s: %w", d.netnsDir, err)
	}
	for _, e := range entries {
		if validateID(e.Name()) == nil {
			seen[e.Name()] = true
		}
	}
	return slices.Sorted(maps.Keys(seen)), nil
}
