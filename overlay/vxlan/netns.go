package vxlan

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// nsHandle is a namespace opened by path with a netlink handle bound to it.
type nsHandle struct {
	path string
	ns   netns.NsHandle
	h    *netlink.Handle
}

// openNS opens the namespace at path and a netlink handle in it. The caller
// closes it.
func openNS(path string) (*nsHandle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("open netlink in netns %s: %w", path, err)
	}
	return &nsHandle{path: path, ns: ns, h: h}, nil
}

func (n *nsHandle) Close() {
	n.h.Close()
	n.ns.Close()
}
