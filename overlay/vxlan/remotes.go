package vxlan

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// neighEntry is a static neighbour (ARP) entry on the vxlan device: the
// table proxy ARP answers from.
type neighEntry struct {
	IP        netip.Addr
	MAC       string // net.HardwareAddr.String()
	Permanent bool   // only permanent entries are desired; others are replaced
}

// fdbEntry is a forwarding entry of the vxlan device: frames for MAC are
// encapsulated to VTEP.
type fdbEntry struct {
	MAC  string
	VTEP netip.Addr
}

// remoteChanges is what SetRemotes does to the kernel, in field order:
// unknown addresses stop being answered first, then MACs are pointed at
// their VTEPs, stale forwarding goes, and new addresses are answered last,
// when their frames already have somewhere to go.
type remoteChanges struct {
	delNeigh []neighEntry
	setFDB   []fdbEntry
	delFDB   []fdbEntry
	setNeigh []neighEntry
}

func (c remoteChanges) empty() bool {
	return len(c.delNeigh)+len(c.setFDB)+len(c.delFDB)+len(c.setNeigh) == 0
}

// diffRemotes computes the changes that turn the programmed entries (have*,
// read from the kernel) into the ones want needs, leaving entries that are
// already right untouched so flows through them are never disturbed. want
// must have passed validateRemotes.
func diffRemotes(haveNeigh []neighEntry, haveFDB []fdbEntry, want []Remote) remoteChanges {
	wantNeigh := make(map[netip.Addr]string, len(want))
	wantFDB := make(map[string]netip.Addr, len(want))
	for _, r := range want {
		wantNeigh[r.Addr.Unmap()] = r.MAC.String()
		wantFDB[r.MAC.String()] = r.VTEP.Unmap()
	}
	var c remoteChanges

	neighOK := make(map[netip.Addr]bool, len(haveNeigh))
	for _, n := range haveNeigh {
		mac, ok := wantNeigh[n.IP]
		switch {
		case !ok:
			c.delNeigh = append(c.delNeigh, n)
		case mac == n.MAC && n.Permanent:
			neighOK[n.IP] = true
		}
	}
	for ip, mac := range wantNeigh {
		if !neighOK[ip] {
			c.setNeigh = append(c.setNeigh, neighEntry{IP: ip, MAC: mac, Permanent: true})
		}
	}

	// A MAC may have several forwarding entries (remote destinations); the
	// desired state is exactly one, to its VTEP.
	byMAC := make(map[string][]netip.Addr, len(haveFDB))
	for _, f := range haveFDB {
		byMAC[f.MAC] = append(byMAC[f.MAC], f.VTEP)
	}
	for mac, vteps := range byMAC {
		w, ok := wantFDB[mac]
		if ok && !slices.Contains(vteps, w) {
			// Replace the first destination in place, then drop the rest;
			// deleting the replaced one finds nothing, which is fine.
			c.setFDB = append(c.setFDB, fdbEntry{MAC: mac, VTEP: w})
		}
		for _, v := range vteps {
			if !ok || v != w {
				c.delFDB = append(c.delFDB, fdbEntry{MAC: mac, VTEP: v})
			}
		}
	}
	for mac, w := range wantFDB {
		if _, ok := byMAC[mac]; !ok {
			c.setFDB = append(c.setFDB, fdbEntry{MAC: mac, VTEP: w})
		}
	}

	// Deterministic order, for logs and tests.
	slices.SortFunc(c.delNeigh, func(a, b neighEntry) int { return a.IP.Compare(b.IP) })
	slices.SortFunc(c.setNeigh, func(a, b neighEntry) int { return a.IP.Compare(b.IP) })
	byKey := func(a, b fdbEntry) int {
		if r := strings.Compare(a.MAC, b.MAC); r != 0 {
			return r
		}
		return a.VTEP.Compare(b.VTEP)
	}
	slices.SortFunc(c.setFDB, byKey)
	slices.SortFunc(c.delFDB, byKey)
	return c
}

