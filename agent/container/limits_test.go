package container

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// grow doubles a shell variable until the shell runs out of memory.
const grow = `x=0123456789abcdef; while :; do x=$x$x; done`

// needLimits skips a test whose limits this host cannot enforce.
func (e *testEnv) needLimits(t *testing.T, res Resources) {
	t.Helper()
	if err := e.rt.cg.check(res); err != nil {
		t.Skip(err)
	}
}

func TestLimitsInCgroup(t *testing.T) {
	e := newTestEnv(t)
	ctx := testContext(t)
	const memory = 48 << 20
	spec := e.spec("limits", "sh", "-c", "echo ready; exec sleep 1000")
	spec.Resources = Resources{MemoryBytes: memory, NanoCPUs: 5e8, PidsLimit: 20}
	e.needLimits(t, spec.Resources)
	e.run(t, spec)
	e.waitForLine(t, spec.ID, "ready")

	// Each case names the file on cgroup v1 and on v2; the host has one.
	type file struct{ name, want string }
	cases := []struct {
		name  string
		files []file
	}{
		{name: "memory limit", files: []file{{"memory.limit_in_bytes", "50331648"}, {"memory.max", "50331648"}}},
		{name: "CPU quota", files: []file{{"cpu.cfs_quota_us", "50000"}, {"cpu.max", "50000 100000"}}},
		{name: "CPU period", files: []file{{"cpu.cfs_period_us", "100000"}, {"cpu.max", "50000 100000"}}},
		{name: "pids limit", files: []file{{"pids.max", "20"}}},
	}
	if e.rt.cg.swapLimit {
		cases = append(cases, struct {
			name  string
			files []file
		}{name: "no swap past the memory limit", files: []file{{"memory.memsw.limit_in_bytes", "50331648"}, {"memory.swap.max", "0"}}})
	} else {
		t.Log("the kernel does not account swap per cgroup; not checking the swap limit")
	}
	dirs := cgroupDirs(t, filepath.Join(e.cfg.CgroupParent, spec.ID))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var seen []string
			for _, f := range tc.files {
				for _, d := range dirs {
					b, err := os.ReadFile(filepath.Join(d, f.name))
					if errors.Is(err, os.ErrNotExist) {
						continue
					}
					got := strings.TrimSpace(string(b))
					if err != nil || got != f.want {
						t.Errorf("%s = %q, %v; want %q", filepath.Join(d, f.name), got, err, f.want)
					}
					seen = append(seen, f.name)
				}
			}
			if len(seen) == 0 {
				t.Errorf("none of %v in the container's cgroups %q", tc.files, dirs)
			}
		})
	}

	// A container SIGKILLed by its operator was not OOM killed, limit or
	// not.
	st, err := e.rt.Stop(ctx, spec.ID, syscall.SIGKILL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Signal != "SIGKILL" || st.OOMKilled || st.MemoryLimit != memory {
		t.Errorf("Stop = %+v, want killed by SIGKILL, not OOM killed, memory limit %d", st, memory)
	}
}

func TestPidsLimit(t *testing.T) {
	e := newTestEnv(t)
	e.needLimits(t, Resources{PidsLimit: 20})
	for _, tc := range []struct {
		name      string
		limit     int64
		wantSpawn bool
	}{
		{name: "a loop of 50 background processes fails at the limit", limit: 20},
		{name: "the same loop without a limit", wantSpawn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := e.spec("pids"+randomHex(t, 2), "sh", "-c",
				`i=0; while [ $i -lt 50 ]; do sleep 30 & i=$((i+1)); done; echo "spawned $i"`)
			spec.Resources.PidsLimit = tc.limit
			st, stdout, stderr := e.output(t, spec)
			spawned := slices.Equal(stdout, []string{"spawned 50"})
			if spawned != tc.wantSpawn || (st.ExitCode == 0) != tc.wantSpawn {
				t.Errorf("exit %d, stdout %q, stderr %q; want all 50 spawned: %v", st.ExitCode, stdout, stderr, tc.wantSpawn)
			}
			if !tc.wantSpawn && !strings.Contains(strings.Join(stderr, "\n"), "fork") {
				t.Errorf("stderr %q, want the shell's fork failure", stderr)
			}
		})
	}
}

func TestOOMKill(t *testing.T) {
	e := newTestEnv(t)
	const limit = 32 << 20
	e.needLimits(t, Resources{MemoryBytes: limit})
	if swaps, err := os.ReadFile("/proc/swaps"); !e.rt.cg.swapLimit && (err != nil || strings.Count(string(swaps), "\n") > 1) {
		// The container would swap before the OOM killer came.
		t.Skip("the host has swap and the kernel cannot cap a cgroup's swap")
	}
	for _, tc := range []struct {
		name       string
		cmd        string
		wantCode   int
		wantSignal string
		wantOOM    bool
		wantStdout []string
	}{
		{
			name:       "init allocating past the limit",
			cmd:        "echo start; " + grow,
			wantCode:   137,
			wantSignal: "SIGKILL",
			wantOOM:    true,
			wantStdout: []string{"start"},
		},
		{
			// The OOM killer takes the biggest process, the child.
			name:       "a child allocating past the limit",
			cmd:        `sh -c '` + grow + `'; echo "child exited $?"; exit 3`,
			wantCode:   3,
			wantOOM:    true,
			wantStdout: []string{"child exited 137"},
		},
		{
			name:       "staying within the limit",
			cmd:        `x=0123456789abcdef; i=0; while [ $i -lt 10 ]; do x=$x$x; i=$((i+1)); done; echo ${#x}`,
			wantStdout: []string{"16384"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := e.spec("oom"+randomHex(t, 2), "sh", "-c", tc.cmd)
			spec.Resources.MemoryBytes = limit
			st, stdout, stderr := e.output(t, spec)
			if st.ExitCode != tc.wantCode || st.Signal != tc.wantSignal || st.OOMKilled != tc.wantOOM || st.MemoryLimit != limit {
				t.Errorf("status = %+v (stderr %q); want exit %d, signal %q, OOM killed %v, memory limit %d",
					st, stderr, tc.wantCode, tc.wantSignal, tc.wantOOM, limit)
			}
			if !slices.Equal(stdout, tc.wantStdout) {
				t.Errorf("stdout = %q, want %q", stdout, tc.wantStdout)
			}
			// runc keeps the exited container for the shim to read its
			// cgroup, and the shim deletes it before recording the exit.
			if _, err := os.Stat(filepath.Join(e.cfg.Root, spec.ID)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("runc state after the exit: %v, want it gone", err)
			}
			if left := cgroupDirs(t, filepath.Join(e.cfg.CgroupParent, spec.ID)); len(left) > 0 {
				t.Errorf("cgroups left after the exit: %q", left)
			}
		})
	}
}
