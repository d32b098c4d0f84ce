package container

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	// cgroupRoot is where runc's cgroupfs driver finds the hierarchies,
	// and, when it is itself a cgroup2 mount, the host is cgroup v2 only
	// (runc's own test).
	cgroupRoot = "/sys/fs/cgroup"
	// v1UnlimitedBytes: cgroup v1 shows "no limit" as the largest page
	// counter (2^63 rounded down to a page); anything from here up is no
	// limit.
	v1UnlimitedBytes = 1 << 62
	// maxUsageSlack is how close to its limit a container's peak memory
	// must have come for the fallback OOM test (kernels before 4.13, whose
	// memory.oom_control has no oom_kill counter): the charge that fails
	// and triggers the OOM killer can leave up to a charge batch of 64
	// pages unused below the limit.
	maxUsageSlack = 64 << 12
)

// cgroupHost is what the host's cgroups offer containers, as runc's
// cgroupfs driver will see it.
type cgroupHost struct {
	// unified means cgroup v2 only: every controller in one hierarchy.
	unified bool
	// controllers maps each mounted controller ("memory", "cpu",
	// "pids", ...) to the mount point of its hierarchy; a container's
	// cgroup for it is that plus Config.CgroupParent/ID.
	controllers map[string]string
	// swapLimit says whether the kernel accounts swap per cgroup, so that
	// a container's swap can be capped: memory.memsw.* on cgroup v1
	// (CONFIG_MEMCG_SWAP and swapaccount=1), memory.swap.max on v2.
	swapLimit bool
}

// detectCgroupHost inspects the host's cgroup mounts.
func detectCgroupHost() (cgroupHost, error) {
	h := cgroupHost{controllers: make(map[string]string)}
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		h.unified = true
		b, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers"))
		if err != nil {
			return h, fmt.Errorf("read cgroup v2 controllers: %w", err)
		}
		for _, c := range strings.Fields(string(b)) {
			h.controllers[c] = cgroupRoot
		}
		h.swapLimit = v2SwapAccounted(cgroupRoot)
		return h, nil
	}
	mounts, err := readMountInfo()
	if err != nil {
		return h, err
	}
	h.controllers = v1Controllers(mounts)
	if mem := h.controllers["memory"]; mem != "" {
		_, err := os.Stat(filepath.Join(mem, "memory.memsw.limit_in_bytes"))
		h.swapLimit = err == nil
	}
	return h, nil
}

// v1Controllers maps each controller of the cgroup v1 mounts to its
// hierarchy's mount point; the first mount of a hierarchy wins, as in
// runc. The map holds the mounts' other options too ("rw",
// "name=systemd"), which name no controller and are never looked up.
func v1Controllers(mounts []mountInfo) map[string]string {
	out := make(map[string]string)
	for _, m := range mounts {
		if m.fsType != "cgroup" {
			continue
		}
		for _, opt := range strings.Split(m.superOpts, ",") {
			if _, seen := out[opt]; !seen {
				out[opt] = m.mountPoint
			}
		}
	}
	return out
}

// v2SwapAccounted reports whether cgroup v2 offers memory.swap.max. The
// root cgroup has no memory.* limits, so it looks at the first child
// cgroup with the memory controller enabled.
func v2SwapAccounted(root string) bool {
	ents, err := os.ReadDir(root)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(root, e.Name(), "memory.max")); err != nil {
			continue
		}
		_, err := os.Stat(filepath.Join(root, e.Name(), "memory.swap.max"))
		return err == nil
	}
	return false
}

// check refuses limits the host cannot enforce: runc silently skips a
// cgroup v1 controller that is not mounted, and a limit nobody enforces
// is worse than a task that does not start.
func (h cgroupHost) check(res Resources) error {
	for _, c := range []struct {
		set        bool
		what, ctrl string
	}{
		{res.MemoryBytes > 0, "memory limit", "memory"},
		{res.NanoCPUs > 0, "CPU limit", "cpu"},
		{res.PidsLimit > 0, "pids limit", "pids"},
	} {
		if c.set && h.controllers[c.ctrl] == "" {
			return fmt.Errorf("%w: a %s needs the %s cgroup controller, which this host does not have", ErrInvalidSpec, c.what, c.ctrl)
		}
	}
	return nil
}

