package vxlan

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// chainForward runs at the forward hook: what the host routes between the
// WireGuard interface and the uplinks.
const chainForward = "forward"

// nftRule is one rule of the isolation table. Its comment says what it does
// and, with the rule's position, stands for its expressions: syncRoutedTable
// compares the comments read back from the kernel with the wanted ones and
// leaves a table that matches alone (its counters too).
type nftRule struct {
	chain   string
	comment string
	exprs   []expr.Any
}

// routedRules computes the isolation table for the encrypted networks nets
// (see syncRoutedTable). It depends only on the Config and nets, which are
// read back from the kernel, so a restarted driver computes the same table.
func (d *Driver) routedRules(nets []routedNet) []nftRule {
	wg, ups := d.cfg.WireGuardIf, d.uplinkWildcard()
	var rs []nftRule
	if wg != "" {
		for _, n := range nets {
			both := append(matchSaddr(n.subnet), matchDaddr(n.subnet)...)
			rs = append(rs,
				nftRule{chainForward, fmt.Sprintf("accept %s to %s %s", wg, n.uplink, n.subnet),
					concat(matchIf(expr.MetaKeyIIFNAME, wg), matchIf(expr.MetaKeyOIFNAME, n.uplink), matchIPv4(), both, accept())},
				nftRule{chainForward, fmt.Sprintf("accept %s to %s %s", n.uplink, wg, n.subnet),
					concat(matchIf(expr.MetaKeyIIFNAME, n.uplink), matchIf(expr.MetaKeyOIFNAME, wg), matchIPv4(), both, accept())},
			)
		}
		rs = append(rs,
			nftRule{chainForward, "drop other from " + wg, concat(matchIf(expr.MetaKeyIIFNAME, wg), countDrop())},
			nftRule{chainForward, "drop other to " + wg, concat(matchIf(expr.MetaKeyOIFNAME, wg), countDrop())},
		)
	}
	return append(rs,
		nftRule{chainForward, "drop other from " + ups + "*", concat(matchIfPrefix(expr.MetaKeyIIFNAME, ups), countDrop())},
		nftRule{chainForward, "drop other to " + ups + "*", concat(matchIfPrefix(expr.MetaKeyOIFNAME, ups), countDrop())},
		nftRule{chainInput, "drop from " + ups + "* to the host", concat(matchIfPrefix(expr.MetaKeyIIFNAME, ups), countDrop())},
	)
}

// syncRoutedTable makes the host's isolation table the one nets need,
// replacing it in one transaction when it differs, and deletes it when nets
// is empty:
//
//	table inet <prefix>-wgnet {
//	  chain forward { type filter hook forward priority filter; policy accept;
//	    iifname "<wg>" oifname "<uplink N>" ip saddr S_N ip daddr S_N accept
//	    iifname "<uplink N>" oifname "<wg>" ip saddr S_N ip daddr S_N accept
//	    ... (both for every encrypted network N)
//	    iifname "<wg>" counter drop
//	    oifname "<wg>" counter drop
//	    iifname "<prefix>u*" counter drop
//	    oifname "<prefix>u*" counter drop }
//	  chain input { type filter hook input priority filter; policy accept;
//	    iifname "<prefix>u*" counter drop }
//	}
//
// The uplink fixes which network a packet belongs to, so a packet passes
// only between WireGuard and its network's sandbox, with both addresses in
// that network's subnet. Nothing is forwarded between two uplinks, between
// the underlay and an uplink, or between WireGuard and anything else, and a
// container cannot reach the host's own services through its uplink. A drop
// here is final whatever other tables accept; an accept does not overrule
// another table's drop (a FORWARD policy of drop elsewhere, as Docker sets,
// must let this traffic through).
func (d *Driver) syncRoutedTable(host *nsHandle, nets []routedNet) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(host.ns)))
	if err != nil {
		return fmt.Errorf("open nftables in host netns: %w", err)
	}
	t := &nftables.Table{Name: d.WireGuardTableName(), Family: nftables.TableFamilyINet}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nftables tables in host netns: %w", err)
	}
	exists := slices.ContainsFunc(tables, func(o *nftables.Table) bool { return o.Name == t.Name })
	if len(nets) == 0 {
		if !exists {
			return nil
		}
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("delete nftables table %s: %w", t.Name, err)
		}
		d.log.Info("deleted isolation table", "table", t.Name)
		return nil
	}
	want := d.routedRules(nets)
	if exists && slices.Equal(readComments(c, t), comments(want)) {
		return nil
	}
	// add-then-delete makes the delete valid whether or not the table exists.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	chains := map[string]*nftables.Chain{
		chainForward: c.AddChain(&nftables.Chain{
			Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
		}),
		chainInput: c.AddChain(&nftables.Chain{
			Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
		}),
	}
	for _, r := range want {
		c.AddRule(&nftables.Rule{
			Table: t, Chain: chains[r.chain], Exprs: r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment),
		})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("write nftables table %s: %w", t.Name, err)
	}
	d.log.Info("isolation table written", "table", t.Name, "encrypted_networks", len(nets))
	return nil
}

// comments lists "<chain>: <comment>" of rs, in order.
func comments(rs []nftRule) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.chain+": "+r.comment)
	}
	return out
}

// readComments lists "<chain>: <comment>" of the rules of table t's chains,
// in order, as comments does; nil if they cannot be read (the table is then
// rewritten).
func readComments(c *nftables.Conn, t *nftables.Table) []string {
	var out []string
	for _, chain := range []string{chainForward, chainInput} {
		rules, err := c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil {
			return nil
		}
		for _, r := range rules {
			s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			out = append(out, chain+": "+s)
		}
	}
	return out
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// matchIf matches "iifname/oifname name".
func matchIf(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

// matchIfPrefix matches "iifname/oifname prefix*": nft compares only the
// prefix's bytes, without the padding.
func matchIfPrefix(key expr.MetaKey, prefix string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(prefix)},
	}
}

// matchIPv4 matches IPv4 packets ("meta nfproto ipv4"), which an inet table
// must check before it looks at IPv4 header fields.
func matchIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}
}

// matchSaddr matches "ip saddr p": 4 bytes at offset 12 of the IPv4 header.
func matchSaddr(p netip.Prefix) []expr.Any { return matchAddr(12, p) }

// matchDaddr matches "ip daddr p": 4 bytes at offset 16.
func matchDaddr(p netip.Prefix) []expr.Any { return matchAddr(16, p) }

func matchAddr(offset uint32, p netip.Prefix) []expr.Any {
	network := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: ipNet(p).Mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: network[:]},
	}
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

func countDrop() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
}
