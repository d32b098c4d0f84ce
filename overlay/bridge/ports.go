package bridge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

const (
	// portsTablePrefix names the nftables table of a driver's published
	// ports, beside its bridge table: the two are written independently, so
	// publishing a port never rewrites the bridge's masquerade rules.
	portsTablePrefix = "shoal-ports-"

	// Chain names in the ports table.
	chainPortsPrerouting  = "prerouting"
	chainPortsOutput      = "output"
	chainPortsPostrouting = "postrouting"
	chainPorts            = "ports"

	// ctStatusDNAT is IPS_DST_NAT (bit 5 of the conntrack status): the
	// connection's destination was rewritten.
	ctStatusDNAT = 1 << 5
)

// loopbackNet is 127.0.0.0/8, the host's loopback addresses.
var loopbackNet = netip.MustParsePrefix("127.0.0.0/8")

// Package errors of the port table, checked with errors.Is.
var (
	// ErrInvalidMapping is returned by PortTable.Apply for a mapping it
	// cannot publish: a zero port, a target that is not an IPv4 address and
	// port, an unknown protocol, or a host port and protocol published twice.
	ErrInvalidMapping = errors.New("invalid port mapping")
	// ErrPortInUse is returned by PortTable.CheckFree for a host port that a
	// socket of the host is bound to.
	ErrPortInUse = errors.New("host port in use")
)

// Protocol is the transport protocol of a published port; its value is the
// IP protocol number.
type Protocol uint8

// The protocols a port can be published for.
const (
	TCP Protocol = unix.IPPROTO_TCP
	UDP Protocol = unix.IPPROTO_UDP
)

// String returns "tcp" or "udp".
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("protocol(%d)", uint8(p))
}

// PortMapping publishes a port of the host: connections (TCP) or datagrams
// (UDP) to HostPort on any of the host's addresses go to Target, a
// container's address and port.
type PortMapping struct {
	Protocol Protocol
	HostPort uint16
	Target   netip.AddrPort
}

// String returns "8080/tcp->172.29.0.5:80".
func (m PortMapping) String() string {
	return fmt.Sprintf("%d/%s->%s", m.HostPort, m.Protocol, m.Target)
}

// PortTable publishes host ports on the containers of one bridge through
// the nftables table "shoal-ports-<bridge>" (family ip) in the bridge's
// host namespace. Apply is given the full desired set every time and
// replaces the table in one netlink batch, so repeating it (after a
// restart, after a failed write) converges, and a mapping left out of the
// set is gone. What the table holds depends on the last set only.
//
// A published port shadows a host process listening on the same port (the
// DNAT happens before the socket lookup), as Docker's published ports do
// without its userland proxy. CheckFree finds such a process beforehand.
type PortTable struct {
	name   string       // nftables table
	bridge string       // bridge link name
	subnet netip.Prefix // the bridge's subnet, masked
	hostNS string       // path of the host netns
	log    *slog.Logger

	mu sync.Mutex // serialises Apply and guards following
	// applied is the set of the last successful Apply, sorted; valid once
	// known is true. It only decides when to sweep conntrack.
	applied []PortMapping
	known   bool
}

// Ports returns the driver's port table.
func (d *Driver) Ports() *PortTable { return d.ports }

// newPortTable returns the port table of the bridge cfg describes; cfg has
// its defaults applied.
func newPortTable(cfg Config, hostNS string, log *slog.Logger) *PortTable {
	return &PortTable{
		name:   portsTablePrefix + cfg.Name,
		bridge: cfg.Name,
		subnet: cfg.Subnet.Masked(),
		hostNS: hostNS,
		log:    log,
	}
}

// Name returns the nftables table's name, "shoal-ports-<bridge>".
func (p *PortTable) Name() string { return p.name }

// Apply makes mappings the complete set of published ports, atomically:
// packets see either the old table or the new one, and a mapping present in
// both keeps working throughout. An empty set deletes the table. Identical
// duplicates are published once; the same host port and protocol mapped to
// two targets is ErrInvalidMapping, and nothing is changed. Once a UDP
// mapping is gone (or, on the first Apply of a process, in case one went
// with an earlier process), the conntrack entries still holding its flows
// are deleted too; see sweepUDP.
func (p *PortTable) Apply(ctx context.Context, mappings []PortMapping) error {
	ms, err := normalize(mappings)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publish ports: %w", err)
	}
	ns, err := netns.GetFromPath(p.hostNS)
	if err != nil {
		return fmt.Errorf("publish ports: open host netns %s: %w", p.hostNS, err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("publish ports: open nftables in host netns: %w", err)
	}
	t := &nftables.Table{Name: p.name, Family: nftables.TableFamilyIPv4}
	// add-then-delete makes the delete valid whether or not the table exists.
	c.AddTable(t)
	c.DelTable(t)
	if len(ms) > 0 {
		p.addTable(c, t, ms)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("publish ports: write nftables table %s: %w", p.name, err)
	}
	p.log.Debug("published ports", "table", p.name, "mappings", ms)
	if !p.known || droppedUDP(p.applied, ms) {
		// The table is right whatever happens here: a failed sweep only
		// leaves old UDP flows to time out.
		if n, err := p.sweepUDP(ns, ms); err != nil {
			p.log.Warn("delete conntrack entries of unpublished UDP ports", "table", p.name, "err", err)
		} else if n > 0 {
			p.log.Debug("deleted conntrack entries of unpublished UDP ports", "table", p.name, "entries", n)
		}
	}
	p.applied, p.known = ms, true
	return nil
}

