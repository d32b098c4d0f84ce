package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netlink"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

// ListenFunc opens a container's listeners: a UDP socket and a TCP
// listener, both on ListenAddr port 53 as the container sees it. The
// Server closes them.
type ListenFunc func(ctx context.Context, netnsPath string) (net.PacketConn, net.Listener, error)

// ListenNetNS is the ListenFunc of a real daemon: it opens the listeners on
// 127.0.0.11:53 inside the network namespace at netnsPath, bringing the
// namespace's loopback up first if it is down (127.0.0.11 is one of lo's
// 127.0.0.0/8 addresses).
//
// The sockets are created by a goroutine locked to an OS thread that enters
// the namespace and never leaves it: the goroutine exits without unlocking,
// so the Go runtime discards the thread rather than run other goroutines in
// the container's namespace. The sockets keep that namespace for good.
func ListenNetNS(ctx context.Context, netnsPath string) (net.PacketConn, net.Listener, error) {
	type result struct {
		pc  net.PacketConn
		l   net.Listener
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: this thread's namespace is changed for good.
		pc, l, err := listenHere(ctx, netnsPath)
		done <- result{pc, l, err}
	}()
	select {
	case r := <-done:
		return r.pc, r.l, r.err
	case <-ctx.Done():
		// The goroutine sees the same ctx and returns soon; close whatever
		// it may still hand over.
		go func() {
			if r := <-done; r.err == nil {
				r.pc.Close()
				r.l.Close()
			}
		}()
		return nil, nil, fmt.Errorf("listen in %s: %w", netnsPath, ctx.Err())
	}
}

// listenHere moves the calling thread, which must be locked and then
// discarded, into the namespace at netnsPath and opens the listeners there.
func listenHere(ctx context.Context, netnsPath string) (net.PacketConn, net.Listener, error) {
	if err := netnsutil.Enter(netnsPath); err != nil {
		return nil, nil, err
	}
	// The package-level netlink functions open their sockets on the
	// calling thread, so in the namespace just entered.
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return nil, nil, fmt.Errorf("find lo in %s: %w", netnsPath, err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(lo); err != nil {
			return nil, nil, fmt.Errorf("bring lo up in %s: %w", netnsPath, err)
		}
	}
	// A literal address: the sockets are created synchronously, on this
	// thread.
	addr := net.JoinHostPort(ListenAddr, "53")
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on udp %s in %s: %w", addr, netnsPath, err)
	}
	l, err := lc.Listen(ctx, "tcp4", addr)
	if err != nil {
		return nil, nil, errors.Join(
			fmt.Errorf("listen on tcp %s in %s: %w", addr, netnsPath, err), pc.Close())
	}
	return pc, l, nil
}
