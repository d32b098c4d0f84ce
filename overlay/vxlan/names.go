package vxlan

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// Names. Everything the driver creates starts with Config.Prefix, and a name
// carries what a restarted driver needs to re-derive the object's role:
//
//	<NetNSDir>/<prefix>-ov-<network id>  sandbox netns file (network id)
//	<prefix>br                           bridge, in the sandbox
//	<prefix>x<VNI as 6 hex digits>       vxlan device: born in the host
//	                                     netns, then moved into the sandbox
//	<prefix>v<8 hex digits>              sandbox end of an endpoint's veth, a
//	                                     hash of the endpoint id; the id
//	                                     itself is the link's alias
//	<prefix>up                           sandbox end of an encrypted
//	                                     network's uplink veth
//	<prefix>u<VNI as 6 hex digits>       host end of that uplink, in the host
//	                                     netns; its alias is the network id
//	<prefix>-vxlan                       nftables table (inet), host netns:
//	                                     SetEncryptedVNIs
//	<prefix>-wgnet                       nftables table (inet), host netns:
//	                                     encrypted networks' isolation
//
// The prefix has no '-', so "<prefix>-" never matches another driver's
// prefix; a vxlan or uplink name parses only with exactly 6 hex digits after
// "<prefix>x" or "<prefix>u", which a longer prefix cannot produce, and
// "<prefix>up" is not one. In the host netns only uplinks start with
// "<prefix>u": the isolation table matches them all by that prefix.
const (
	sandboxInfix = "-ov-"
	bridgeSuffix = "br"
	vxlanMark    = "x"
	vethMark     = "v"
	// vethHashLen hex digits (32 bits) of the endpoint id's SHA-256; a
	// collision within one network is detected through the alias.
	vethHashLen = 8
	vniHexLen   = 6
	tableSuffix = "-vxlan"

	uplinkMark          = "u"
	uplinkSandboxSuffix = "up"
	routedTableSuffix   = "-wgnet"
)

func (d *Driver) sandboxPath(networkID string) string {
	return filepath.Join(d.cfg.NetNSDir, d.cfg.Prefix+sandboxInfix+networkID)
}

// networkIDOf returns the network id of a sandbox file name of this driver.
func (d *Driver) networkIDOf(file string) (string, bool) {
	id, ok := strings.CutPrefix(file, d.cfg.Prefix+sandboxInfix)
	return id, ok && validID(id)
}

func (d *Driver) bridgeName() string { return d.cfg.Prefix + bridgeSuffix }

func (d *Driver) vxlanName(vni uint32) string {
	return fmt.Sprintf("%s%s%0*x", d.cfg.Prefix, vxlanMark, vniHexLen, vni)
}

// vniOf returns the VNI encoded in a vxlan device name of this driver.
func (d *Driver) vniOf(name string) (uint32, bool) {
	return parseVNI(name, d.cfg.Prefix+vxlanMark)
}

// parseVNI returns the VNI in name, which must be prefix then exactly
// vniHexLen hex digits.
func parseVNI(name, prefix string) (uint32, bool) {
	s, ok := strings.CutPrefix(name, prefix)
	if !ok || len(s) != vniHexLen {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil || v < 1 || v > maxVNI {
		return 0, false
	}
	return uint32(v), true
}

// uplinkName is the host end of an encrypted network's uplink veth.
func (d *Driver) uplinkName(vni uint32) string {
	return fmt.Sprintf("%s%s%0*x", d.cfg.Prefix, uplinkMark, vniHexLen, vni)
}

// uplinkVNI returns the VNI encoded in the name of an uplink's host end of
// this driver.
func (d *Driver) uplinkVNI(name string) (uint32, bool) {
	return parseVNI(name, d.cfg.Prefix+uplinkMark)
}

// uplinkSandboxName is the sandbox end of an encrypted network's uplink.
func (d *Driver) uplinkSandboxName() string { return d.cfg.Prefix + uplinkSandboxSuffix }

// uplinkWildcard is what the names of every uplink host end of this driver
// start with.
func (d *Driver) uplinkWildcard() string { return d.cfg.Prefix + uplinkMark }

// vethName is the sandbox end of endpoint id's veth pair.
func (d *Driver) vethName(endpointID string) string {
	sum := sha256.Sum256([]byte(endpointID))
	return d.cfg.Prefix + vethMark + hex.EncodeToString(sum[:])[:vethHashLen]
}

// isVethName reports whether name has the shape of this driver's veth names.
func (d *Driver) isVethName(name string) bool {
	s, ok := strings.CutPrefix(name, d.cfg.Prefix+vethMark)
	if !ok || len(s) != vethHashLen {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// TableName returns the name of the driver's nftables table (family inet, in
// the host netns): "<prefix>-vxlan".
func (d *Driver) TableName() string { return d.cfg.Prefix + tableSuffix }

// WireGuardTableName returns the name of the table isolating encrypted
// networks (family inet, in the host netns): "<prefix>-wgnet". It exists
// while the host has an encrypted network.
func (d *Driver) WireGuardTableName() string { return d.cfg.Prefix + routedTableSuffix }

// SandboxPath returns the netns file of network id's sandbox, for debugging
// and tests (`ip netns exec` takes its base name under /run/netns).
func (d *Driver) SandboxPath(networkID string) string { return d.sandboxPath(networkID) }
