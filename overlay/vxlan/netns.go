package vxlan

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// onLockedThread runs fn on an OS thread locked to it for the duration, then
// moves that thread back into the network namespace it started in. If moving
// back fails, the thread is never unlocked and the Go runtime discards it when
// the goroutine ends, so no other goroutine ever runs in a namespace fn chose.
// It waits for fn.
func onLockedThread(fn func() error) error {
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

// inNetNS runs fn on a locked thread inside the namespace at path.
func inNetNS(path string, fn func() error) error {
	return onLockedThread(func() error {
		ns, err := netns.GetFromPath(path)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", path, err)
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		return fn()
	})
}

// sysctl is one /proc/sys/net file and the value it should hold.
type sysctl struct{ path, value string }

// setSysctl writes value to the sysctl file (a /proc/sys/net path) as the
// namespace at nsPath sees it; see setSysctls.
func setSysctl(nsPath, path, value string) error {
	return setSysctls(nsPath, sysctl{path, value})
}

// setSysctls writes each value to its sysctl file as the namespace at nsPath
// sees it; those files belong to the namespace of the thread that opens
// them. It writes only the values that differ: writing ip_forward, for one,
// also resets every interface's forwarding flag.
func setSysctls(nsPath string, ss ...sysctl) error {
	return inNetNS(nsPath, func() error {
		for _, s := range ss {
			cur, err := os.ReadFile(s.path)
			if err != nil {
				return fmt.Errorf("read %s in %s: %w", s.path, nsPath, err)
			}
			if strings.TrimSpace(string(cur)) == s.value {
				continue
			}
			if err := os.WriteFile(s.path, []byte(s.value+"\n"), 0o644); err != nil {
				return fmt.Errorf("write %s=%s in %s: %w", s.path, s.value, nsPath, err)
			}
		}
		return nil
	})
}

// isNetNSFile reports whether path is a mounted network namespace (an nsfs
// file), as opposed to a missing file or a stale placeholder left after a
// reboot or a crash between creating the file and mounting onto it.
func isNetNSFile(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("stat netns file %s: %w", path, err)
	}
	return st.Type == unix.NSFS_MAGIC, nil
}

// createNetNS creates a network namespace and pins it by bind-mounting it
// onto path (what `ip netns add` does), unless path already is one. A stale
// non-namespace file at path is replaced.
func createNetNS(path string) error {
	ok, err := isNetNSFile(path)
	if err != nil || ok {
		return err
	}
	if err := removeNetNSFile(path); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file %s: %w", path, err)
	}
	f.Close()
	err = onLockedThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("create netns: unshare: %w", err)
		}
		self := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("create netns: bind mount onto %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// removeNetNSFile unmounts and deletes a netns file. The namespace itself goes
// away once no process, mount, socket or open file refers to it. Missing files
// and files that are not mount points are fine.
func removeNetNSFile(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns file %s: %w", path, err)
	}
	return nil
}

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