// droppedUDP reports whether a UDP mapping of old is not in new.
func droppedUDP(old, new []PortMapping) bool {
	for _, m := range old {
		if m.Protocol == UDP && !slices.Contains(new, m) {
			return true
		}
	}
	return false
}

// sweepUDP deletes the conntrack entries of UDP flows that a mapping not in
// ms DNATed to the bridge's subnet, and returns how many it deleted. A UDP
// flow has no end: without this, a client that keeps its source port (a
// resolver, a game, a VPN) would keep reaching the old target until its
// entry times out, even once the port is published on another container.
// TCP needs nothing: old connections end with their container.
func (p *PortTable) sweepUDP(ns netns.NsHandle, ms []PortMapping) (uint, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, fmt.Errorf("open netlink in host netns: %w", err)
	}
	defer h.Close()
	keep := make(map[PortMapping]bool, len(ms))
	for _, m := range ms {
		keep[m] = true
	}
	return h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, staleUDPFilter{subnet: p.subnet, keep: keep})
}

// staleUDPFilter matches the UDP flows DNATed into subnet by a mapping not
// in keep.
type staleUDPFilter struct {
	subnet netip.Prefix
	keep   map[PortMapping]bool
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f staleUDPFilter) MatchConntrackFlow(fl *netlink.ConntrackFlow) bool {
	if fl.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	target, ok := netip.AddrFromSlice(fl.Reverse.SrcIP)
	if !ok || !f.subnet.Contains(target.Unmap()) {
		return false
	}
	dst, ok := netip.AddrFromSlice(fl.Forward.DstIP)
	if !ok || (dst.Unmap() == target.Unmap() && fl.Forward.DstPort == fl.Reverse.SrcPort) {
		return false // sent to the container itself: not DNATed
	}
	return !f.keep[PortMapping{UDP, fl.Forward.DstPort, netip.AddrPortFrom(target.Unmap(), fl.Reverse.SrcPort)}]
}

// CheckFree returns ErrPortInUse when a socket of the host is bound to the
// host port of one of ms, for its protocol and any IPv4 address: publishing
// the port would shadow that process (shoald's own cluster ports
// included). It finds out by binding each port for an instant in the host
// namespace, so it sees the ports of listeners, not the ports this table
// publishes (nothing of the host listens on those). A process that binds
// the port after the check is shadowed all the same.
func (p *PortTable) CheckFree(ctx context.Context, ms []PortMapping) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("check host ports: %w", err)
	}
	return netnsutil.OnLockedThread(func() error {
		if err := netnsutil.Enter(p.hostNS); err != nil {
			return fmt.Errorf("check host ports in the host netns: %w", err)
		}
		for _, m := range ms {
			if err := bindProbe(m); err != nil {
				return err
			}
		}
		return nil
	})
}

// bindProbe binds m's host port on every IPv4 address and lets it go.
func bindProbe(m PortMapping) error {
	addr := fmt.Sprintf("0.0.0.0:%d", m.HostPort)
	var c io.Closer
	var err error
	switch m.Protocol {
	case TCP:
		c, err = net.Listen("tcp4", addr)
	case UDP:
		c, err = net.ListenPacket("udp4", addr)
	default:
		return fmt.Errorf("%w: %s: protocol must be tcp or udp", ErrInvalidMapping, m)
	}
	switch {
	case errors.Is(err, unix.EADDRINUSE):
		return fmt.Errorf("%w: %d/%s: a socket of the host is bound to it", ErrPortInUse, m.HostPort, m.Protocol)
	case err != nil:
		return fmt.Errorf("check host port %d/%s: %w", m.HostPort, m.Protocol, err)
	}
	return c.Close()
}