// memoryCgroup returns the directory of a container's memory cgroup, ""
// when the host has no memory controller.
func (h cgroupHost) memoryCgroup(cgroupPath string) string {
	root := h.controllers["memory"]
	if root == "" {
		return ""
	}
	return filepath.Join(root, cgroupPath)
}

// oomReport is what a container's memory cgroup says about its end.
type oomReport struct {
	// killed means the kernel OOM killer killed a process of the
	// container (its init or another).
	killed bool
	// limit is the memory limit in force in bytes, 0 for none.
	limit int64
}

// readOOM reads the memory cgroup cg of a container whose processes have
// all exited, before the cgroup is removed: the counters die with it.
// sigkilled says whether the container's init died of SIGKILL.
//
// cgroup v1 (memory.oom_control present): the oom_kill counter, Linux 4.13
// and later. Older kernels have none; there a container counts as OOM
// killed when its init died of SIGKILL after the cgroup refused a charge
// (memory.failcnt) with its peak usage at the limit
// (memory.max_usage_in_bytes), which misreads only a container that an
// operator SIGKILLed right after it hit its limit. cgroup v2: the
// oom_kill count of memory.events, which covers the cgroup's descendants.
func readOOM(cg fs.FS, sigkilled bool) (oomReport, error) {
	oomControl, err := fs.ReadFile(cg, "memory.oom_control")
	switch {
	case err == nil:
		return readOOMv1(cg, oomControl, sigkilled)
	case !errors.Is(err, fs.ErrNotExist):
		return oomReport{}, err
	}
	events, err := fs.ReadFile(cg, "memory.events")
	if err != nil {
		return oomReport{}, fmt.Errorf("neither memory.oom_control (cgroup v1) nor memory.events (v2): %w", err)
	}
	var rep oomReport
	rep.killed = parseKeyedInts(events)["oom_kill"] > 0
	memMax, err := fs.ReadFile(cg, "memory.max")
	if err != nil {
		return rep, err
	}
	if s := strings.TrimSpace(string(memMax)); s != "max" {
		if rep.limit, err = strconv.ParseInt(s, 10, 64); err != nil {
			return rep, fmt.Errorf("parse memory.max %q: %w", s, err)
		}
	}
	return rep, nil
}

func readOOMv1(cg fs.FS, oomControl []byte, sigkilled bool) (oomReport, error) {
	var rep oomReport
	limit, err := readInt(cg, "memory.limit_in_bytes")
	if err != nil {
		return rep, err
	}
	if limit < v1UnlimitedBytes {
		rep.limit = limit
	}
	if n, ok := parseKeyedInts(oomControl)["oom_kill"]; ok {
		rep.killed = n > 0
		return rep, nil
	}
	if !sigkilled || rep.limit == 0 {
		return rep, nil
	}
	failcnt, err := readInt(cg, "memory.failcnt")
	if err != nil {
		return rep, err
	}
	peak, err := readInt(cg, "memory.max_usage_in_bytes")
	if err != nil {
		return rep, err
	}
	rep.killed = failcnt > 0 && peak+maxUsageSlack >= rep.limit
	return rep, nil
}

func readInt(cg fs.FS, name string) (int64, error) {
	b, err := fs.ReadFile(cg, name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", name, err)
	}
	return n, nil
}

// parseKeyedInts parses cgroup "key value" lines (memory.oom_control,
// memory.events), skipping lines it cannot read.
func parseKeyedInts(b []byte) map[string]int64 {
	out := make(map[string]int64)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if n, err := strconv.ParseInt(f[1], 10, 64); err == nil {
			out[f[0]] = n
		}
	}
	return out
}
