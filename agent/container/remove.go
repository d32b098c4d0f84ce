package container

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

const (
	// busyRetries and busyRetryInterval bound how long Remove retries an
	// unmount or cgroup rmdir that reports EBUSY: the kernel releases a
	// dead container's mounts and cgroups shortly after its last process
	// is reaped, not at once.
	busyRetries       = 40
	busyRetryInterval = 25 * time.Millisecond
)

// Remove deletes every trace of the container: it SIGKILLs it if it runs,
// `runc delete -f`s runc's leftovers, unmounts the rootfs, removes
// CgroupParent/ID from every cgroup hierarchy and deletes StateDir/ID.
// Removing an unknown container succeeds.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock, err := r.locks.lock(ctx, id)
	if err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	defer unlock()

	dir := r.dir(id)
	st, err := r.Status(ctx, id)
	if err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	if st.State == StateRunning {
		r.kill(ctx, id, syscall.SIGKILL)
		if _, err := r.Wait(ctx, id); err != nil {
			return fmt.Errorf("remove container %s: %w", id, err)
		}
	}
	// runc's state outlives the container only when runc or the shim died
	// before the shim's `runc delete`; the directory is runc's own record
	// of it.
	if _, err := os.Stat(filepath.Join(r.cfg.Root, id)); err == nil {
		if err := r.runc.Delete(ctx, id, &runc.DeleteOpts{Force: true}); err != nil {
			return fmt.Errorf("remove container %s: runc delete: %w", id, err)
		}
	}
	var errs []error
	rootfs := filepath.Join(dir, rootfsDir)
	if err := unmountAll(ctx, rootfs); err != nil {
		errs = append(errs, err)
	}
	if err := r.removeCgroups(ctx, id); err != nil {
		errs = append(errs, err)
	}
	// Only delete the directory once nothing is mounted below it: a
	// recursive delete through a still-mounted rootfs would write
	// whiteouts at best and reach into a bind mount at worst.
	if mounted, err := isMountPoint(rootfs); err != nil || mounted {
		errs = append(errs, fmt.Errorf("rootfs %s is still mounted; keeping %s", rootfs, dir))
	} else if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	r.log.Debug("container removed", "id", id)
	return nil
}

// removeCgroups removes CgroupParent/ID from every mounted cgroup
// hierarchy: runc removes the leaf it created, but not in hierarchies it
// does not manage, and not at all when it was killed.
func (r *Runtime) removeCgroups(ctx context.Context, id string) error {
	mounts, err := readMountInfo()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		if m.fsType != "cgroup" && m.fsType != "cgroup2" {
			continue
		}
		p := filepath.Join(m.mountPoint, r.cgroupPath(id))
		err := retryBusy(ctx, func() error { return unix.Rmdir(p) })
		if err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unmountAll unmounts everything mounted at target (mounts can stack),
// falling back to a lazy unmount when the mount stays busy.
func unmountAll(ctx context.Context, target string) error {
	for {
		mounted, err := isMountPoint(target)
		if err != nil || !mounted {
			return err
		}
		err = retryBusy(ctx, func() error { return unix.Unmount(target, 0) })
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(target, unix.MNT_DETACH)
		}
		if err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
}

// retryBusy calls fn until it stops failing with EBUSY, for at most
// busyRetries attempts.
func retryBusy(ctx context.Context, fn func() error) error {
	var err error
	for i := 0; i < busyRetries; i++ {
		if err = fn(); !errors.Is(err, unix.EBUSY) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(busyRetryInterval):
		}
	}
	return err
}

type mountInfo struct {
	mountPoint string
	fsType     string
	superOpts  string // comma-separated; a cgroup v1 mount's controllers are among them
}

// readMountInfo parses /proc/self/mountinfo.
func readMountInfo() ([]mountInfo, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return parseMountInfo(b), nil
}

// parseMountInfo reads mountinfo lines: "id parent maj:min root mountpoint
// options [optional fields] - fstype source superoptions".
func parseMountInfo(b []byte) []mountInfo {
	var out []mountInfo
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 7 {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(f) {
			continue
		}
		m := mountInfo{mountPoint: unescapeMountPath(f[4]), fsType: f[sep+1]}
		if sep+3 < len(f) {
			m.superOpts = f[sep+3]
		}
		out = append(out, m)
	}
	return out
}

// unescapeMountPath undoes the kernel's octal escapes (\040 for space,
// \011, \012, \134) in mountinfo paths.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isMountPoint reports whether something is mounted exactly at path.
func isMountPoint(path string) (bool, error) {
	mounts, err := readMountInfo()
	if err != nil {
		return false, err
	}
	clean := filepath.Clean(path)
	for _, m := range mounts {
		if m.mountPoint == clean {
			return true, nil
		}
	}
	return false, nil
}
