// Package ipam allocates overlay network resources: subnets from the
// cluster's address pools, VXLAN network identifiers, and addresses inside
// a subnet. It is pure: callers pass what is in use (read from the store in
// the same transaction that records the result), so an allocation lives in
// Raft, survives a leader change, and is freed by deleting what held it.
package ipam

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

const (
	// DefaultPool is where overlay subnets come from when the cluster names
	// no pool: private space unlikely to clash with an on-prem LAN's
	// 192.168/16 or the node-local bridge's 172.29/16.
	DefaultPool = "10.10.0.0/16"
	// DefaultSubnetSize is the prefix length of a pool subnet: 254
	// addresses, plenty for the services of one network on a small
	// cluster, and 256 networks per /16 pool.
	DefaultSubnetSize = 24
	// MinVNI is the first VXLAN network identifier handed out; lower ones
	// are left to other VXLAN users on the same underlay (Docker starts at
	// 4096 too).
	MinVNI = 4096
	// MaxVNI is the largest 24-bit VNI.
	MaxVNI = 1<<24 - 1
)

// ErrExhausted is returned when nothing is left to allocate.
var ErrExhausted = errors.New("exhausted")

// AllocateSubnet returns the first subnet of size bits in pools that
// overlaps none of used.
func AllocateSubnet(pools []netip.Prefix, size int, used []netip.Prefix) (netip.Prefix, error) {
	for _, pool := range pools {
		pool = pool.Masked()
		if size < pool.Bits() || size > 30 || !pool.Addr().Is4() {
			return netip.Prefix{}, fmt.Errorf("subnet size /%d does not fit pool %s (IPv4, /%d to /30)", size, pool, pool.Bits())
		}
		for cand := netip.PrefixFrom(pool.Addr(), size); pool.Contains(cand.Addr()); {
			clash := false
			for _, u := range used {
				if u.Overlaps(cand) {
					clash = true
					break
				}
			}
			if !clash {
				return cand, nil
			}
			next, ok := nextPrefix(cand)
			if !ok {
				break
			}
			cand = next
		}
	}
	return netip.Prefix{}, fmt.Errorf("no free /%d subnet left in pools %v: %w", size, pools, ErrExhausted)
}

// nextPrefix returns the prefix of the same size right after p.
func nextPrefix(p netip.Prefix) (netip.Prefix, bool) {
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	step := uint32(1) << (32 - p.Bits())
	if v+step < v {
		return netip.Prefix{}, false
	}
	v += step
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), p.Bits()), true
}

// AllocateVNI returns the lowest VNI from MinVNI not in used.
func AllocateVNI(used map[uint32]bool) (uint32, error) {
	for v := uint32(MinVNI); v <= MaxVNI; v++ {
		if !used[v] {
			return v, nil
		}
	}
	return 0, fmt.Errorf("no free VNI: %w", ErrExhausted)
}

// Gateway returns the subnet's first host address, the default gateway.
func Gateway(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// AddrSet tracks the addresses in use in one subnet. The zero value is not
// usable; create it with NewAddrSet.
type AddrSet struct {
	subnet netip.Prefix
	used   map[netip.Addr]bool
	next   netip.Addr // where the next search starts
}

// NewAddrSet returns the set for subnet with the network address, the
// broadcast address and the gateway taken.
func NewAddrSet(subnet netip.Prefix, gateway netip.Addr) *AddrSet {
	subnet = subnet.Masked()
	s := &AddrSet{subnet: subnet, used: make(map[netip.Addr]bool), next: subnet.Addr()}
	s.used[subnet.Addr()] = true
	s.used[broadcast(subnet)] = true
	s.used[gateway] = true
	return s
}

// broadcast returns the subnet's last address.
func broadcast(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Subnet returns the set's subnet.
func (s *AddrSet) Subnet() netip.Prefix { return s.subnet }

// Reserve marks addr used; addresses outside the subnet are ignored.
func (s *AddrSet) Reserve(addr netip.Addr) {
	if s.subnet.Contains(addr) {
		s.used[addr] = true
	}
}

// Allocate takes the lowest free address, searching on from the last one
// taken so a freed address is not handed out again at once (a stale
// neighbour entry on some host could still point at it).
func (s *AddrSet) Allocate() (netip.Prefix, error) {
	for range 2 {
		for a := s.next; s.subnet.Contains(a); a = a.Next() {
			if !s.used[a] {
				s.used[a] = true
				s.next = a.Next()
				return netip.PrefixFrom(a, s.subnet.Bits()), nil
			}
		}
		s.next = s.subnet.Addr()
	}
	return netip.Prefix{}, fmt.Errorf("no free address left in %s: %w", s.subnet, ErrExhausted)
}

// MAC returns the MAC address of an overlay endpoint: 02:42 (locally
// administered) followed by its IPv4 address, as Docker does, so it needs no
// allocation of its own and is unique wherever the address is.
func MAC(addr netip.Addr) net.HardwareAddr {
	a := addr.As4()
	return net.HardwareAddr{0x02, 0x42, a[0], a[1], a[2], a[3]}
}

// ValidatePools checks address pools (IPv4 CIDRs) and the subnet size taken
// from them; the error says which value is wrong and what was expected.
func ValidatePools(pools []string, size int) error {
	if size < 8 || size > 29 {
		return fmt.Errorf("subnet size /%d: expected /8 to /29", size)
	}
	for _, s := range pools {
		p, err := netip.ParsePrefix(s)
		switch {
		case err != nil || !p.Addr().Is4():
			return fmt.Errorf("address pool %q: expected an IPv4 CIDR like 10.10.0.0/16", s)
		case p != p.Masked():
			return fmt.Errorf("address pool %s has host bits set; did you mean %s?", s, p.Masked())
		case p.Bits() > size:
			return fmt.Errorf("address pool %s is smaller than its subnets (/%d)", s, size)
		}
	}
	return nil
}
