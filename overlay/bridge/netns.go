package bridge

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// onLockedThread runs fn on an OS thread locked to it for the duration, then
// moves that thread back into the network namespace it started in. If moving
// back fails, the thread is never unlocked and the Go runtime discards it when
// the goroutine ends, so no other goroutine ever runs in a namespace fn chose.
// (Always discarding is not enough: the process's main thread is parked, not
// terminated, and /proc/self/ns/net would then name the wrong namespace.)
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

// enableIPForward sets net.ipv4.ip_forward=1 in the namespace at nsPath.
func enableIPForward(nsPath string) error {
	return enableSysctl(nsPath, "/proc/sys/net/ipv4/ip_forward")
}

// enableRouteLocalnet sets net.ipv4.conf.<link>.route_localnet=1 in the
// namespace at nsPath.
func enableRouteLocalnet(nsPath, link string) error {
	return enableSysctl(nsPath, "/proc/sys/net/ipv4/conf/"+link+"/route_localnet")
}

// enableSysctl sets the boolean sysctl file to 1 in the namespace at nsPath.
// The sysctl files under /proc/sys/net belong to the namespace of the thread
// that opens them, hence the setns on a locked thread. The value is only
// written when it is not already 1: writing ip_forward, for one, resets
// per-interface forwarding flags.
func enableSysctl(nsPath, sysctl string) error {
	return onLockedThread(func() error {
		ns, err := netns.GetFromPath(nsPath)
		if err != nil {
			return fmt.Errorf("enable %s: open netns %s: %w", sysctl, nsPath, err)
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enable %s: enter netns %s: %w", sysctl, nsPath, err)
		}
		cur, err := os.ReadFile(sysctl)
		if err != nil {
			return fmt.Errorf("enable %s in %s: %w", sysctl, nsPath, err)
		}
		if strings.TrimSpace(string(cur)) == "1" {
			return nil
		}
		if err := os.WriteFile(sysctl, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("enable %s in %s: %w", sysctl, nsPath, err)
		}
		return nil
	})
}

// isNetNSFile reports whether path is a mounted network namespace (an nsfs
// file), as opposed to a stale placeholder left after a reboot or a crash
// between creating the file and mounting onto it.
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

// createNetNS creates a new network namespace and pins it by bind-mounting it
// onto path (like `ip netns add`, but under the driver's own directory). A
// stale non-namespace file at path is replaced. The new namespace's
// loopback is down; the caller configures it.
func createNetNS(path string) error {
	ok, err := isNetNSFile(path)
	if err != nil {
		return err
	}
	if ok {
		return nil
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
// away once no process, mount or open file refers to it. Missing files and
// files that are not mount points are fine.
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
