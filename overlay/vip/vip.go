// Package vip is Shoal's east-west load balancer: a service's virtual IP,
// inside each container's network namespace, is translated to one of the
// service's ready tasks by nftables DNAT, chosen at random per connection.
// There is no proxy and no IPVS: the kernel rewrites the first packet of a
// connection and conntrack the rest (PLATFORM.md: no measurable cost next
// to going to the task directly).
//
// The whole table is replaced in one netlink batch, which the kernel
// applies atomically: a backend set changes between two connections, never
// during one, and a connection already going to a backend keeps it
// (conntrack), which is what a draining task needs.
//
// The table, in each container's netns:
//
//	table ip shoal-vip {
//	  chain nat-output { type nat hook output priority dstnat;
//	    ip daddr VIP dnat to numgen random mod N map { 0 : B0, 1 : B1, ... } }
//	  chain filter-output { type filter hook output priority filter;
//	    ip daddr VIP meta l4proto tcp reject with tcp reset
//	    ip daddr VIP reject }   # a VIP without ready backends: refused at once
//	}
package vip

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family ip) the balancer owns in every
// container's netns.
const TableName = "shoal-vip"

// icmpPortUnreachable is the ICMP destination-unreachable code "port
// unreachable", what a closed UDP port answers.
const icmpPortUnreachable = 3

// Service is a virtual IP and the ready tasks behind it.
type Service struct {
	VIP      netip.Addr
	Backends []netip.Addr
}

// Apply replaces the balancer's table in the network namespace at nsPath
// with one that sends each VIP to its backends. Services without backends
// are refused (a reset or ICMP unreachable) instead of left to time out.
func Apply(ctx context.Context, nsPath string, services []Service) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, s := range services {
		if !s.VIP.Is4() {
			return fmt.Errorf("virtual IP %v: only IPv4 is supported", s.VIP)
		}
		for _, b := range s.Backends {
			if !b.Is4() {
				return fmt.Errorf("backend %v of %v: only IPv4 is supported", b, s.VIP)
			}
		}
	}
	c, closeNS, err := conn(nsPath)
	if err != nil {
		return err
	}
	defer closeNS()
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
	// add-then-delete makes the delete valid whether or not the table
	// exists; the batch then builds it anew.
	c.AddTable(t)
	c.DelTable(t)
	if len(services) == 0 {
		return flush(c, "delete", nsPath)
	}
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	nat := c.AddChain(&nftables.Chain{
		Name: "nat-output", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &accept,
	})
	filter := c.AddChain(&nftables.Chain{
		Name: "filter-output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	for _, s := range sorted(services) {
		if len(s.Backends) == 0 {
			// TCP gets a reset, anything else ICMP port unreachable.
			tcp := append(matchDaddr(s.VIP),
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
				&expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
			other := append(matchDaddr(s.VIP), &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: icmpPortUnreachable})
			c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: tcp})
			c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: other})
			continue
		}
		m := &nftables.Set{Table: t, Anonymous: true, Constant: true, IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeIPAddr}
		elems := make([]nftables.SetElement, len(s.Backends))
		for i, b := range s.Backends {
			ip := b.As4()
			elems[i] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)), Val: ip[:]}
		}
		if err := c.AddSet(m, elems); err != nil {
			return fmt.Errorf("backends of %v: %w", s.VIP, err)
		}
		exprs := append(matchDaddr(s.VIP),
			&expr.Numgen{Register: 1, Modulus: uint32(len(s.Backends)), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
		)
		c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: exprs})
	}
	return flush(c, "write", nsPath)
}

// Remove deletes the balancer's table from the namespace, if there.
func Remove(ctx context.Context, nsPath string) error {
	return Apply(ctx, nsPath, nil)
}

func flush(c *nftables.Conn, verb, nsPath string) error {
	if err := c.Flush(); err != nil && !(verb == "delete" && errors.Is(err, unix.ENOENT)) {
		return fmt.Errorf("%s nftables table %s in %s: %w", verb, TableName, nsPath, err)
	}
	return nil
}

// conn opens nftables in the namespace at nsPath ("" is the caller's own).
func conn(nsPath string) (*nftables.Conn, func(), error) {
	if nsPath == "" {
		c, err := nftables.New()
		return c, func() {}, err
	}
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		ns.Close()
		return nil, nil, fmt.Errorf("open nftables in %s: %w", nsPath, err)
	}
	return c, func() { ns.Close() }, nil
}

// sorted returns the services ordered by VIP with their backends ordered,
// so the same input always writes the same table.
func sorted(services []Service) []Service {
	out := make([]Service, len(services))
	for i, s := range services {
		b := append([]netip.Addr(nil), s.Backends...)
		sort.Slice(b, func(i, j int) bool { return b[i].Less(b[j]) })
		out[i] = Service{VIP: s.VIP, Backends: b}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VIP.Less(out[j].VIP) })
	return out
}

// matchDaddr matches "ip daddr a".
func matchDaddr(a netip.Addr) []expr.Any {
	ip := a.As4()
	return []expr.Any{
		// IPv4 destination address: 4 bytes at offset 16 of the header.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
	}
}
