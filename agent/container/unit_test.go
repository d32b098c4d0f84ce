package container

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestParseSignal(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    syscall.Signal
		wantErr bool
	}{
		{in: "SIGTERM", want: syscall.SIGTERM},
		{in: "TERM", want: syscall.SIGTERM},
		{in: "15", want: syscall.SIGTERM},
		{in: "sigquit", want: syscall.SIGQUIT},
		{in: "usr1", want: syscall.SIGUSR1},
		{in: " KILL ", want: syscall.SIGKILL},
		{in: "34", want: syscall.Signal(34)},
		{in: "0", wantErr: true},
		{in: "65", wantErr: true},
		{in: "SIGNOPE", wantErr: true},
		{in: "", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSignal(tc.in)
			if tc.wantErr {
				if !errors.Is(err, ErrInvalidSignal) {
					t.Errorf("ParseSignal(%q) = %v, %v; want ErrInvalidSignal", tc.in, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParseSignal(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestExitFromCode(t *testing.T) {
	for _, tc := range []struct {
		name       string
		code       int
		wantSignal string
	}{
		{name: "success", code: 0},
		{name: "plain failure", code: 1},
		{name: "128 is not a signal", code: 128},
		{name: "SIGKILL", code: 137, wantSignal: "SIGKILL"},
		{name: "SIGTERM", code: 143, wantSignal: "SIGTERM"},
		{name: "unknown exit", code: 255},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := exitFromCode(tc.code)
			if rec.Code != tc.code || rec.Signal != tc.wantSignal {
				t.Errorf("exitFromCode(%d) = %+v, want code %d signal %q", tc.code, rec, tc.code, tc.wantSignal)
			}
		})
	}
}

func TestCopyLines(t *testing.T) {
	long := strings.Repeat("a", maxLogLineBytes)
	for _, tc := range []struct {
		name string
		in   string
		want []string
	}{
		{name: "lines", in: "one\ntwo\n", want: []string{"one", "two"}},
		{name: "empty lines kept", in: "one\n\ntwo\n", want: []string{"one", "", "two"}},
		{name: "unterminated last line", in: "one\ntwo", want: []string{"one", "two"}},
		{name: "exactly the limit", in: long + "\nnext\n", want: []string{long, "next"}},
		{name: "split long line", in: long + long + "b\n", want: []string{long, long, "b"}},
		{name: "empty line after a long one", in: long + "\n\n", want: []string{long, ""}},
		{name: "nothing", in: "", want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := &logWriter{w: &buf, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			copyLines(strings.NewReader(tc.in), "stderr", w)
			var got []string
			for _, l := range bytes.SplitAfter(buf.Bytes(), []byte("\n")) {
				if len(l) == 0 {
					continue
				}
				ll, err := parseLogLine(l)
				if err != nil {
					t.Fatalf("record %q: %v", l, err)
				}
				if ll.Stream != "stderr" || ll.Time.IsZero() {
					t.Errorf("record %q: stream %q time %v", l, ll.Stream, ll.Time)
				}
				got = append(got, string(ll.Line))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("lines = %q, want %q", shorten(got), shorten(tc.want))
			}
		})
	}
}

func shorten(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		if len(l) > 20 {
			l = fmt.Sprintf("%s...(%d bytes)", l[:10], len(l))
		}
		out[i] = l
	}
	return out
}

func TestTailOffset(t *testing.T) {
	var many strings.Builder
	for i := range 20000 { // several tail chunks
		fmt.Fprintf(&many, "line %d\n", i)
	}
	for _, tc := range []struct {
		name    string
		content string
		n       int
		want    string
	}{
		{name: "last line", content: "a\nb\nc\n", n: 1, want: "c\n"},
		{name: "last two", content: "a\nb\nc\n", n: 2, want: "b\nc\n"},
		{name: "more than stored", content: "a\nb\n", n: 5, want: "a\nb\n"},
		{name: "partial line is not counted", content: "a\nb\nc", n: 1, want: "b\nc"},
		{name: "empty file", content: "", n: 3, want: ""},
		{name: "across chunks", content: many.String(), n: 3, want: "line 19997\nline 19998\nline 19999\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "log")
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			off, err := tailOffset(f, tc.n)
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.content[off:]; got != tc.want {
				t.Errorf("tail from offset %d = %q, want %q", off, got, tc.want)
			}
		})
	}
}

func TestParseMountInfo(t *testing.T) {
	in := "26 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n" +
		"31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu\n" +
		"99 26 0:50 / /run/with\\040space/rootfs rw - overlay overlay rw,lowerdir=/a\n" +
		"garbage\n"
	want := []mountInfo{
		{mountPoint: "/", fsType: "ext4", superOpts: "rw"},
		{mountPoint: "/sys/fs/cgroup/cpu", fsType: "cgroup", superOpts: "rw,cpu"},
		{mountPoint: "/run/with space/rootfs", fsType: "overlay", superOpts: "rw,lowerdir=/a"},
	}
	if got := parseMountInfo([]byte(in)); !slices.Equal(got, want) {
		t.Errorf("parseMountInfo = %+v, want %+v", got, want)
	}
}

func TestResolveUser(t *testing.T) {
	rootfs := t.TempDir()
	if err := os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{"etc/passwd": testPasswd, "etc/group": testGroup} {
		if err := os.WriteFile(filepath.Join(rootfs, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A hostile image pointing at a host file reads the rootfs's own copy
	// instead: the link resolves inside the rootfs.
	hostile := t.TempDir()
	if err := os.MkdirAll(filepath.Join(hostile, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(outside, []byte("evil:x:77:77::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(hostile, "etc", "passwd")); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		rootfs  string
		user    string
		want    execUser
		wantErr error
	}{
		{name: "default root", rootfs: rootfs, want: execUser{Home: "/root"}},
		{name: "name", rootfs: rootfs, user: "shtuser", want: execUser{UID: 1234, GID: 2345, AdditionalGids: []uint32{3456}, Home: "/home/shtuser"}},
		{name: "name and gid", rootfs: rootfs, user: "shtuser:7", want: execUser{UID: 1234, GID: 7, AdditionalGids: []uint32{3456}, Home: "/home/shtuser"}},
		{name: "uid and group name", rootfs: rootfs, user: "99:shtgrp", want: execUser{UID: 99, GID: 2345, Home: "/"}},
		{name: "unknown user", rootfs: rootfs, user: "nosuch", wantErr: ErrInvalidSpec},
		{name: "unknown group", rootfs: rootfs, user: "shtuser:nosuch", wantErr: ErrInvalidSpec},
		{name: "no passwd file, numeric", rootfs: t.TempDir(), user: "5:6", want: execUser{UID: 5, GID: 6, Home: "/"}},
		{name: "symlink out of the rootfs", rootfs: hostile, user: "evil", wantErr: ErrInvalidSpec},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveUser(tc.rootfs, tc.user)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Errorf("resolveUser(%q) = %+v, %v; want %v", tc.user, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got.UID != tc.want.UID || got.GID != tc.want.GID || got.Home != tc.want.Home ||
				!slices.Equal(got.AdditionalGids, tc.want.AdditionalGids) {
				t.Errorf("resolveUser(%q) = %+v, %v; want %+v", tc.user, got, err, tc.want)
			}
		})
	}
}

func TestOCISpec(t *testing.T) {
	rt := &Runtime{cfg: Config{CgroupParent: "/shoal"}, cg: cgroupHost{swapLimit: true}}
	spec := Spec{
		ID: "c1", Hostname: "h", Args: []string{"app"}, Env: []string{"PATH=/bin"},
		NetNSPath: "/run/netns/x", Labels: map[string]string{"k": "v"}, Hosts: []byte{},
		Resources: Resources{MemoryBytes: 64 << 20, PidsLimit: 20},
	}
	for _, tc := range []struct {
		name     string
		user     execUser
		wantCaps int
	}{
		{name: "root keeps Docker's capabilities", user: execUser{Home: "/root"}, wantCaps: len(defaultCapabilities)},
		{name: "non-root has none effective", user: execUser{UID: 1000, Home: "/"}, wantCaps: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := rt.ociSpec(spec, "/state/c1", tc.user)
			p := s.Process
			if len(p.Capabilities.Effective) != tc.wantCaps || len(p.Capabilities.Permitted) != tc.wantCaps ||
				len(p.Capabilities.Bounding) != len(defaultCapabilities) || len(p.Capabilities.Inheritable) != 0 {
				t.Errorf("capabilities = %+v", p.Capabilities)
			}
			if !p.NoNewPrivileges || p.Terminal {
				t.Errorf("noNewPrivileges %v terminal %v; want true, false", p.NoNewPrivileges, p.Terminal)
			}
			if p.Cwd != "/" || !slices.Equal(p.Env, []string{"PATH=/bin", "HOME=" + tc.user.Home}) {
				t.Errorf("cwd %q env %q", p.Cwd, p.Env)
			}
			if s.Linux.CgroupsPath != "/shoal/c1" || s.Annotations["k"] != "v" || s.Hostname != "h" {
				t.Errorf("cgroupsPath %q annotations %v hostname %q", s.Linux.CgroupsPath, s.Annotations, s.Hostname)
			}
			var ns []string
			for _, n := range s.Linux.Namespaces {
				ns = append(ns, string(n.Type)+"="+n.Path)
			}
			if want := []string{"pid=", "ipc=", "uts=", "mount=", "network=/run/netns/x"}; !slices.Equal(ns, want) {
				t.Errorf("namespaces = %q, want %q", ns, want)
			}
			var dsts []string
			for _, m := range s.Mounts {
				dsts = append(dsts, m.Destination)
			}
			for _, want := range []string{"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/etc/hosts"} {
				if !slices.Contains(dsts, want) {
					t.Errorf("mounts %q lack %s", dsts, want)
				}
			}
			if slices.Contains(dsts, "/etc/resolv.conf") {
				t.Errorf("mounts %q: resolv.conf mounted though ResolvConf is nil", dsts)
			}
			// The translation itself is TestLinuxResources'.
			if got, want := describeResources(s.Linux.Resources), "{ memory limit 67108864 swap 67108864 pids 20 }"; got != want {
				t.Errorf("resources = %s, want %s", got, want)
			}
			if !slices.Contains(s.Linux.MaskedPaths, "/proc/kcore") || !slices.Contains(s.Linux.ReadonlyPaths, "/proc/sys") {
				t.Errorf("masked %q readonly %q", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
			}
		})
	}
}

func TestCheckID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"abc", true}, {"a_b-c.d+e", true}, {"0123456789abcdef", true},
		{"", false}, {".", false}, {"..", false}, {"../x", false}, {"a/b", false}, {"a b", false},
	} {
		if err := checkID(tc.id); (err == nil) != tc.ok {
			t.Errorf("checkID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
	}
}
