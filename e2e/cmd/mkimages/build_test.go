package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/agent/image"
)

func buildInto(t *testing.T, out string) {
	t.Helper()
	if _, err := os.Stat(defaultBusybox); err != nil {
		t.Skipf("%s missing (install busybox-static: make deps): %v", defaultBusybox, err)
	}
	if _, err := os.Stat(defaultIperf3); err != nil {
		t.Skipf("%s missing (install iperf3: make deps): %v", defaultIperf3, err)
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("go toolchain not in PATH: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := build(ctx, options{out: out, busybox: defaultBusybox, testapp: defaultTestappPkg, iperf3: defaultIperf3}); err != nil {
		t.Fatalf("build: %v", err)
	}
}

func TestImagesLoadIntoTheStore(t *testing.T) {
	out := t.TempDir()
	buildInto(t, out)
	store, err := image.Open(image.Config{Dir: filepath.Join(t.TempDir(), "images")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	load := func(file string) *image.Image {
		t.Helper()
		f, err := os.Open(filepath.Join(out, file))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		imgs, err := store.Load(ctx, f)
		if err != nil {
			t.Fatalf("load %s: %v", file, err)
		}
		if len(imgs) != 1 {
			t.Fatalf("load %s: %d images, want 1", file, len(imgs))
		}
		return imgs[0]
	}

	app := load(testappFile)
	if want := []string{"docker.io/shoal/testapp:latest"}; !slices.Equal(app.Refs, want) {
		t.Errorf("testapp refs = %q, want %q", app.Refs, want)
	}
	if !slices.Equal(app.Config.Entrypoint, []string{"/usr/local/bin/testapp"}) || app.Config.StopSignal != "SIGTERM" ||
		!slices.Contains(app.Config.Env, pathEnv) {
		t.Errorf("testapp config = %+v", app.Config)
	}
	if len(app.Layers) != 2 {
		t.Fatalf("testapp layers = %q, want busybox + testapp", app.Layers)
	}
	bin := filepath.Join(app.Layers[1], "usr/local/bin/testapp")
	if fi, err := os.Stat(bin); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("testapp binary = %v, %v; want an executable", fi, err)
	}
	if err := checkStatic(bin); err != nil {
		t.Errorf("testapp binary is not static: %v", err)
	}
	// The binary in the layer is the real app: its exit mode works.
	err = exec.Command(bin, "-exit", "7", "-after", "0s").Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("testapp -exit 7 = %v, want exit code 7", err)
	}

	base := app.Layers[0]
	if target, err := os.Readlink(filepath.Join(base, "bin/sh")); err != nil || target != "busybox" {
		t.Errorf("bin/sh -> %q, %v; want busybox", target, err)
	}
	for _, applet := range []string{"sh", "ls", "cat", "wget", "sleep", "echo", "env", "ps", "kill", "nc", "timeout", "true", "false"} {
		if _, err := os.Lstat(filepath.Join(base, "bin", applet)); err != nil {
			t.Errorf("applet %s missing: %v", applet, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(base, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("tmp = %v, %v; want mode 1777", fi, err)
	}
	passwd, err := os.ReadFile(filepath.Join(base, "etc/passwd"))
	if err != nil || !bytes.Contains(passwd, []byte("root:x:0:0:")) || !bytes.Contains(passwd, []byte("nobody:x:65534:65534:")) {
		t.Errorf("etc/passwd = %q, %v; want root and nobody", passwd, err)
	}
	if out, err := exec.Command(filepath.Join(base, "bin/busybox"), "echo", "hello").Output(); err != nil || strings.TrimSpace(string(out)) != "hello" {
		t.Errorf("busybox echo = %q, %v", out, err)
	}

	bb := load(busyboxFile)
	if want := []string{"docker.io/shoal/busybox:latest"}; !slices.Equal(bb.Refs, want) {
		t.Errorf("busybox refs = %q, want %q", bb.Refs, want)
	}
	if !slices.Equal(bb.Config.Cmd, []string{"sh"}) {
		t.Errorf("busybox Cmd = %q, want [sh]", bb.Config.Cmd)
	}
	if len(bb.Layers) != 1 || bb.Layers[0] != base {
		t.Errorf("busybox layers = %q, want the testapp image's busybox layer %s, unpacked once", bb.Layers, base)
	}

	perf := load(iperf3File)
	if want := []string{"docker.io/shoal/iperf3:latest"}; !slices.Equal(perf.Refs, want) {
		t.Errorf("iperf3 refs = %q, want %q", perf.Refs, want)
	}
	if !slices.Equal(perf.Config.Cmd, []string{"iperf3", "-s"}) || !slices.Contains(perf.Config.Env, pathEnv) {
		t.Errorf("iperf3 config = %+v, want Cmd [iperf3 -s] and PATH", perf.Config)
	}
	if len(perf.Layers) != 2 || perf.Layers[0] != base {
		t.Fatalf("iperf3 layers = %q, want the busybox layer %s + iperf3", perf.Layers, base)
	}
	// The layer is enough to run iperf3: its own loader, told to look in
	// the layer's library directories first, loads every library from the
	// layer and starts it.
	layer := perf.Layers[1]
	interp, libs, err := runtimeFiles(defaultIperf3, mustSearchPath(t, defaultIperf3))
	if err != nil {
		t.Fatal(err)
	}
	var libDirs []string
	for _, l := range libs {
		libDirs = append(libDirs, filepath.Join(layer, filepath.Dir(l)))
	}
	slices.Sort(libDirs)
	loader := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(layer, interp), append([]string{"--inhibit-cache",
			"--library-path", strings.Join(slices.Compact(libDirs), ":")}, args...)...).CombinedOutput()
		return string(out), err
	}
	list, err := loader("--list", filepath.Join(layer, iperf3Path))
	if err != nil {
		t.Fatalf("the layer's loader --list iperf3: %v: %s", err, list)
	}
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		if _, where, ok := strings.Cut(line, "=> "); ok && !strings.HasPrefix(where, layer+"/") {
			t.Errorf("iperf3 loads %q from outside the layer", line)
		}
	}
	if out, err := loader(filepath.Join(layer, iperf3Path), "--version"); err != nil || !strings.HasPrefix(out, "iperf 3") {
		t.Errorf("iperf3 --version from the layer = %q, %v", out, err)
	}
}

func TestBuildIsReproducible(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	buildInto(t, a)
	buildInto(t, b)
	for _, f := range []string{testappFile, busyboxFile, iperf3File} {
		x, err := os.ReadFile(filepath.Join(a, f))
		if err != nil {
			t.Fatal(err)
		}
		y, err := os.ReadFile(filepath.Join(b, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two builds", f)
		}
	}
}

func TestMissingToolExplainsFix(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	for _, tc := range []struct {
		name  string
		o     options
		needs string // a tool checked before the missing one
		want  string
	}{
		{"busybox", options{busybox: missing, iperf3: defaultIperf3}, "", "install busybox-static: make deps"},
		{"iperf3", options{busybox: defaultBusybox, iperf3: missing}, defaultBusybox, "install iperf3: make deps"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := os.Stat(tc.needs); tc.needs != "" && err != nil {
				t.Skipf("%s missing (make deps): %v", tc.needs, err)
			}
			tc.o.out, tc.o.testapp = t.TempDir(), defaultTestappPkg
			err := build(context.Background(), tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("build without %s = %v, want the hint %q", tc.name, err, tc.want)
			}
		})
	}
}