// validateRemotes checks what the kernel would accept but SetRemotes cannot
// program consistently: every address listed once, every MAC behind a single
// VTEP, and VTEPs of the local VTEP's address family.
func validateRemotes(want []Remote, vtep netip.Addr) error {
	ips := make(map[netip.Addr]bool, len(want))
	macs := make(map[string]netip.Addr, len(want))
	for _, r := range want {
		switch {
		case !r.Addr.Unmap().Is4():
			return fmt.Errorf("%w: address %s is not IPv4", ErrInvalidRemote, r.Addr)
		case len(r.MAC) != 6 || r.MAC[0]&1 != 0 || slices.Equal(r.MAC, make([]byte, 6)):
			return fmt.Errorf("%w: %s: MAC %s is not a unicast Ethernet address", ErrInvalidRemote, r.Addr, r.MAC)
		case !r.VTEP.IsValid() || r.VTEP.IsUnspecified() || r.VTEP.Unmap().Is4() != vtep.Is4():
			return fmt.Errorf("%w: %s: VTEP %s is not a %s unicast address like the local VTEP %s",
				ErrInvalidRemote, r.Addr, r.VTEP, family(vtep), vtep)
		case ips[r.Addr.Unmap()]:
			return fmt.Errorf("%w: address %s listed twice", ErrInvalidRemote, r.Addr)
		}
		if v, ok := macs[r.MAC.String()]; ok && v != r.VTEP.Unmap() {
			return fmt.Errorf("%w: MAC %s listed behind VTEPs %s and %s", ErrInvalidRemote, r.MAC, v, r.VTEP)
		}
		ips[r.Addr.Unmap()] = true
		macs[r.MAC.String()] = r.VTEP.Unmap()
	}
	return nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// SetRemotes makes want the full set of network networkID's endpoints on
// other hosts. It reads what is programmed back from the kernel and changes
// only the difference, so connections to remotes that stay are untouched.
// The network must exist (ErrNoNetwork).
//
// On a plain network it programs, for each remote, a permanent neighbour
// entry (address → MAC), which the vxlan device's proxy ARP answers
// containers from, and a forwarding entry (MAC → VTEP); traffic to a removed
// remote stops at once (its frames find no forwarding entry and are
// dropped), even while a container's ARP cache still holds its MAC. Remotes'
// VTEPs must have the local VTEP's address family.
//
// On an encrypted network only the addresses count, and they must be host
// addresses of the subnet other than the gateway: for each, a /32 route out
// of the uplink in the sandbox (which the bridge's proxy ARP answers
// containers from) and a /32 route on Config.WireGuardIf in the host netns,
// which must exist unless want is empty (the caller gives the WireGuard
// peers these /32s as AllowedIPs). Only the driver's routes inside the
// network's subnet are changed or removed.
func (d *Driver) SetRemotes(ctx context.Context, networkID string, want []Remote) error {
	if !validID(networkID) {
		return fmt.Errorf("set remotes of network %q: %w", networkID, ErrInvalidNetwork)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("set remotes of network %s: %w", networkID, err)
	}
	if err := d.setRemotesLocked(networkID, want); err != nil {
		return fmt.Errorf("set remotes of network %s: %w", networkID, err)
	}
	return nil
}

func (d *Driver) setRemotesLocked(networkID string, want []Remote) error {
	sb, _, gw, err := d.openNetworkLocked(networkID)
	if err != nil {
		return err
	}
	defer sb.Close()
	up, err := sb.h.LinkByName(d.uplinkSandboxName())
	switch {
	case err == nil:
		return d.setRoutedRemotes(sb, up, gw, networkID, want)
	case !isNotFound(err):
		return fmt.Errorf("look up uplink in sandbox: %w", err)
	}
	vx, err := d.findVxlan(sb.h)
	if err != nil {
		return err
	}
	if err := validateRemotes(want, addrOf(vx.SrcAddr)); err != nil {
		return err
	}
	neighs, fdb, err := readRemotes(sb.h, vx)
	if err != nil {
		return err
	}
	c := diffRemotes(neighs, fdb, want)
	if c.empty() {
		return nil
	}
	if err := applyRemotes(sb.h, vx.Attrs().Index, c); err != nil {
		return err
	}
	d.log.Debug("remotes updated", "network", networkID, "remotes", len(want),
		"neigh_set", len(c.setNeigh), "neigh_deleted", len(c.delNeigh),
		"fdb_set", len(c.setFDB), "fdb_deleted", len(c.delFDB))
	return nil
}

// findVxlan returns the sandbox's vxlan device of this driver.
func (d *Driver) findVxlan(h *netlink.Handle) (*netlink.Vxlan, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in sandbox: %w", err)
	}
	for _, l := range links {
		if vx, ok := l.(*netlink.Vxlan); ok {
			if _, ours := d.vniOf(l.Attrs().Name); ours {
				return vx, nil
			}
		}
	}
	return nil, fmt.Errorf("%w: no vxlan device in the sandbox", ErrNoNetwork)
}

