package netnsutil

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// IsNetNSFile reports whether path is a mounted network namespace (an nsfs
// file), as opposed to a missing file or a stale placeholder left after a
// reboot or a crash between creating the file and mounting onto it.
func IsNetNSFile(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("stat netns file %s: %w", path, err)
	}
	return st.Type == unix.NSFS_MAGIC, nil
}

// CreateNetNS creates a network namespace and pins it by bind-mounting it
// onto path (what `ip netns add` does, but in any directory), unless path
// already is one. A stale non-namespace file at path is replaced. The
// directory must exist. The new namespace's loopback is down; the caller
// configures it.
func CreateNetNS(path string) error {
	ok, err := IsNetNSFile(path)
	if err != nil || ok {
		return err
	}
	if err := RemoveNetNSFile(path); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file %s: %w", path, err)
	}
	f.Close()
	err = OnLockedThread(func() error {
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

// RemoveNetNSFile unmounts and deletes a netns file. The namespace itself
// goes away once no process, mount, socket or open file refers to it.
// Missing files and files that are not mount points are fine.
func RemoveNetNSFile(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns file %s: %w", path, err)
	}
	return nil
}
