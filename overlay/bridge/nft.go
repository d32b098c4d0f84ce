package bridge

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Chain names in the driver's table.
const (
	chainPostrouting = "postrouting"
	chainForward     = "forward"
	chainGuard       = "guard"
)

// TableName returns the name of the nftables table (family ip) owned by the
// driver: "shoal-bridge-<Name>".
func (d *Driver) TableName() string { return tablePrefix + d.cfg.Name }

// applyTable replaces the driver's table with the desired one in a single
// netlink batch: the kernel applies it atomically, so packets never see a
// half-written table, and a stale table from an older daemon is replaced.
//
// The table:
//
//	table ip shoal-bridge-<Name> {
//	  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//	    ip saddr <Subnet> oifname != "<Name>" masquerade }
//	  chain forward { type filter hook forward priority filter; policy accept;
//	    iifname "<Name>" accept
//	    oifname "<Name>" ct state established,related accept }
//	  chain guard { type filter hook prerouting priority raw; policy accept;
//	    iifname "<Name>" ip saddr 127.0.0.0/8 drop
//	    iifname "<Name>" ip daddr 127.0.0.0/8 drop }
//	}
//
// "iifname <Name>" covers container-to-container traffic too: br_netfilter
// (on by default in every netns) passes bridged IPv4 frames through the ip
// forward hook with both interface names set to the bridge. An accept here
// cannot overrule a drop in another table (nftables runs every base chain),
// so the forward chain keeps policy accept and never drops itself.
//
// The guard undoes what route_localnet (see Setup) would otherwise allow: a
// container sending to or from a loopback address through the bridge. It
// runs at raw priority, before conntrack reverses any NAT, so the replies to
// the host's masqueraded loopback connections (addressed to the gateway on
// the wire) pass.
func (d *Driver) applyTable(ns netns.NsHandle) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("open nftables in host netns: %w", err)
	}
	t := &nftables.Table{Name: d.TableName(), Family: nftables.TableFamilyIPv4}
	// add-then-delete makes the delete valid whether or not the table exists.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	post := c.AddChain(&nftables.Chain{
		Name: chainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	})
	fwd := c.AddChain(&nftables.Chain{
		Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	guard := c.AddChain(&nftables.Chain{
		Name: chainGuard, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &accept,
	})
	for _, r := range d.rules(t, post, fwd) {
		c.AddRule(r)
	}
	for _, r := range d.guardRules(t, guard) {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write nftables table %s: %w", t.Name, err)
	}
	return nil
}

// rules computes the rules of the table; see applyTable.
func (d *Driver) rules(t *nftables.Table, post, fwd *nftables.Chain) []*nftables.Rule {
	masq := append(matchSaddr(d.cfg.Subnet),
		matchIfname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, d.cfg.Name)...)
	masq = append(masq, &expr.Masq{})

	out := append(matchIfname(expr.MetaKeyIIFNAME, expr.CmpOpEq, d.cfg.Name),
		&expr.Verdict{Kind: expr.VerdictAccept})

	ret := append(matchIfname(expr.MetaKeyOIFNAME, expr.CmpOpEq, d.cfg.Name), matchCtEstablished()...)
	ret = append(ret, &expr.Verdict{Kind: expr.VerdictAccept})

	return []*nftables.Rule{
		{Table: t, Chain: post, Exprs: masq},
		{Table: t, Chain: fwd, Exprs: out},
		{Table: t, Chain: fwd, Exprs: ret},
	}
}

// guardRules computes the guard chain's rules; see applyTable.
func (d *Driver) guardRules(t *nftables.Table, guard *nftables.Chain) []*nftables.Rule {
	src := append(matchIfname(expr.MetaKeyIIFNAME, expr.CmpOpEq, d.cfg.Name), matchSaddr(loopbackNet)...)
	dst := append(matchIfname(expr.MetaKeyIIFNAME, expr.CmpOpEq, d.cfg.Name), matchDaddr(loopbackNet)...)
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	return []*nftables.Rule{
		{Table: t, Chain: guard, Exprs: append(src, drop)},
		{Table: t, Chain: guard, Exprs: append(dst, drop)},
	}
}

// deleteTable removes the driver's table if it exists, in one batch.
func (d *Driver) deleteTable(ns netns.NsHandle) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("open nftables in host netns: %w", err)
	}
	t := &nftables.Table{Name: d.TableName(), Family: nftables.TableFamilyIPv4}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete nftables table %s: %w", t.Name, err)
	}
	return nil
}

// matchSaddr matches "ip saddr p".
func matchSaddr(p netip.Prefix) []expr.Any {
	// IPv4 source address: 4 bytes at offset 12 of the network header.
	return matchAddr(12, p)
}

// matchDaddr matches "ip daddr p".
func matchDaddr(p netip.Prefix) []expr.Any {
	// IPv4 destination address: 4 bytes at offset 16 of the network header.
	return matchAddr(16, p)
}

func matchAddr(offset uint32, p netip.Prefix) []expr.Any {
	mask := ipNet(p).Mask
	network := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: network[:]},
	}
}

// matchIfname matches "iifname/oifname op name".
func matchIfname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifname(name)},
	}
}

// matchCtEstablished matches "ct state established,related".
func matchCtEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  make([]byte, 4),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// ifname encodes an interface name as the kernel compares it: NUL-padded to
// IFNAMSIZ (16) bytes.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