// readRemotes reads the neighbour and forwarding entries programmed on vx.
// Forwarding entries are the device's own ("self") ones with a destination;
// the bridge's learned entries for the port are not ours.
func readRemotes(h *netlink.Handle, vx netlink.Link) ([]neighEntry, []fdbEntry, error) {
	idx := vx.Attrs().Index
	ns, err := h.NeighList(idx, netlink.FAMILY_V4)
	if err != nil {
		return nil, nil, fmt.Errorf("list neighbours of %s: %w", vx.Attrs().Name, err)
	}
	var neighs []neighEntry
	for _, n := range ns {
		if n.LinkIndex != idx || n.IP == nil {
			continue
		}
		neighs = append(neighs, neighEntry{
			IP:        addrOf(n.IP),
			MAC:       n.HardwareAddr.String(),
			Permanent: n.State == netlink.NUD_PERMANENT,
		})
	}
	fs, err := h.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		return nil, nil, fmt.Errorf("list forwarding entries of %s: %w", vx.Attrs().Name, err)
	}
	var fdb []fdbEntry
	for _, f := range fs {
		if f.LinkIndex != idx || f.Flags&netlink.NTF_SELF == 0 || f.IP == nil || len(f.HardwareAddr) != 6 {
			continue
		}
		fdb = append(fdb, fdbEntry{MAC: f.HardwareAddr.String(), VTEP: addrOf(f.IP)})
	}
	return neighs, fdb, nil
}

// applyRemotes writes c to the vxlan device with index idx. Deleting what is
// already gone is fine; the first other failure stops it, and the next
// SetRemotes, reading the kernel again, completes the work.
func applyRemotes(h *netlink.Handle, idx int, c remoteChanges) error {
	neigh := func(n neighEntry) *netlink.Neigh {
		mac, _ := net.ParseMAC(n.MAC)
		return &netlink.Neigh{
			LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: n.IP.AsSlice(), HardwareAddr: mac,
		}
	}
	fdb := func(f fdbEntry) *netlink.Neigh {
		mac, _ := net.ParseMAC(f.MAC)
		return &netlink.Neigh{
			LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT,
			IP: f.VTEP.AsSlice(), HardwareAddr: mac,
		}
	}
	gone := func(err error) bool { return err == nil || errors.Is(err, unix.ENOENT) }
	for _, n := range c.delNeigh {
		if err := h.NeighDel(neigh(n)); !gone(err) {
			return fmt.Errorf("delete neighbour %s: %w", n.IP, err)
		}
	}
	for _, f := range c.setFDB {
		if err := h.NeighSet(fdb(f)); err != nil {
			return fmt.Errorf("forward %s to VTEP %s: %w", f.MAC, f.VTEP, err)
		}
	}
	for _, f := range c.delFDB {
		if err := h.NeighDel(fdb(f)); !gone(err) {
			return fmt.Errorf("delete forwarding of %s to VTEP %s: %w", f.MAC, f.VTEP, err)
		}
	}
	for _, n := range c.setNeigh {
		if err := h.NeighSet(neigh(n)); err != nil {
			return fmt.Errorf("set neighbour %s at %s: %w", n.IP, n.MAC, err)
		}
	}
	return nil
}
