package container

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestExitCodeAndLogs(t *testing.T) {
	e := newTestEnv(t)
	spec := e.spec("exit3", "sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3")
	st, stdout, stderr := e.output(t, spec)
	if st.State != StateExited || st.ExitCode != 3 || st.Signal != "" {
		t.Errorf("status = %+v, want exited with code 3 and no signal", st)
	}
	if st.StartedAt.IsZero() || st.FinishedAt.Before(st.StartedAt) {
		t.Errorf("started %v, finished %v: want a start time before the finish time", st.StartedAt, st.FinishedAt)
	}
	if want := []string{"out1", "out2"}; !slices.Equal(stdout, want) {
		t.Errorf("stdout = %q, want %q", stdout, want)
	}
	if want := []string{"err1", "err2"}; !slices.Equal(stderr, want) {
		t.Errorf("stderr = %q, want %q", stderr, want)
	}

	ctx := testContext(t)
	again, err := e.rt.Status(ctx, spec.ID)
	if err != nil || again != st {
		t.Errorf("Status = %+v, %v; want %+v as Wait returned", again, err, st)
	}
	if err := e.rt.Start(ctx, spec.ID); !errors.Is(err, ErrAlreadyExited) {
		t.Errorf("Start of an exited container = %v, want ErrAlreadyExited", err)
	}

	var all []string
	if err := e.rt.Logs(ctx, spec.ID, 0, false, func(l LogLine) error {
		all = append(all, string(l.Line))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		tail   int
		follow bool
		want   []string
	}{
		{name: "tail 1", tail: 1, want: all[3:]},
		{name: "tail 3", tail: 3, want: all[1:]},
		{name: "tail more than stored", tail: 10, want: all},
		{name: "follow an exited container returns", tail: 2, follow: true, want: all[2:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			err := e.rt.Logs(testContext(t), spec.ID, tc.tail, tc.follow, func(l LogLine) error {
				got = append(got, string(l.Line))
				return nil
			})
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("Logs = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestLogsFollowRunning(t *testing.T) {
	e := newTestEnv(t)
	spec := e.spec("follow", "sh", "-c", "echo first; sleep 0.5; echo second; sleep 0.5; echo third")
	e.run(t, spec)
	var got []string
	err := e.rt.Logs(testContext(t), spec.ID, 0, true, func(l LogLine) error {
		got = append(got, string(l.Line))
		return nil
	})
	if want := []string{"first", "second", "third"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("following the log until exit = %q, %v; want %q, nil", got, err, want)
	}

	t.Run("ends with the context", func(t *testing.T) {
		spec := e.spec("follow-ctx", "sleep", "1000")
		e.run(t, spec)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		err := e.rt.Logs(ctx, spec.ID, 0, true, func(LogLine) error { return nil })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Logs = %v, want the context's error", err)
		}
	})
}

func TestLongLinesAreSplit(t *testing.T) {
	e := newTestEnv(t)
	// 2^16 characters on one line: four 16 KiB pieces and no empty line
	// for the newline that follows the last piece.
	spec := e.spec("long", "sh", "-c", `s=x; i=0; while [ $i -lt 16 ]; do s=$s$s; i=$((i+1)); done; echo "$s"; echo short`)
	_, stdout, _ := e.output(t, spec)
	var lens []int
	for _, l := range stdout {
		lens = append(lens, len(l))
	}
	if want := []int{16384, 16384, 16384, 16384, 5}; !slices.Equal(lens, want) {
		t.Errorf("line lengths = %v, want %v", lens, want)
	}
}

func TestStop(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct {
		name       string
		args       []string
		grace      time.Duration
		wantCode   int
		wantSignal string
	}{
		{
			// busybox sleep as pid 1 has no TERM handler, and pid 1 ignores
			// signals without one: only SIGKILL after the grace ends it.
			name:       "pid 1 ignoring SIGTERM is killed after the grace period",
			args:       []string{"sh", "-c", "echo ready; exec sleep 1000"},
			grace:      500 * time.Millisecond,
			wantCode:   128 + int(syscall.SIGKILL),
			wantSignal: "SIGKILL",
		},
		{
			name:     "a TERM handler exits within the grace period",
			args:     []string{"sh", "-c", `trap "exit 0" TERM; echo ready; while true; do sleep 0.1; done`},
			grace:    testTimeout / 2,
			wantCode: 0,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "stop" + randomHex(t, 2)
			e.run(t, e.spec(id, tc.args...))
			e.waitForLine(t, id, "ready")
			ctx := testContext(t)
			st, err := e.rt.Stop(ctx, id, syscall.SIGTERM, tc.grace)
			if err != nil {
				t.Fatal(err)
			}
			if st.State != StateExited || st.ExitCode != tc.wantCode || st.Signal != tc.wantSignal {
				t.Errorf("Stop = %+v, want exited with code %d, signal %q", st, tc.wantCode, tc.wantSignal)
			}
			again, err := e.rt.Stop(ctx, id, syscall.SIGTERM, tc.grace)
			if err != nil || again != st {
				t.Errorf("Stop of the exited container = %+v, %v; want %+v unchanged", again, err, st)
			}
		})
	}
}

func TestAdoptionAfterDaemonRestart(t *testing.T) {
	e := newTestEnv(t)
	spec := e.spec("adopt", "sleep", "1000")
	e.run(t, spec)

	shimPid, err := readPid(filepath.Join(e.cfg.StateDir, spec.ID, shimPidFile))
	if err != nil {
		t.Fatal(err)
	}
	// The shim must not depend on the daemon: not its child, and in a
	// session of its own so that the daemon's signals do not reach it.
	if ppid := parentPid(t, shimPid); ppid == os.Getpid() {
		t.Errorf("the shim (pid %d) is a child of the daemon", shimPid)
	}
	if sid, err := unix.Getsid(shimPid); err != nil || sid != shimPid {
		t.Errorf("shim session = %d, %v; want its own session %d", sid, err, shimPid)
	}

	// A restarted daemon knows only the configuration.
	e.rt = nil
	rt, err := New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	ids, err := rt.List(ctx)
	if err != nil || !slices.Contains(ids, spec.ID) {
		t.Errorf("List = %q, %v; want it to contain %q", ids, err, spec.ID)
	}
	st, err := rt.Status(ctx, spec.ID)
	if err != nil || st.State != StateRunning || st.Pid <= 0 {
		t.Fatalf("Status after restart = %+v, %v; want running with a pid", st, err)
	}
	if err := syscall.Kill(st.Pid, 0); err != nil {
		t.Errorf("container init %d: %v", st.Pid, err)
	}
	if err := rt.Start(ctx, spec.ID); err != nil {
		t.Errorf("Start of a running container = %v, want a no-op", err)
	}

	waited := make(chan Status, 1)
	go func() {
		st, err := rt.Wait(ctx, spec.ID)
		if err != nil {
			t.Error(err)
		}
		waited <- st
	}()
	stopped, err := rt.Stop(ctx, spec.ID, syscall.SIGTERM, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if stopped.State != StateExited || stopped.Signal != "SIGKILL" {
		t.Errorf("Stop = %+v, want exited by SIGKILL", stopped)
	}
	if w := <-waited; w != stopped {
		t.Errorf("Wait = %+v, want %+v", w, stopped)
	}
}

func parentPid(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatal(err)
	}
	return ppid
}

func TestRemove(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct {
		name  string
		args  []string
		start bool
		wait  bool
	}{
		{name: "running", args: []string{"sleep", "1000"}, start: true},
		{name: "exited", args: []string{"true"}, start: true, wait: true},
		{name: "created, never started", args: []string{"true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			id := "rm" + randomHex(t, 2)
			spec := e.spec(id, tc.args...)
			spec.Args = []string{"sh", "-c", strings.Join(tc.args, " ")}
			if err := e.rt.Create(ctx, spec); err != nil {
				t.Fatal(err)
			}
			if tc.start {
				if err := e.rt.Start(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			if tc.wait {
				if _, err := e.rt.Wait(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			dir := filepath.Join(e.cfg.StateDir, id)
			if mounted, err := isMountPoint(filepath.Join(dir, rootfsDir)); err != nil || !mounted {
				t.Fatalf("rootfs mounted = %v, %v before Remove; want true", mounted, err)
			}

			if tc.start && !tc.wait {
				// The check below means something only if runc made them.
				if got := cgroupDirs(t, filepath.Join(e.cfg.CgroupParent, id)); len(got) == 0 {
					t.Errorf("no cgroup %s/%s for the running container", e.cfg.CgroupParent, id)
				}
			}

			if err := e.rt.Remove(ctx, id); err != nil {
				t.Fatal(err)
			}
			mounts, err := readMountInfo()
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range mounts {
				if strings.HasPrefix(m.mountPoint, dir) {
					t.Errorf("%s is still mounted", m.mountPoint)
				}
			}
			if left := cgroupDirs(t, filepath.Join(e.cfg.CgroupParent, id)); len(left) > 0 {
				t.Errorf("cgroups left: %q", left)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("state directory: %v, want it gone", err)
			}
			if _, err := os.Stat(filepath.Join(e.cfg.Root, id)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("runc state: %v, want it gone", err)
			}
			if st, err := e.rt.Status(ctx, id); err != nil || st.State != StateUnknown {
				t.Errorf("Status = %+v, %v; want unknown", st, err)
			}
			if ids, err := e.rt.List(ctx); err != nil || slices.Contains(ids, id) {
				t.Errorf("List = %q, %v; want no %q", ids, err, id)
			}
			if err := e.rt.Remove(ctx, id); err != nil {
				t.Errorf("second Remove = %v, want nil", err)
			}
		})
	}
}

func TestUser(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct {
		name string
		user string
		want []string // uid, gid, groups, HOME
	}{
		{name: "default is root", user: "", want: []string{"0", "0", "0", "/root"}},
		{name: "name from passwd", user: "nobody", want: []string{"65534", "65534", "65534 3456", "/nonexistent"}},
		{name: "name with supplementary group", user: "shtuser", want: []string{"1234", "2345", "2345 3456", "/home/shtuser"}},
		{name: "name and group name", user: "shtuser:root", want: []string{"1234", "0", "0 3456", "/home/shtuser"}},
		{name: "numeric without entry", user: "4000:4001", want: []string{"4000", "4001", "4001", "/"}},
		{name: "numeric uid with entry", user: "1234", want: []string{"1234", "2345", "2345 3456", "/home/shtuser"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := e.spec("user"+randomHex(t, 2), "sh", "-c", `id -u; id -g; id -G; echo "$HOME"`)
			spec.User = tc.user
			st, stdout, stderr := e.output(t, spec)
			if st.ExitCode != 0 || !slices.Equal(stdout, tc.want) {
				t.Errorf("user %q: exit %d, output %q (stderr %q); want %q", tc.user, st.ExitCode, stdout, stderr, tc.want)
			}
		})
	}
	t.Run("unknown name", func(t *testing.T) {
		spec := e.spec("user-unknown", "id")
		spec.User = "nosuchuser"
		if err := e.rt.Create(testContext(t), spec); !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("Create = %v, want ErrInvalidSpec", err)
		}
		dir := filepath.Join(e.cfg.StateDir, spec.ID)
		if mounted, err := isMountPoint(filepath.Join(dir, rootfsDir)); err != nil || mounted {
			t.Errorf("rootfs mounted = %v, %v after a failed Create; want false", mounted, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("state directory after a failed Create: %v, want it gone", err)
		}
	})
}

func TestContainerEnvironment(t *testing.T) {
	e := newTestEnv(t)
	statusField := func(field string) string {
		return fmt.Sprintf(`while read k v; do if [ "$k" = %s: ]; then echo "$v"; fi; done < /proc/self/status`, field)
	}
	for _, tc := range []struct {
		name string
		edit func(*Spec)
		cmd  string
		want []string
	}{
		{
			name: "hostname and env",
			edit: func(s *Spec) { s.Hostname = "shtbox"; s.Env = []string{"FOO=bar baz"} },
			cmd:  `hostname; echo "$FOO"`,
			want: []string{"shtbox", "bar baz"},
		},
		{
			name: "default PATH and cwd",
			cmd:  `echo "$PATH"; pwd`,
			want: []string{defaultPath, "/"},
		},
		{
			name: "cwd",
			edit: func(s *Spec) { s.Cwd = "/tmp" },
			cmd:  `pwd`,
			want: []string{"/tmp"},
		},
		{
			name: "hosts and resolv.conf are read-only files",
			edit: func(s *Spec) {
				s.Hosts = []byte("10.0.0.1 shtpeer\n")
				s.ResolvConf = []byte("nameserver 10.0.0.53\n")
			},
			cmd:  `cat /etc/hosts /etc/resolv.conf; touch /etc/hosts 2>/dev/null || echo read-only`,
			want: []string{"10.0.0.1 shtpeer", "nameserver 10.0.0.53", "read-only"},
		},
		{
			// Docker's default set: 0xa80425fb.
			name: "root has Docker's capabilities and no new privileges",
			cmd:  statusField("CapEff") + "; " + statusField("CapBnd") + "; " + statusField("NoNewPrivs"),
			want: []string{"00000000a80425fb", "00000000a80425fb", "1"},
		},
		{
			name: "a non-root user has no effective capabilities",
			edit: func(s *Spec) { s.User = "nobody" },
			cmd:  statusField("CapEff") + "; " + statusField("CapBnd"),
			want: []string{"0000000000000000", "00000000a80425fb"},
		},
		{
			name: "fresh network namespace has only loopback",
			cmd:  `ls /sys/class/net`,
			want: []string{"lo"},
		},
		{
			name: "kernel interfaces are masked",
			cmd:  `s=$(cat /proc/timer_list); echo "${#s}"; touch /proc/sysrq-trigger 2>/dev/null || echo read-only`,
			want: []string{"0", "read-only"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := e.spec("env"+randomHex(t, 2), "sh", "-c", tc.cmd)
			if tc.edit != nil {
				tc.edit(&spec)
			}
			st, stdout, stderr := e.output(t, spec)
			if st.ExitCode != 0 || !slices.Equal(stdout, tc.want) {
				t.Errorf("exit %d, output %q (stderr %q); want %q", st.ExitCode, stdout, stderr, tc.want)
			}
		})
	}
}

func TestStartFailure(t *testing.T) {
	e := newTestEnv(t)
	ctx := testContext(t)
	spec := e.spec("noexec", "/no/such/binary")
	if err := e.rt.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	err := e.rt.Start(ctx, spec.ID)
	if !errors.Is(err, ErrStartFailed) || !strings.Contains(err.Error(), "/no/such/binary") {
		t.Errorf("Start = %v, want ErrStartFailed naming the binary", err)
	}
	st, err := e.rt.Status(ctx, spec.ID)
	if err != nil || st.State != StateExited || st.ExitCode == 0 {
		t.Errorf("Status = %+v, %v; want exited with a non-zero code", st, err)
	}
}

func TestCreateIsIdempotent(t *testing.T) {
	e := newTestEnv(t)
	ctx := testContext(t)
	spec := e.spec("idem", "sh", "-c", "echo one")
	if err := e.rt.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if st, err := e.rt.Status(ctx, spec.ID); err != nil || st.State != StateCreated {
		t.Fatalf("Status after Create = %+v, %v; want created", st, err)
	}
	// A second Create (a restarted daemon repeating itself) keeps the
	// bundle it finds: no second mount, the same command.
	spec2 := spec
	spec2.Args = []string{"sh", "-c", "echo two"}
	if err := e.rt.Create(ctx, spec2); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(e.cfg.StateDir, spec.ID, rootfsDir)
	mounts, err := readMountInfo()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, m := range mounts {
		if m.mountPoint == rootfs {
			n++
		}
	}
	if n != 1 {
		t.Errorf("rootfs mounted %d times, want once", n)
	}
	if err := e.rt.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.rt.Wait(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if stdout, _ := e.logs(t, spec.ID); !slices.Equal(stdout, []string{"one"}) {
		t.Errorf("stdout = %q, want the first bundle's output", stdout)
	}
}

func TestUnknownContainer(t *testing.T) {
	e := newTestEnv(t)
	ctx := testContext(t)
	if st, err := e.rt.Status(ctx, "nosuch"); err != nil || st.State != StateUnknown {
		t.Errorf("Status = %+v, %v; want unknown, nil", st, err)
	}
	for name, err := range map[string]error{
		"Start": e.rt.Start(ctx, "nosuch"),
		"Wait":  func() error { _, err := e.rt.Wait(ctx, "nosuch"); return err }(),
		"Stop":  func() error { _, err := e.rt.Stop(ctx, "nosuch", 0, time.Second); return err }(),
		"Logs":  e.rt.Logs(ctx, "nosuch", 0, false, func(LogLine) error { return nil }),
	} {
		if !errors.Is(err, ErrNotFound) {
			t.Errorf("%s = %v, want ErrNotFound", name, err)
		}
	}
	if err := e.rt.Remove(ctx, "nosuch"); err != nil {
		t.Errorf("Remove = %v, want nil", err)
	}
	if err := e.rt.Create(ctx, e.spec("../escape", "true")); !errors.Is(err, ErrInvalidID) {
		t.Errorf("Create with a path as id = %v, want ErrInvalidID", err)
	}
}

func TestLayers(t *testing.T) {
	e := newTestEnv(t)
	for _, tc := range []struct {
		name  string
		extra int // layers above busybox
	}{
		{name: "few layers through mount(2)", extra: 2},
		// 60 long paths do not fit mount(2)'s one-page options.
		{name: "many layers through fsconfig", extra: 60},
	} {
		t.Run(tc.name, func(t *testing.T) {
			layers := []string{e.layer}
			for i := range tc.extra {
				l := filepath.Join(e.base, fmt.Sprintf("layer-%02d-%s", i, strings.Repeat("x", 80)))
				if err := os.MkdirAll(l, 0o755); err != nil {
					t.Fatal(err)
				}
				// Every layer overrides /top; only the highest one's
				// content may show.
				for name, data := range map[string]string{"top": strconv.Itoa(i), fmt.Sprintf("only-%d", i): "x"} {
					if err := os.WriteFile(filepath.Join(l, name), []byte(data+"\n"), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				layers = append(layers, l)
			}
			spec := e.spec("layers"+randomHex(t, 2), "sh", "-c", "cat /top; cat /only-0; echo changed > /top; cat /top")
			spec.Layers = layers
			st, stdout, stderr := e.output(t, spec)
			want := []string{strconv.Itoa(tc.extra - 1), "x", "changed"}
			if st.ExitCode != 0 || !slices.Equal(stdout, want) {
				t.Errorf("exit %d, output %q (stderr %q); want %q", st.ExitCode, stdout, stderr, want)
			}
			// Writes go to the container's upper directory, never a layer.
			if b, err := os.ReadFile(filepath.Join(layers[len(layers)-1], "top")); err != nil || string(b) != want[0]+"\n" {
				t.Errorf("top layer's /top = %q, %v; want it unchanged", b, err)
			}
		})
	}
}

func TestShimDeath(t *testing.T) {
	e := newTestEnv(t)
	ctx := testContext(t)
	spec := e.spec("orphan", "sleep", "1000")
	e.run(t, spec)
	shimPid, err := readPid(filepath.Join(e.cfg.StateDir, spec.ID, shimPidFile))
	if err != nil {
		t.Fatal(err)
	}
	// The shim is this test's own process (through Start).
	if err := syscall.Kill(shimPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for isShimProcess(shimPid, filepath.Join(e.cfg.StateDir, spec.ID)) {
		select {
		case <-ctx.Done():
			t.Fatal("the shim did not die")
		case <-time.After(10 * time.Millisecond):
		}
	}
	// runc and the container outlive the shim; runc's state says so.
	st, err := e.rt.Status(ctx, spec.ID)
	if err != nil || st.State != StateRunning || st.Pid <= 0 {
		t.Fatalf("Status without a shim = %+v, %v; want running", st, err)
	}
	st, err = e.rt.Stop(ctx, spec.ID, syscall.SIGKILL, 0)
	if err != nil || st.State != StateExited || st.ExitCode != unknownExitCode {
		t.Errorf("Stop without a shim = %+v, %v; want exited with the unknown exit code %d", st, err, unknownExitCode)
	}
}

func TestRuncDeath(t *testing.T) {
	e := newTestEnv(t)
	ctx := testContext(t)
	spec := e.spec("runcdeath", "sleep", "1000")
	e.run(t, spec)
	st, err := e.rt.Status(ctx, spec.ID)
	if err != nil || st.State != StateRunning {
		t.Fatalf("Status = %+v, %v; want running", st, err)
	}
	shimPid, err := readPid(filepath.Join(e.cfg.StateDir, spec.ID, shimPidFile))
	if err != nil {
		t.Fatal(err)
	}
	runcPid := childPid(t, shimPid)
	// runc is this test's own process (through Start and the shim).
	if err := syscall.Kill(runcPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	final, err := e.rt.Wait(ctx, spec.ID)
	if err != nil || final.State != StateExited || final.Signal != "SIGKILL" {
		t.Errorf("Wait = %+v, %v; want exited by SIGKILL", final, err)
	}
	// The shim took the orphaned container down with runc. It may be a
	// zombie for a moment, until init reaps it.
	if alive, state := processAlive(st.Pid); alive {
		t.Errorf("container init %d after runc died: state %q, want it gone", st.Pid, state)
	}
}

// processAlive reports whether pid exists and is not a zombie, and its
// state letter from /proc.
func processAlive(pid int) (bool, string) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false, "gone"
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return f[0] != "Z" && f[0] != "X", f[0]
}

// childPid returns the pid of parent's only child.
func childPid(t *testing.T, parent int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var kids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(parent) {
			kids = append(kids, pid)
		}
	}
	if len(kids) != 1 {
		t.Fatalf("children of %d: %v, want exactly one", parent, kids)
	}
	return kids[0]
}
