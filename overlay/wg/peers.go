package wg

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Peer is another host as this host's WireGuard interface should know it.
type Peer struct {
	PublicKey wgtypes.Key
	// Endpoint is the peer's underlay address and WireGuard port. The zero
	// value means unknown: the peer is then reachable only after it has
	// contacted us, and an endpoint the device has learnt is kept.
	Endpoint netip.AddrPort
	// AllowedIPs are the addresses routed to the peer and accepted from it:
	// its WireGuard address as a /32 (or /128), and whatever else is reached
	// through it. A prefix may belong to one peer only.
	AllowedIPs []netip.Prefix
}

// PeerStatus is what the device reports about a peer.
type PeerStatus struct {
	PublicKey     wgtypes.Key
	Endpoint      netip.AddrPort
	AllowedIPs    []netip.Prefix
	LastHandshake time.Time // zero before the first handshake
	RxBytes       int64
	TxBytes       int64
}

// SetPeers makes peers the device's full set of peers. It changes only what
// differs from the device's current configuration, which it reads back
// first (so it is safe to call after a restart, and repeatedly): peers not
// in the list are removed, new ones added, a peer whose endpoint or allowed
// IPs changed is updated in place (its AllowedIPs replaced). Peers that did
// not change are not touched, so their sessions and the connections through
// them carry on.
//
// The endpoint of a peer the device has learnt from the peer's own packets
// (roaming) is reset to the given one whenever they differ: the caller's view
// (gossip) is the source of truth.
func (d *Device) SetPeers(ctx context.Context, peers []Peer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	desired, err := normalizePeers(d.pub, peers)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	dev, err := d.client.Device(d.name)
	if err != nil {
		return fmt.Errorf("set peers of %s: read device: %w", d.name, err)
	}
	changes := diffPeers(currentPeers(dev.Peers), desired)
	if len(changes) == 0 {
		return nil
	}
	if err := d.client.ConfigureDevice(d.name, wgtypes.Config{ReplacePeers: false, Peers: changes}); err != nil {
		return fmt.Errorf("set peers of %s: %w", d.name, err)
	}
	d.log.Debug("peers updated", "peers", len(desired), "changes", len(changes))
	return nil
}

// Peers reports the device's peers, sorted by public key.
func (d *Device) Peers(ctx context.Context) ([]PeerStatus, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	dev, err := d.client.Device(d.name)
	if err != nil {
		return nil, fmt.Errorf("read peers of %s: %w", d.name, err)
	}
	out := make([]PeerStatus, 0, len(dev.Peers))
	for _, p := range dev.Peers {
		st := toPeerState(p)
		out = append(out, PeerStatus{
			PublicKey:     p.PublicKey,
			Endpoint:      st.endpoint,
			AllowedIPs:    st.allowed,
			LastHandshake: p.LastHandshakeTime,
			RxBytes:       p.ReceiveBytes,
			TxBytes:       p.TransmitBytes,
		})
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	return out, nil
}

// peerState is a peer reduced to what SetPeers manages, normalised so that
// equal configurations compare equal: addresses unmapped, prefixes masked,
// sorted and deduplicated.
type peerState struct {
	key       wgtypes.Key
	endpoint  netip.AddrPort // zero: none
	allowed   []netip.Prefix
	keepalive time.Duration
}

// normalizePeers validates the desired peers and returns them normalised.
func normalizePeers(self wgtypes.Key, peers []Peer) (map[wgtypes.Key]peerState, error) {
	out := make(map[wgtypes.Key]peerState, len(peers))
	owner := make(map[netip.Prefix]wgtypes.Key)
	for _, p := range peers {
		switch {
		case p.PublicKey == wgtypes.Key{}:
			return nil, fmt.Errorf("%w: peer without public key", ErrInvalid)
		case p.PublicKey == self:
			return nil, fmt.Errorf("%w: peer %s is this device", ErrInvalid, p.PublicKey)
		}
		if _, dup := out[p.PublicKey]; dup {
			return nil, fmt.Errorf("%w: peer %s listed twice", ErrInvalid, p.PublicKey)
		}
		ep := p.Endpoint
		if ep.IsValid() {
			if ep.Port() == 0 || ep.Addr().IsUnspecified() {
				return nil, fmt.Errorf("%w: peer %s endpoint %s", ErrInvalid, p.PublicKey, ep)
			}
			ep = netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port())
		}
		allowed := make([]netip.Prefix, 0, len(p.AllowedIPs))
		for _, a := range p.AllowedIPs {
			if !a.IsValid() {
				return nil, fmt.Errorf("%w: peer %s allowed IP %s", ErrInvalid, p.PublicKey, a)
			}
			a = netip.PrefixFrom(a.Addr().Unmap(), a.Bits()).Masked()
			if o, taken := owner[a]; taken && o != p.PublicKey {
				// WireGuard would silently move it to whichever peer is
				// configured last.
				return nil, fmt.Errorf("%w: allowed IP %s given to peers %s and %s", ErrInvalid, a, o, p.PublicKey)
			}
			owner[a] = p.PublicKey
			allowed = append(allowed, a)
		}
		out[p.PublicKey] = peerState{
			key:       p.PublicKey,
			endpoint:  ep,
			allowed:   sortPrefixes(allowed),
			keepalive: PersistentKeepalive,
		}
	}
	return out, nil
}

