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
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	desired, err := normalizePeers(d.pub, peers, d.armed)
	if err != nil {
		return err
	}
	d.scheduleArmingLocked(desired)
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

// normalizePeers validates the desired peers and returns them normalised,
// with the keepalive each gets (armed: see keepaliveFor).
func normalizePeers(self wgtypes.Key, peers []Peer, armed map[wgtypes.Key]bool) (map[wgtypes.Key]peerState, error) {
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
			keepalive: keepaliveFor(self, p.PublicKey, armed[p.PublicKey]),
		}
	}
	return out, nil
}

// keepaliveFor returns the persistent keepalive this device sets on peer.
// Setting one makes WireGuard start a handshake at once, so two hosts that
// learn of each other at the same moment would both start one; crossed
// initiations leave each side a responder waiting for the other, and
// nothing flows until the retry 5 s later (REKEY_TIMEOUT). So the device
// with the smaller public key keeps the peer alive from the start, and the
// other only once it is armed, KeepaliveGrace after adding the peer: by
// then the first side's handshake has come, or (when that side added its
// peer first and its handshake found nobody to answer it) the armed side's
// own starts the session, a second instead of five late.
// BenchmarkFirstConnection, 12 runs each, peers given on both hosts at
// once: a connection right away waited 3.4 s on average (half the runs
// stalled 5 s) with keepalives on both sides from the start, 0.84 s (2 of
// 12 stalled) now; one 100 ms later, as a container's first connection
// comes after gossip, 4.7 s (9 of 12) before, 0.11 s (none) now.
func keepaliveFor(self, peer wgtypes.Key, armed bool) time.Duration {
	if armed || bytes.Compare(self[:], peer[:]) < 0 {
		return PersistentKeepalive
	}
	return 0
}

// scheduleArmingLocked starts the KeepaliveGrace timer of every desired
// peer this device will keep alive only once armed, and forgets the peers
// no longer desired.
func (d *Device) scheduleArmingLocked(desired map[wgtypes.Key]peerState) {
	for key, stop := range d.arming {
		if _, ok := desired[key]; !ok {
			stop()
			delete(d.arming, key)
		}
	}
	for key := range d.armed {
		if _, ok := desired[key]; !ok {
			delete(d.armed, key)
		}
	}
	after := d.afterFunc
	if after == nil {
		after = func(dur time.Duration, f func()) func() bool { return time.AfterFunc(dur, f).Stop }
	}
	for key, p := range desired {
		if p.keepalive != 0 || d.arming[key] != nil {
			continue // kept alive already (smaller key, or armed), or pending
		}
		if d.arming == nil {
			d.arming = make(map[wgtypes.Key]func() bool)
		}
		d.arming[key] = after(KeepaliveGrace, func() { d.arm(key) })
	}
}

// arm turns the keepalive of peer key on, KeepaliveGrace after it was
// added.
func (d *Device) arm(key wgtypes.Key) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.arming[key] == nil {
		return // closed, or the peer was removed meanwhile
	}
	delete(d.arming, key)
	if d.armed == nil {
		d.armed = make(map[wgtypes.Key]bool)
	}
	d.armed[key] = true
	ka := PersistentKeepalive
	if err := d.client.ConfigureDevice(d.name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: key, UpdateOnly: true, PersistentKeepaliveInterval: &ka,
	}}}); err != nil {
		d.log.Warn("turn a peer's keepalive on", "peer", key.String(), "err", err)
	}
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
