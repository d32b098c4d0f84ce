package main

import (
	"archive/tar"
	"os"
	"os/exec"
	"path"
	"slices"
	"strings"
	"testing"
)

func mustSearchPath(t *testing.T, bin string) []string {
	t.Helper()
	dirs, err := libSearchPath(bin)
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

func needIperf3(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(defaultIperf3); err != nil {
		t.Skipf("%s missing (install iperf3: make deps): %v", defaultIperf3, err)
	}
}

func TestRuntimeFiles(t *testing.T) {
	needIperf3(t)
	for _, tc := range []struct {
		name       string
		bin        string
		dirs       func(t *testing.T) []string // nil: the loader's search path
		wantInterp bool
		wantLibs   []string // base names that must be among the libraries
		wantErr    string
	}{
		{name: "iperf3", bin: defaultIperf3, wantInterp: true, wantLibs: []string{"libiperf.so.0", "libc.so.6"}},
		{name: "static busybox", bin: defaultBusybox},
		{name: "libraries nowhere", bin: defaultIperf3, dirs: func(t *testing.T) []string { return []string{t.TempDir()} },
			wantErr: "needs libiperf.so.0: not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := os.Stat(tc.bin); err != nil {
				t.Skipf("%s missing (make deps): %v", tc.bin, err)
			}
			dirs := mustSearchPath(t, tc.bin)
			if tc.dirs != nil {
				dirs = tc.dirs(t)
			}
			interp, libs, err := runtimeFiles(tc.bin, dirs)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("runtimeFiles = %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (interp != "") != tc.wantInterp {
				t.Errorf("interpreter = %q, want one: %v", interp, tc.wantInterp)
			}
			if !tc.wantInterp {
				if len(libs) != 0 {
					t.Errorf("a static binary needs %q", libs)
				}
				return
			}
			if _, err := os.Stat(interp); err != nil || !path.IsAbs(interp) {
				t.Errorf("interpreter %q: %v", interp, err)
			}
			var bases []string
			for _, l := range libs {
				if !slices.Contains(dirs, path.Dir(l)) {
					t.Errorf("library %s is in no directory of %q", l, dirs)
				}
				bases = append(bases, path.Base(l))
			}
			if !slices.IsSorted(libs) || len(slices.Compact(slices.Clone(libs))) != len(libs) {
				t.Errorf("libraries %q are not sorted and unique", libs)
			}
			if slices.Contains(bases, path.Base(interp)) {
				t.Errorf("libraries %q repeat the interpreter %s", libs, interp)
			}
			for _, w := range tc.wantLibs {
				if !slices.Contains(bases, w) {
					t.Errorf("libraries %q lack %s", libs, w)
				}
			}
			// The system's ldd, where present, names the same libraries.
			if _, err := exec.LookPath("ldd"); err == nil {
				out, err := exec.Command("ldd", tc.bin).Output()
				if err != nil {
					t.Fatalf("ldd %s: %v", tc.bin, err)
				}
				var fromLdd []string
				for _, line := range strings.Split(string(out), "\n") {
					if name, _, ok := strings.Cut(strings.TrimSpace(line), " => "); ok {
						fromLdd = append(fromLdd, name)
					}
				}
				slices.Sort(fromLdd)
				slices.Sort(bases)
				if !slices.Equal(bases, fromLdd) {
					t.Errorf("libraries %q, ldd says %q", bases, fromLdd)
				}
			}
		})
	}
}

func TestIperf3Layer(t *testing.T) {
	needIperf3(t)
	es, err := iperf3Entries(defaultIperf3)
	if err != nil {
		t.Fatal(err)
	}
	interp, libs, err := runtimeFiles(defaultIperf3, mustSearchPath(t, defaultIperf3))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]entry{}
	for _, e := range es {
		names[strings.TrimSuffix(e.hdr.Name, "/")] = e
	}
	var libiperf string
	for _, l := range libs {
		if path.Base(l) == "libiperf.so.0" {
			libiperf = l
		}
	}
	for _, want := range []struct {
		name string
		mode int64
	}{
		{iperf3Path, 0o755},
		{strings.TrimPrefix(interp, "/"), 0o755}, // e.g. lib64/ld-linux-x86-64.so.2
		{strings.TrimPrefix(libiperf, "/"), 0o644},
	} {
		e, ok := names[want.name]
		if !ok || e.hdr.Mode != want.mode || len(e.body) == 0 {
			t.Errorf("layer entry %s = %+v, present %v; want a regular file, mode %o", want.name, e.hdr, ok, want.mode)
		}
	}
	if len(names) != len(es) {
		t.Errorf("%d entries under %d names", len(es), len(names))
	}
	for n := range names {
		if d := path.Dir(n); d != "." {
			if p, ok := names[d]; !ok || p.hdr.Typeflag != tar.TypeDir {
				t.Errorf("%s has no parent directory entry", n)
			}
		}
	}
}
