package container

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"testing/fstest"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func ptr[T any](v T) *T { return &v }

func TestLinuxResources(t *testing.T) {
	cpu := func(quota int64) *specs.LinuxCPU {
		return &specs.LinuxCPU{Quota: ptr(quota), Period: ptr(uint64(cpuPeriodMicros))}
	}
	for _, tc := range []struct {
		name      string
		res       Resources
		swapLimit bool
		want      specs.LinuxResources // Devices aside
	}{
		{name: "no limits", swapLimit: true},
		{
			name:      "memory caps swap too",
			res:       Resources{MemoryBytes: 32 << 20},
			swapLimit: true,
			want:      specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(32 << 20)), Swap: ptr(int64(32 << 20))}},
		},
		{
			name: "memory without swap accounting leaves swap alone",
			res:  Resources{MemoryBytes: 32 << 20},
			want: specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(32 << 20))}},
		},
		{name: "half a CPU", res: Resources{NanoCPUs: 5e8}, want: specs.LinuxResources{CPU: cpu(50_000)}},
		{name: "one and a half CPUs", res: Resources{NanoCPUs: 1.5e9}, want: specs.LinuxResources{CPU: cpu(150_000)}},
		{name: "the smallest CPU limit", res: Resources{NanoCPUs: minNanoCPUs}, want: specs.LinuxResources{CPU: cpu(1000)}},
		{name: "a fraction of a microsecond is dropped", res: Resources{NanoCPUs: 1_234_567_891}, want: specs.LinuxResources{CPU: cpu(123_456)}},
		{name: "a huge CPU limit does not overflow", res: Resources{NanoCPUs: 1 << 62}, want: specs.LinuxResources{CPU: cpu(461_168_601_842_738)}},
		{name: "pids", res: Resources{PidsLimit: 20}, want: specs.LinuxResources{Pids: &specs.LinuxPids{Limit: ptr(int64(20))}}},
		{
			name:      "all together",
			res:       Resources{MemoryBytes: 64 << 20, NanoCPUs: 2e9, PidsLimit: 100},
			swapLimit: true,
			want: specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: ptr(int64(64 << 20)), Swap: ptr(int64(64 << 20))},
				CPU:    cpu(200_000),
				Pids:   &specs.LinuxPids{Limit: ptr(int64(100))},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := linuxResources(tc.res, tc.swapLimit)
			if want := []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}; !reflect.DeepEqual(got.Devices, want) {
				t.Errorf("devices = %+v, want %+v", got.Devices, want)
			}
			got.Devices = nil
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("linuxResources(%+v, swap %v) = %s, want %s", tc.res, tc.swapLimit, describeResources(got), describeResources(&tc.want))
			}
		})
	}
}

// describeResources prints the pointers' values, which %+v does not.
func describeResources(r *specs.LinuxResources) string {
	if r == nil {
		return "nil"
	}
	s := "{"
	if m := r.Memory; m != nil {
		s += " memory limit " + fmtPtr(m.Limit) + " swap " + fmtPtr(m.Swap)
	}
	if c := r.CPU; c != nil {
		s += " cpu quota " + fmtPtr(c.Quota) + " period " + fmtPtr(c.Period)
	}
	if p := r.Pids; p != nil {
		s += " pids " + fmtPtr(p.Limit)
	}
	return s + " }"
}

func fmtPtr[T any](p *T) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}

func TestResourcesValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  Resources
		ok   bool
	}{
		{name: "none", ok: true},
		{name: "sensible limits", res: Resources{MemoryBytes: 64 << 20, NanoCPUs: 5e8, PidsLimit: 20}, ok: true},
		{name: "the minimums", res: Resources{MemoryBytes: minMemoryBytes, NanoCPUs: minNanoCPUs, PidsLimit: 1}, ok: true},
		{name: "negative memory", res: Resources{MemoryBytes: -1}},
		{name: "negative CPUs", res: Resources{NanoCPUs: -1}},
		{name: "negative pids", res: Resources{PidsLimit: -1}},
		{name: "memory below the minimum", res: Resources{MemoryBytes: minMemoryBytes - 1}},
		{name: "CPU below the kernel's minimum quota", res: Resources{NanoCPUs: minNanoCPUs - 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.res.validate()
			if tc.ok && err != nil || !tc.ok && !errors.Is(err, ErrInvalidSpec) {
				t.Errorf("validate(%+v) = %v, want ok=%v or ErrInvalidSpec", tc.res, err, tc.ok)
			}
		})
	}
}

func TestCgroupHostCheck(t *testing.T) {
	all := cgroupHost{controllers: map[string]string{"memory": "/m", "cpu": "/c", "pids": "/p"}}
	noPids := cgroupHost{controllers: map[string]string{"memory": "/m", "cpu": "/c"}}
	for _, tc := range []struct {
		name string
		host cgroupHost
		res  Resources
		ok   bool
	}{
		{name: "no limits need no controller", host: cgroupHost{}, ok: true},
		{name: "every controller", host: all, res: Resources{MemoryBytes: 1 << 30, NanoCPUs: 1e9, PidsLimit: 5}, ok: true},
		{name: "memory without the memory controller", host: cgroupHost{}, res: Resources{MemoryBytes: 1 << 30}},
		{name: "pids without the pids controller", host: noPids, res: Resources{PidsLimit: 5}},
		{name: "other limits without the pids controller", host: noPids, res: Resources{MemoryBytes: 1 << 30, NanoCPUs: 1e9}, ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.host.check(tc.res)
			if tc.ok && err != nil || !tc.ok && !errors.Is(err, ErrInvalidSpec) {
				t.Errorf("check(%+v) = %v, want ok=%v or ErrInvalidSpec", tc.res, err, tc.ok)
			}
		})
	}
}

