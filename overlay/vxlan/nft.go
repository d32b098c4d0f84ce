package vxlan

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// chainInput runs at the input hook: VXLAN addressed to this host is
	// delivered locally, and input sees IP fragments reassembled, so a
	// fragmented packet cannot hide its VXLAN header from the match.
	chainInput = "input"
	// setEncrypted holds the encrypted VNIs, 3-byte big-endian keys.
	setEncrypted = "encrypted_vnis"

	// Offsets in the transport header: the UDP destination port (2 bytes at
	// 2), and the VNI, bytes 4-6 of the VXLAN header that follows the 8-byte
	// UDP header (RFC 7348 section 5).
	udpDportOffset = 2
	vniOffset      = 8 + 4
	vniLen         = 3
)

// vniType is a 24-bit integer set key ("integer" is nft's type 4).
var vniType = func() nftables.SetDatatype {
	t := nftables.SetDatatype{Name: "integer", Bytes: vniLen}
	t.SetNFTMagic(nftables.TypeInteger.GetNFTMagic())
	return t
}()

// SetEncryptedVNIs makes vnis the host's set of encrypted VNIs: the driver's
// table drops every packet to the VXLAN port carrying one of them, so nobody
// on the underlay can inject cleartext frames into an encrypted network.
//
// Encrypted networks carry no VXLAN (they are routed over WireGuard), so
// callers pass an empty wgIfName: no interface is exempt and every VXLAN
// packet for those VNIs is dropped, whatever it arrives on. A non-empty
// wgIfName exempts VXLAN arriving on that interface, for VXLAN carried
// inside a tunnel, which Shoal no longer builds. An empty vnis deletes the
// table. The table is replaced in one transaction:
//
//	table inet <prefix>-vxlan {
//	  set encrypted_vnis { type integer (24 bits); elements = { ... } }
//	  chain input { type filter hook input priority filter; policy accept;
//	    meta l4proto udp udp dport <port> iifname != "<wgIfName>"
//	      @th,96,24 @encrypted_vnis counter drop }
//	}
func (d *Driver) SetEncryptedVNIs(ctx context.Context, vnis []uint32, wgIfName string) error {
	for _, v := range vnis {
		if v < 1 || v > maxVNI {
			return fmt.Errorf("set encrypted VNIs: %w: VNI %d outside 1-%d", ErrInvalidNetwork, v, maxVNI)
		}
	}
	if wgIfName != "" && !validIfName(wgIfName) {
		return fmt.Errorf("set encrypted VNIs: %w: interface name %q", ErrInvalidConfig, wgIfName)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("set encrypted VNIs: %w", err)
	}
	ns, err := netns.GetFromPath(d.hostNS)
	if err != nil {
		return fmt.Errorf("set encrypted VNIs: open host netns %s: %w", d.hostNS, err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("set encrypted VNIs: open nftables in host netns: %w", err)
	}
	t := &nftables.Table{Name: d.TableName(), Family: nftables.TableFamilyINet}
	// add-then-delete makes the delete valid whether or not the table exists.
	c.AddTable(t)
	c.DelTable(t)
	if len(vnis) > 0 {
		if err := d.buildTable(c, t, vnis, wgIfName); err != nil {
			return fmt.Errorf("set encrypted VNIs: %w", err)
		}
	}
	if err := c.Flush(); err != nil && (len(vnis) > 0 || !errors.Is(err, unix.ENOENT)) {
		return fmt.Errorf("set encrypted VNIs: write nftables table %s: %w", t.Name, err)
	}
	d.log.Debug("encrypted VNIs set", "vnis", vnis, "wireguard", wgIfName)
	return nil
}

// buildTable queues the table's contents on c; see SetEncryptedVNIs.
func (d *Driver) buildTable(c *nftables.Conn, t *nftables.Table, vnis []uint32, wgIfName string) error {
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	input := c.AddChain(&nftables.Chain{
		Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	set := &nftables.Set{Table: t, Name: setEncrypted, KeyType: vniType, KeyByteOrder: binaryutil.BigEndian}
	if err := c.AddSet(set, vniElements(vnis)); err != nil {
		return fmt.Errorf("add set %s: %w", setEncrypted, err)
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: dropRule(set, uint16(d.cfg.Port), wgIfName)})
	return nil
}

// vniElements encodes VNIs as they appear on the wire, deduplicated.
func vniElements(vnis []uint32) []nftables.SetElement {
	vnis = slices.Clone(vnis)
	slices.Sort(vnis)
	vnis = slices.Compact(vnis)
	els := make([]nftables.SetElement, 0, len(vnis))
	for _, v := range vnis {
		els = append(els, nftables.SetElement{Key: vniBytes(v)})
	}
	return els
}

func vniBytes(v uint32) []byte { return []byte{byte(v >> 16), byte(v >> 8), byte(v)} }

// dropRule matches UDP to port whose VXLAN VNI is in set, unless it arrived
// on wgIfName, and drops it; see SetEncryptedVNIs.
func dropRule(set *nftables.Set, port uint16, wgIfName string) []expr.Any {
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: udpDportOffset, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
	if wgIfName != "" {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(wgIfName)},
		)
	}
	return append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: vniOffset, Len: vniLen},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)
}

// ifname encodes an interface name as the kernel compares it: NUL-padded to
// IFNAMSIZ (16) bytes.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
