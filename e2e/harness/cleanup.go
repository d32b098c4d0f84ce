package harness

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// logTailLines is how much of each host's log a failed test prints.
const logTailLines = 150

// Close stops every daemon, kills what they left running, and removes every
// namespace, mount, cgroup and file of the cluster. It runs through
// t.Cleanup, also when the test failed, and then first prints the hosts'
// logs.
func (c *Cluster) Close() {
	if c.T.Failed() {
		for _, h := range c.Hosts {
			lines := strings.Split(h.Log(), "\n")
			if len(lines) > logTailLines {
				lines = lines[len(lines)-logTailLines:]
			}
			c.T.Logf("---- %s log (last %d lines, full log in %s) ----\n%s", h.Name, logTailLines, h.LogPath, strings.Join(lines, "\n"))
		}
		if log := c.RegistryLog(); log != "" {
			lines := strings.Split(log, "\n")
			if len(lines) > logTailLines {
				lines = lines[len(lines)-logTailLines:]
			}
			c.T.Logf("---- registry log (last %d lines) ----\n%s", logTailLines, strings.Join(lines, "\n"))
		}
	}
	for _, h := range c.Hosts {
		h.Stop()
		h.killContainers()
	}
	unmountUnder(c.Dir)
	for _, h := range c.Hosts {
		for _, dir := range h.CgroupDirs() {
			removeCgroupTree(dir)
		}
		_ = exec.Command("ip", "netns", "del", h.NetNS).Run()
	}
	for _, ns := range c.extraNS {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
	c.stopRegistry()
	_ = exec.Command("ip", "netns", "del", c.swNS).Run()
	if !c.T.Failed() || os.Getenv("SHOAL_KEEP") == "" {
		_ = os.RemoveAll(c.Dir)
	}
}

// killContainers kills the shims and containers the host's daemon started,
// by the PIDs they recorded.
func (h *Host) killContainers() {
	pids, _ := filepath.Glob(filepath.Join(h.RunDir, "containers", "*", "shim.pid"))
	for _, p := range pids {
		if b, err := os.ReadFile(p); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	out, err := h.Runc("list", "-q")
	if err != nil {
		return
	}
	for _, id := range strings.Fields(out) {
		_, _ = h.Runc("kill", id, "KILL")
		_, _ = h.Runc("delete", "-f", id)
	}
}

// MountsUnder lists the mount points below dir, deepest first.
func MountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func unmountUnder(dir string) {
	for _, mp := range MountsUnder(dir) {
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
}

// CgroupDirs lists the host's cgroup parent directory in every mounted
// hierarchy where it exists.
func (h *Host) CgroupDirs() []string {
	var out []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for _, root := range roots {
		dir := filepath.Join(root, h.CgroupParent)
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			out = append(out, dir)
		}
	}
	return out
}

// removeCgroupTree removes a cgroup directory and its children, deepest
// first (cgroup directories are removed with rmdir, never unlink).
func removeCgroupTree(dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = syscall.Rmdir(dirs[i])
	}
}