func TestReadOOM(t *testing.T) {
	const limit = 32 << 20
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	v1 := func(oomControl, limit, failcnt, peak string) fstest.MapFS {
		return fstest.MapFS{
			"memory.oom_control":          file(oomControl),
			"memory.limit_in_bytes":       file(limit + "\n"),
			"memory.failcnt":              file(failcnt + "\n"),
			"memory.max_usage_in_bytes":   file(peak + "\n"),
			"memory.memsw.limit_in_bytes": file(limit + "\n"),
		}
	}
	const (
		oomKilled    = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
		notKilled    = "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"
		oldKernel    = "oom_kill_disable 0\nunder_oom 0\n"
		limitStr     = "33554432"
		unlimitedStr = "9223372036854771712"
	)
	for _, tc := range []struct {
		name      string
		cg        fstest.MapFS
		sigkilled bool
		want      oomReport
		wantErr   bool
	}{
		{name: "v1 oom_kill counted", cg: v1(oomKilled, limitStr, "120", limitStr), sigkilled: true, want: oomReport{killed: true, limit: limit}},
		{name: "v1 oom_kill counted, init exited by itself", cg: v1(oomKilled, limitStr, "120", limitStr), want: oomReport{killed: true, limit: limit}},
		{name: "v1 SIGKILL without an OOM kill", cg: v1(notKilled, limitStr, "120", limitStr), sigkilled: true, want: oomReport{limit: limit}},
		{name: "v1 no limit", cg: v1(notKilled, unlimitedStr, "0", "4096"), sigkilled: true},
		{name: "old kernel: SIGKILL at the limit after failed charges", cg: v1(oldKernel, limitStr, "3", "33513472"), sigkilled: true, want: oomReport{killed: true, limit: limit}},
		{name: "old kernel: no failed charge", cg: v1(oldKernel, limitStr, "0", limitStr), sigkilled: true, want: oomReport{limit: limit}},
		{name: "old kernel: peak well below the limit", cg: v1(oldKernel, limitStr, "3", "1048576"), sigkilled: true, want: oomReport{limit: limit}},
		{name: "old kernel: not SIGKILLed", cg: v1(oldKernel, limitStr, "3", limitStr), want: oomReport{limit: limit}},
		{
			name: "v2 oom_kill counted",
			cg: fstest.MapFS{
				"memory.events": file("low 0\nhigh 0\nmax 40\noom 1\noom_kill 1\noom_group_kill 0\n"),
				"memory.max":    file(limitStr + "\n"),
			},
			sigkilled: true,
			want:      oomReport{killed: true, limit: limit},
		},
		{
			name: "v2 without limit or kill",
			cg: fstest.MapFS{
				"memory.events": file("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"),
				"memory.max":    file("max\n"),
			},
		},
		{name: "no memory cgroup files", cg: fstest.MapFS{}, wantErr: true},
		{name: "v1 unreadable limit", cg: fstest.MapFS{"memory.oom_control": file(oomKilled), "memory.limit_in_bytes": file("lots")}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readOOM(tc.cg, tc.sigkilled)
			if tc.wantErr {
				if err == nil {
					t.Errorf("readOOM = %+v, nil; want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("readOOM = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestV1Controllers(t *testing.T) {
	mounts := parseMountInfo([]byte(
		"30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n" +
			"31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw shared:5 - cgroup cgroup rw,cpu,cpuacct\n" +
			"32 30 0:28 / /sys/fs/cgroup/memory rw shared:6 - cgroup cgroup rw,memory\n" +
			"33 30 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n" +
			"34 30 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n" +
			"35 26 0:28 / /mnt/memory-again rw - cgroup cgroup rw,memory\n"))
	got := v1Controllers(mounts)
	for ctrl, want := range map[string]string{
		"cpu":    "/sys/fs/cgroup/cpu,cpuacct",
		"memory": "/sys/fs/cgroup/memory",
		"pids":   "",
	} {
		if got[ctrl] != want {
			t.Errorf("controller %s at %q, want %q", ctrl, got[ctrl], want)
		}
	}
}

func TestV2SwapAccounted(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string // below the cgroup root
		want  bool
	}{
		{name: "swap accounted", files: []string{"a/cgroup.procs", "b/memory.max", "b/memory.swap.max"}, want: true},
		{name: "no swap accounting", files: []string{"b/memory.max"}},
		{name: "no child with the memory controller", files: []string{"a/cgroup.procs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for _, f := range tc.files {
				p := filepath.Join(root, f)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := v2SwapAccounted(root); got != tc.want {
				t.Errorf("v2SwapAccounted = %v, want %v", got, tc.want)
			}
		})
	}
}
