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
//	<prefix>-vxlan                       nftables table (inet), host netns
//
// The prefix has no '-', so "<prefix>-" never matches another driver's
// prefix; a vxlan name parses only with exactly 6 hex digits after
// "<prefix>x", which a longer prefix cannot produce.
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
	s, ok := strings.CutPrefix(name, d.cfg.Prefix+vxlanMark)
	if !ok || len(s) != vniHexLen {
		return 0, false
	}
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil || v < 1 || v > maxVNI {
		return 0, false
	}
	return uint32(v), true
}

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

// SandboxPath returns the netns file of network id's sandbox, for debugging
// and tests (`ip netns exec` takes its base name under /run/netns).
func (d *Driver) SandboxPath(networkID string) string { return d.sandboxPath(networkID) }
