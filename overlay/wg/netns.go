package wg

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

// inNetNS runs fn on an OS thread that is inside the network namespace at
// path, then moves that thread back (netnsutil.InNetNS). An empty path runs
// fn on the calling goroutine, in the process's own namespace. Sockets and
// TUN devices created by fn stay in the namespace they were created in after
// the thread leaves it, which is what lets one process serve devices in
// several namespaces. It waits for fn.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return netnsutil.InNetNS(path, fn)
}

// netlinkHandle returns a netlink handle bound to the namespace at path, or
// to the process's namespace when path is empty.
func netlinkHandle(path string) (*netlink.Handle, error) {
	if path == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}
