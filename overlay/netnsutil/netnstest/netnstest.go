// Package netnstest is test support for the overlay packages, used only by
// their tests: network namespaces of a test's own. Each test names its
// namespaces and links with a prefix unique to the run (Prefix), so that
// concurrent runs and the leftovers of a crashed one never collide, and
// every namespace it creates is removed with t.Cleanup, even when the test
// fails (NewNamed, CleanupDir). Netlink handles and sysctls as a namespace
// sees them come with it (Handle, ReadSysctl).
//
// It imports no Shoal package but netnsutil.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

// Prefix returns base followed by 2*n random hex digits, to start the name
// of every namespace and link of a test (or of a test binary's run). Link
// names are limited to 15 bytes, hence the caller picks n and a short base.
func Prefix(base string, n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails: it crashes the program instead
	return base + hex.EncodeToString(b)
}

// NewNamed creates the network namespace /run/netns/<name> from a locked
// thread that is moved back afterwards, and deletes it at cleanup, failed
// test or not (which takes the links inside with it). Its loopback is down,
// as in every new namespace. It returns its path.
func NewNamed(tb testing.TB, name string) string {
	tb.Helper()
	err := netnsutil.OnLockedThread(func() error {
		ns, err := netns.NewNamed(name) // also moves this thread into it
		if err != nil {
			return err
		}
		return ns.Close()
	})
	if err != nil {
		tb.Fatalf("create netns %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("delete netns %s: %v", name, err)
		}
	})
	return filepath.Join("/run/netns", name)
}

// CleanupDir unmounts and removes, at cleanup, every namespace file that
// code under test left in dir (a missing dir is fine). Call it after the
// tb.TempDir that holds dir, so that it runs before the temp dir's removal,
// which fails on mounted namespace files.
func CleanupDir(tb testing.TB, dir string) {
	tb.Cleanup(func() {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range entries {
			if err := netnsutil.RemoveNetNSFile(filepath.Join(dir, e.Name())); err != nil {
				tb.Errorf("clean up netns file: %v", err)
			}
		}
	})
}

// Handle returns a netlink handle bound to the namespace at path, closed at
// cleanup.
func Handle(tb testing.TB, path string) *netlink.Handle {
	tb.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		tb.Fatalf("open netns %s: %v", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		tb.Fatalf("netlink in %s: %v", path, err)
	}
	tb.Cleanup(h.Close)
	return h
}

// ReadSysctl reads the sysctl file at path as the namespace at nsPath sees
// it, without the trailing newline.
func ReadSysctl(tb testing.TB, nsPath, path string) string {
	tb.Helper()
	var v []byte
	err := netnsutil.InNetNS(nsPath, func() error {
		var err error
		v, err = os.ReadFile(path)
		return err
	})
	if err != nil {
		tb.Fatalf("read %s in %s: %v", path, nsPath, err)
	}
	return strings.TrimSpace(string(v))
}