// normalize validates mappings and returns them sorted by protocol and host
// port without identical duplicates, so equal sets give equal tables.
func normalize(mappings []PortMapping) ([]PortMapping, error) {
	ms := slices.Clone(mappings)
	for _, m := range ms {
		switch {
		case m.Protocol != TCP && m.Protocol != UDP:
			return nil, fmt.Errorf("%w: %s: protocol must be tcp or udp", ErrInvalidMapping, m)
		case m.HostPort == 0:
			return nil, fmt.Errorf("%w: %s: host port must not be 0", ErrInvalidMapping, m)
		case !m.Target.IsValid() || !m.Target.Addr().Is4() || m.Target.Port() == 0:
			return nil, fmt.Errorf("%w: %s: target must be an IPv4 address and a non-zero port", ErrInvalidMapping, m)
		}
	}
	slices.SortFunc(ms, func(a, b PortMapping) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.HostPort, b.HostPort),
			a.Target.Addr().Compare(b.Target.Addr()), cmp.Compare(a.Target.Port(), b.Target.Port()))
	})
	ms = slices.Compact(ms)
	for i := 1; i < len(ms); i++ {
		if ms[i].Protocol == ms[i-1].Protocol && ms[i].HostPort == ms[i-1].HostPort {
			return nil, fmt.Errorf("%w: host port %d/%s published twice: to %s and to %s",
				ErrInvalidMapping, ms[i].HostPort, ms[i].Protocol, ms[i-1].Target, ms[i].Target)
		}
	}
	return ms, nil
}

// addTable adds the table's chains and rules to the batch:
//
//	table ip shoal-ports-<bridge> {
//	  chain prerouting { type nat hook prerouting priority dstnat; policy accept;
//	    fib daddr type local jump ports }
//	  chain output { type nat hook output priority dstnat; policy accept;
//	    fib daddr type local jump ports }
//	  chain ports {
//	    meta l4proto tcp th dport 8080 dnat to 172.29.0.5:80
//	    ... one rule per mapping }
//	  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//	    oifname "<bridge>" ct status dnat ip saddr 127.0.0.0/8 masquerade
//	    oifname "<bridge>" ct status dnat ip saddr <subnet> masquerade }
//	}
//
// "fib daddr type local" matches every address of the host (its uplinks,
// the bridge's gateway, 127.0.0.0/8) and nothing else, so traffic passing
// through the host to another destination is never redirected. prerouting
// catches packets arriving from outside and from containers; output catches
// the host's own connections. Replies return through conntrack, which
// reverses the DNAT: the container's default route is the host.
//
// Masquerade is needed in two cases only, and keeps the client's address
// in every other: the host's own connections from a loopback address (a
// container cannot answer 127.0.0.1; the bridge's route_localnet lets the
// kernel route such a packet out of the bridge at all, see Driver.Setup),
// and a container reaching a published port of its own host (hairpin),
// whose reply would otherwise go straight back over the bridge, un-NATed.
func (p *PortTable) addTable(c *nftables.Conn, t *nftables.Table, ms []PortMapping) {
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	ports := c.AddChain(&nftables.Chain{Name: chainPorts, Table: t})
	for _, hook := range []struct {
		name string
		hook *nftables.ChainHook
	}{
		{chainPortsPrerouting, nftables.ChainHookPrerouting},
		{chainPortsOutput, nftables.ChainHookOutput},
	} {
		ch := c.AddChain(&nftables.Chain{
			Name: hook.name, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: hook.hook, Priority: nftables.ChainPriorityNATDest, Policy: &accept,
		})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(matchDaddrLocal(),
			&expr.Verdict{Kind: expr.VerdictJump, Chain: chainPorts})})
	}
	for _, m := range ms {
		c.AddRule(&nftables.Rule{Table: t, Chain: ports, Exprs: dnatRule(m)})
	}
	post := c.AddChain(&nftables.Chain{
		Name: chainPortsPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	})
	for _, src := range []netip.Prefix{loopbackNet, p.subnet} {
		ex := matchIfname(expr.MetaKeyOIFNAME, expr.CmpOpEq, p.bridge)
		ex = append(ex, matchCtDNAT()...)
		ex = append(ex, matchSaddr(src)...)
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: append(ex, &expr.Masq{})})
	}
}

// dnatRule is "meta l4proto <proto> th dport <host port> dnat to <target>".
func dnatRule(m PortMapping) []expr.Any {
	addr := m.Target.Addr().As4()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(m.Protocol)}},
		// The destination port: 2 bytes at offset 2 of the TCP or UDP header.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(m.HostPort)},
		&expr.Immediate{Register: 1, Data: addr[:]},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(m.Target.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

// matchDaddrLocal matches "fib daddr type local".
func matchDaddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

// matchCtDNAT matches "ct status dnat".
func matchCtDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ctStatusDNAT),
			Xor:  make([]byte, 4),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}
