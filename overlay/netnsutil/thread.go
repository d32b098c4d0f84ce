package netnsutil

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// ProcessNetNS names the process's own network namespace as the calling
// thread sees it. Open it only from a thread that has not entered another
// namespace; see the package documentation for why it is not
// /proc/self/ns/net.
const ProcessNetNS = "/proc/thread-self/ns/net"

// OnLockedThread runs fn on an OS thread locked to it for the duration, then
// moves that thread back into the network namespace it started in, so fn may
// change the thread's namespace freely. If moving back fails, the thread is
// never unlocked and the Go runtime discards it when the goroutine ends, so
// no other goroutine ever runs in a namespace fn chose. It waits for fn and
// returns its error, joined with any error from moving back.
func OnLockedThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore thread netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Enter moves the calling thread into the network namespace at path. The
// caller must have locked its goroutine to the thread and must either move
// the thread back before unlocking it (OnLockedThread does) or never unlock
// it, so that the runtime discards the thread.
func Enter(path string) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	return nil
}

// InNetNS runs fn on a locked OS thread inside the network namespace at
// path, then moves the thread back (see OnLockedThread). It waits for fn.
func InNetNS(path string, fn func() error) error {
	return OnLockedThread(func() error {
		if err := Enter(path); err != nil {
			return err
		}
		return fn()
	})
}
