package container

import (
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// shimMarker makes the test binary act as the shim: Start runs
// ShimCommand = {test binary, shimMarker}, the way shoald runs `shoald shim`.
const shimMarker = "shoal-test-shim"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == shimMarker {
		os.Exit(ShimMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// testTimeout bounds every container operation of a test so that a bug
// fails the test instead of hanging it.
const testTimeout = 60 * time.Second

// busyboxApplets are linked into the test image's /bin.
var busyboxApplets = []string{"sh", "echo", "sleep", "cat", "id", "hostname", "ls", "touch"}

const (
	testPasswd = "root:x:0:0:root:/root:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n" +
		"shtuser:x:1234:2345:test user:/home/shtuser:/bin/sh\n"
	testGroup = "root:x:0:\n" +
		"nogroup:x:65534:\n" +
		"shtgrp:x:2345:\n" +
		"extra:x:3456:nobody,shtuser\n"
)

// testEnv is one test's runtime with everything it creates on the host
// named after prefix and cleaned up when the test ends.
type testEnv struct {
	rt     *Runtime
	cfg    Config
	prefix string // "sht" + 6 random hex characters
	base   string // temporary directory holding state, runc root and layer
	layer  string // the busybox image layer
}

// newTestEnv skips unless the test can run containers: root, runc and a
// static busybox.
func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running containers needs root")
	}
	runcPath, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc is not installed")
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil || !isStatic(busybox) {
		t.Skip("a static busybox (Debian's busybox-static) is needed for the test image")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{prefix: "sht" + randomHex(t, 3)}
	e.base, err = os.MkdirTemp("", e.prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-registered first: containers, then cgroups and
	// stray mounts, then the directory.
	t.Cleanup(func() { os.RemoveAll(e.base) })
	t.Cleanup(func() { e.cleanupHost(t) })

	e.layer = filepath.Join(e.base, "layer")
	buildBusyboxLayer(t, e.layer, busybox)
	e.cfg = Config{
		RuncBinary:   runcPath,
		Root:         filepath.Join(e.base, "runc"),
		StateDir:     filepath.Join(e.base, "containers"),
		CgroupParent: "/" + e.prefix,
		ShimCommand:  []string{exe, shimMarker},
	}
	e.rt, err = New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		rt, err := New(e.cfg)
		if err != nil {
			t.Error(err)
			return
		}
		ids, _ := rt.List(ctx)
		for _, id := range ids {
			if err := rt.Remove(ctx, id); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return e
}

// cleanupHost removes what a failed test may have left: mounts under the
// test's directory and its cgroups in every hierarchy.
func (e *testEnv) cleanupHost(t *testing.T) {
	mounts, err := readMountInfo()
	if err != nil {
		t.Error(err)
		return
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		if strings.HasPrefix(mounts[i].mountPoint, e.base+"/") {
			t.Errorf("cleanup: %s was still mounted", mounts[i].mountPoint)
			_ = unix.Unmount(mounts[i].mountPoint, unix.MNT_DETACH)
		}
	}
	for _, p := range cgroupDirs(t, e.prefix) {
		// Children first: walk collects parents before children.
		var dirs []string
		_ = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil {
				t.Errorf("cleanup: remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}

// cgroupDirs returns rel (a path below the cgroup roots) in every cgroup
// hierarchy where it exists.
func cgroupDirs(t *testing.T, rel string) []string {
	t.Helper()
	mounts, err := readMountInfo()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range mounts {
		if m.fsType != "cgroup" && m.fsType != "cgroup2" {
			continue
		}
		p := filepath.Join(m.mountPoint, rel)
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func buildBusyboxLayer(t *testing.T, dir, busybox string) {
	t.Helper()
	for _, d := range []string{"bin", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src, err := os.Open(busybox)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(dir, "bin", "busybox"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	for _, a := range busyboxApplets {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range map[string]string{"etc/passwd": testPasswd, "etc/group": testGroup} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
}

func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// spec returns a spec for a container of the busybox image running args.
func (e *testEnv) spec(id string, args ...string) Spec {
	return Spec{ID: id, Layers: []string{e.layer}, Args: args}
}

// run creates and starts a container.
func (e *testEnv) run(t *testing.T, spec Spec) {
	t.Helper()
	ctx := testContext(t)
	if err := e.rt.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := e.rt.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
}

// output runs a container to completion and returns its exit status and
// its stdout and stderr lines.
func (e *testEnv) output(t *testing.T, spec Spec) (Status, []string, []string) {
	t.Helper()
	e.run(t, spec)
	ctx := testContext(t)
	st, err := e.rt.Wait(ctx, spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr := e.logs(t, spec.ID)
	return st, stdout, stderr
}

// logs returns a container's stored stdout and stderr lines.
func (e *testEnv) logs(t *testing.T, id string) (stdout, stderr []string) {
	t.Helper()
	err := e.rt.Logs(testContext(t), id, 0, false, func(l LogLine) error {
		switch l.Stream {
		case "stdout":
			stdout = append(stdout, string(l.Line))
		case "stderr":
			stderr = append(stderr, string(l.Line))
		default:
			t.Errorf("log line %q has stream %q", l.Line, l.Stream)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return stdout, stderr
}

// waitForLine follows a container's log until a stdout line equal to want
// appears.
func (e *testEnv) waitForLine(t *testing.T, id, want string) {
	t.Helper()
	errFound := io.EOF // any sentinel
	err := e.rt.Logs(testContext(t), id, 0, true, func(l LogLine) error {
		if l.Stream == "stdout" && string(l.Line) == want {
			return errFound
		}
		return nil
	})
	if !errors.Is(err, errFound) {
		t.Fatalf("waiting for %q in the log of %s: %v", want, id, err)
	}
}