// currentPeers converts what the device reports.
func currentPeers(peers []wgtypes.Peer) map[wgtypes.Key]peerState {
	out := make(map[wgtypes.Key]peerState, len(peers))
	for _, p := range peers {
		out[p.PublicKey] = toPeerState(p)
	}
	return out
}

func toPeerState(p wgtypes.Peer) peerState {
	st := peerState{key: p.PublicKey, keepalive: p.PersistentKeepaliveInterval}
	if p.Endpoint != nil {
		ap := p.Endpoint.AddrPort()
		st.endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	for _, n := range p.AllowedIPs {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ones, _ := n.Mask.Size()
		st.allowed = append(st.allowed, netip.PrefixFrom(a.Unmap(), ones).Masked())
	}
	st.allowed = sortPrefixes(st.allowed)
	return st
}

func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(ps)
}

// diffPeers returns the peer changes that turn current into desired, to be
// applied with ReplacePeers=false: removals first, then updates and
// additions, each sorted by key. It is pure.
func diffPeers(current, desired map[wgtypes.Key]peerState) []wgtypes.PeerConfig {
	var removals, rest []wgtypes.PeerConfig
	for k := range current {
		if _, ok := desired[k]; !ok {
			removals = append(removals, wgtypes.PeerConfig{PublicKey: k, Remove: true})
		}
	}
	for k, want := range desired {
		have, ok := current[k]
		if !ok {
			pc := wgtypes.PeerConfig{
				PublicKey:         k,
				ReplaceAllowedIPs: true,
				AllowedIPs:        toIPNets(want.allowed),
			}
			if want.endpoint.IsValid() {
				pc.Endpoint = net.UDPAddrFromAddrPort(want.endpoint)
			}
			ka := want.keepalive
			pc.PersistentKeepaliveInterval = &ka
			rest = append(rest, pc)
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: k, UpdateOnly: true}
		changed := false
		if want.endpoint.IsValid() && want.endpoint != have.endpoint {
			pc.Endpoint = net.UDPAddrFromAddrPort(want.endpoint)
			changed = true
		}
		if want.keepalive != have.keepalive {
			ka := want.keepalive
			pc.PersistentKeepaliveInterval = &ka
			changed = true
		}
		if !slices.Equal(want.allowed, have.allowed) {
			pc.ReplaceAllowedIPs = true
			pc.AllowedIPs = toIPNets(want.allowed)
			changed = true
		}
		if changed {
			rest = append(rest, pc)
		}
	}
	byKey := func(a, b wgtypes.PeerConfig) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) }
	slices.SortFunc(removals, byKey)
	slices.SortFunc(rest, byKey)
	return append(removals, rest...)
}

func toIPNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range ps {
		out = append(out, net.IPNet{
			IP:   net.IP(p.Addr().AsSlice()),
			Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
		})
	}
	return out
}
