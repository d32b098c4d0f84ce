package gossip

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"
)

// ErrInvalidState is returned by SetLocal for a NodeState it cannot
// publish.
var ErrInvalidState = errors.New("invalid node state")

// Endpoint is one container's address on one overlay network. A task on
// several networks has an endpoint on each: (TaskID, NetworkID) is unique
// within a NodeState.
type Endpoint struct {
	TaskID      string
	ServiceID   string
	ServiceName string
	NetworkID   string
	Addr        netip.Addr
	MAC         net.HardwareAddr
	// Ready is the task's readiness: only ready endpoints are DNS answers
	// and VIP or mesh backends; every endpoint gets its neighbour and FDB
	// entries.
	Ready bool
	// Aliases are the other names the endpoint answers to on NetworkID.
	Aliases []string
}

// NodeState is everything a host announces about itself: its overlay
// identity and its endpoints. Only the host it describes (its owner)
// writes it, through SetLocal; every other member keeps the newest
// version it heard of.
type NodeState struct {
	NodeID string
	// Version orders the owner's states: a member keeps a state only
	// until it hears of a higher version from the same node. SetLocal
	// assigns it (see versionClock).
	Version uint64
	// VTEP is the underlay address other hosts send this host's VXLAN to.
	VTEP netip.Addr
	// WireGuardKey is the host's WireGuard public key; zero when it has
	// none.
	WireGuardKey [32]byte
	// WireGuardEndpoint is where the host's WireGuard listens; zero when it
	// has none.
	WireGuardEndpoint netip.AddrPort
	Endpoints         []Endpoint
}

// Limits of a NodeState, checked by SetLocal, so that every member can
// hold and reassemble what another sends (see maxFragments).
const (
	// maxStateSize bounds an encoded state: about 10,000 endpoints, far
	// more than one host runs, and still only a few hundred broadcast
	// fragments.
	maxStateSize = 512 << 10
	// maxNameLen bounds ids, names and aliases: ids are 25 characters, DNS
	// names at most 253.
	maxNameLen = 255
	// maxMACLen is the longest hardware address net.ParseMAC accepts
	// (InfiniBand); overlay MACs are 6 bytes.
	maxMACLen = 20
)

// clone returns a deep copy of s.
func (s NodeState) clone() NodeState {
	c := s
	c.Endpoints = slices.Clone(s.Endpoints)
	for i := range c.Endpoints {
		e := &c.Endpoints[i]
		e.MAC = slices.Clone(e.MAC)
		e.Aliases = slices.Clone(e.Aliases)
	}
	return c
}

// normalize puts s in the canonical form SetLocal publishes and decoding
// returns: endpoints sorted by network then task, IPv4 addresses
// unmapped, empty slices nil. Two states with the same content normalize
// to the same encoding. s must be a copy the caller owns.
func (s *NodeState) normalize() {
	s.VTEP = s.VTEP.Unmap()
	if s.WireGuardEndpoint.IsValid() {
		s.WireGuardEndpoint = netip.AddrPortFrom(s.WireGuardEndpoint.Addr().Unmap(), s.WireGuardEndpoint.Port())
	}
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		e.Addr = e.Addr.Unmap()
		if len(e.MAC) == 0 {
			e.MAC = nil
		}
		if len(e.Aliases) == 0 {
			e.Aliases = nil
		}
	}
	if len(s.Endpoints) == 0 {
		s.Endpoints = nil
	}
	slices.SortFunc(s.Endpoints, func(a, b Endpoint) int {
		return cmp.Or(cmp.Compare(a.NetworkID, b.NetworkID), cmp.Compare(a.TaskID, b.TaskID))
	})
}

// validate checks a normalized state against what the encoding and the
// data plane need.
func (s *NodeState) validate() error {
	if s.NodeID == "" || len(s.NodeID) > maxNameLen {
		return fmt.Errorf("%w: node id %q", ErrInvalidState, s.NodeID)
	}
	if s.VTEP.Zone() != "" {
		return fmt.Errorf("%w: VTEP %s has a zone", ErrInvalidState, s.VTEP)
	}
	if s.WireGuardEndpoint.IsValid() && s.WireGuardEndpoint.Addr().Zone() != "" {
		return fmt.Errorf("%w: WireGuard endpoint %s has a zone", ErrInvalidState, s.WireGuardEndpoint)
	}
	for i, e := range s.Endpoints {
		switch {
		case e.TaskID == "":
			return fmt.Errorf("%w: endpoint %d has no task id", ErrInvalidState, i)
		case !e.Addr.IsValid() || e.Addr.Zone() != "":
			return fmt.Errorf("%w: task %s: address %q", ErrInvalidState, e.TaskID, e.Addr)
		case len(e.MAC) > maxMACLen:
			return fmt.Errorf("%w: task %s: MAC %s", ErrInvalidState, e.TaskID, e.MAC)
		}
		for _, str := range append([]string{e.TaskID, e.ServiceID, e.ServiceName, e.NetworkID}, e.Aliases...) {
			if len(str) > maxNameLen {
				return fmt.Errorf("%w: task %s: %q is longer than %d bytes", ErrInvalidState, e.TaskID, str, maxNameLen)
			}
		}
		if i > 0 {
			if p := s.Endpoints[i-1]; p.NetworkID == e.NetworkID && p.TaskID == e.TaskID {
				return fmt.Errorf("%w: task %s has two endpoints on network %s", ErrInvalidState, e.TaskID, e.NetworkID)
			}
		}
	}
	return nil
}

// versionClock issues a node's state versions: a hybrid of the wall clock
// (milliseconds since the Unix epoch, in the high 48 bits) and a counter
// (the low 16 bits). A version is greater than every version the clock
// issued before, and, because of the wall-clock part, than those a
// previous run of the daemon issued: the new run starts with an empty
// clock, so a counter alone would start again below what the other
// members hold. If the wall clock was set back across a restart, the
// member hears its old, higher versions from the others and issues
// versions above them (see Member.refute). 2^48 ms is 8,900 years.
type versionClock struct {
	last uint64 // the last version issued
}

// next returns a version greater than the last one issued and than
// floor (a version of this node seen elsewhere).
func (c *versionClock) next(now time.Time, floor uint64) uint64 {
	v := uint64(0)
	if ms := now.UnixMilli(); ms > 0 {
		v = uint64(ms) << 16
	}
	v = max(v, c.last+1, floor+1)
	c.last = v
	return v
}
