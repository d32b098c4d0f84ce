package netnsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates, enters and bind-mounts network namespaces")
	}
}

// nsFile returns a path for a namespace file in a fresh temp dir, named
// with a prefix unique to this run and test, so that concurrent runs and
// the leftovers of a crashed one never collide. As root it unmounts and
// removes whatever is there at cleanup, even when the test fails, and then
// checks that no mount of it is left.
func nsFile(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("nsutil%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
	path := filepath.Join(t.TempDir(), name)
	if os.Geteuid() == 0 {
		// Registered after TempDir, so it runs before the temp dir's
		// removal, which would fail on a mounted file.
		t.Cleanup(func() {
			if err := RemoveNetNSFile(path); err != nil {
				t.Errorf("clean up: %v", err)
			}
			mounts, err := os.ReadFile("/proc/self/mountinfo")
			if err != nil {
				t.Errorf("read mounts: %v", err)
			} else if strings.Contains(string(mounts), path) {
				t.Errorf("%s is still mounted after cleanup", path)
			}
		})
	}
	return path
}

// nsInode returns the inode of the namespace file (or /proc ns link) at
// path: two paths name the same namespace exactly when their inodes are
// equal.
func nsInode(path string) (uint64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Sys().(*syscall.Stat_t).Ino, nil
}

// inode is nsInode for the test's goroutine.
func inode(t *testing.T, path string) uint64 {
	t.Helper()
	ino, err := nsInode(path)
	if err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return ino
}

// threadsElsewhere lists the threads of this process that are not in the
// network namespace with inode host: after OnLockedThread returns, none
// may be, since no thread is left behind in a namespace fn chose.
func threadsElsewhere(t *testing.T, host uint64) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatalf("list threads: %v", err)
	}
	var elsewhere []string
	for _, task := range tasks {
		fi, err := os.Stat(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread exited meanwhile
		}
		if err != nil {
			t.Fatalf("stat netns of thread %s: %v", task.Name(), err)
		}
		if fi.Sys().(*syscall.Stat_t).Ino != host {
			elsewhere = append(elsewhere, task.Name())
		}
	}
	return elsewhere
}

// TestNetNSFile creates, recognises and removes namespace files over each
// thing that may already stand at the path.
func TestNetNSFile(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, path string) string // what is at path; returns the path to use
		// wantIs is IsNetNSFile before CreateNetNS; wantCreateErr the
		// error CreateNetNS wraps, if it fails.
		wantIs        bool
		wantCreateErr error
	}{
		{
			name:  "missing file",
			setup: func(t *testing.T, path string) string { return path },
		},
		{
			name: "stale placeholder",
			setup: func(t *testing.T, path string) string {
				if err := os.WriteFile(path, nil, 0o444); err != nil {
					t.Fatal(err)
				}
				return path
			},
		},
		{
			name: "namespace already pinned",
			setup: func(t *testing.T, path string) string {
				requireRoot(t)
				if err := CreateNetNS(path); err != nil {
					t.Fatal(err)
				}
				return path
			},
			wantIs: true,
		},
		{
			name: "directory missing",
			setup: func(t *testing.T, path string) string {
				return filepath.Join(path, "no-such-dir", "ns")
			},
			wantCreateErr: fs.ErrNotExist,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.setup(t, nsFile(t))
			is, err := IsNetNSFile(path)
			if err != nil || is != tt.wantIs {
				t.Fatalf("IsNetNSFile before create = %v, %v; want %v, nil", is, err, tt.wantIs)
			}
			requireRoot(t)

			host := inode(t, ProcessNetNS)
			var before uint64
			if tt.wantIs {
				before = inode(t, path)
			}
			err = CreateNetNS(path)
			if tt.wantCreateErr != nil {
				if !errors.Is(err, tt.wantCreateErr) {
					t.Fatalf("CreateNetNS = %v; want %v", err, tt.wantCreateErr)
				}
				if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("failed CreateNetNS left %s behind: %v", path, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("CreateNetNS: %v", err)
			}
			if is, err := IsNetNSFile(path); err != nil || !is {
				t.Fatalf("IsNetNSFile after create = %v, %v; want true, nil", is, err)
			}
			got := inode(t, path)
			switch {
			case got == host:
				t.Fatalf("%s pins the process's own namespace", path)
			case tt.wantIs && got != before:
				t.Fatalf("CreateNetNS replaced the namespace already at %s", path)
			}
			if left := threadsElsewhere(t, host); len(left) > 0 {
				t.Fatalf("threads %v left in another namespace", left)
			}

			for range 2 { // the second removal finds nothing and is fine
				if err := RemoveNetNSFile(path); err != nil {
					t.Fatalf("RemoveNetNSFile: %v", err)
				}
				if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("%s still there after RemoveNetNSFile: %v", path, err)
				}
			}
		})
	}
}

// TestInNetNS runs fn in a namespace and checks where it ran, what comes
// back, and that every thread is back in the process's namespace after.
func TestInNetNS(t *testing.T) {
	requireRoot(t)
	errFn := errors.New("fn failed")
	tests := []struct {
		name string
		// setup prepares what is at path, a fresh nsFile.
		setup  func(t *testing.T, path string)
		fn     func() error // runs after the check that fn is in the namespace
		wantIn bool         // fn runs, in the namespace at path
		// wantErr is the error InNetNS wraps; with "open netns" or
		// "enter netns", wantMsg is what its message starts with.
		wantErr error
		wantMsg string
	}{
		{
			name:   "namespace file",
			setup:  mustCreate,
			fn:     func() error { return nil },
			wantIn: true,
		},
		{
			name:    "fn fails",
			setup:   mustCreate,
			fn:      func() error { return errFn },
			wantIn:  true,
			wantErr: errFn,
		},
		{
			name:   "fn moves the thread on",
			setup:  mustCreate,
			fn:     func() error { return unix.Unshare(unix.CLONE_NEWNET) },
			wantIn: true,
		},
		{
			name:    "missing file",
			setup:   func(t *testing.T, path string) {},
			wantErr: fs.ErrNotExist,
			wantMsg: "open netns ",
		},
		{
			name: "not a namespace",
			setup: func(t *testing.T, path string) {
				if err := os.WriteFile(path, nil, 0o444); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: unix.EINVAL,
			wantMsg: "enter netns ",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := nsFile(t)
			tt.setup(t, path)
			host := inode(t, ProcessNetNS)
			ran, in := false, false
			var inErr error
			err := InNetNS(path, func() error {
				ran = true
				// The calling thread's entry names the namespace entered,
				// which is why ProcessNetNS is opened only from threads
				// that have not entered one.
				self, err1 := nsInode(ProcessNetNS)
				want, err2 := nsInode(path)
				if inErr = errors.Join(err1, err2); inErr == nil {
					in = self == want
				}
				return tt.fn()
			})
			if inErr != nil {
				t.Fatalf("inside InNetNS: %v", inErr)
			}
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("InNetNS = %v; want %v", err, tt.wantErr)
			}
			if err != nil && !strings.HasPrefix(err.Error(), tt.wantMsg) {
				t.Fatalf("InNetNS = %q; want it to start with %q", err, tt.wantMsg)
			}
			if ran != tt.wantIn || in != tt.wantIn {
				t.Fatalf("fn ran: %v, in %s: %v; want %v", ran, path, in, tt.wantIn)
			}
			if got := inode(t, ProcessNetNS); got != host {
				t.Fatalf("after InNetNS, %s names namespace %d; want the process's %d", ProcessNetNS, got, host)
			}
			if left := threadsElsewhere(t, host); len(left) > 0 {
				t.Fatalf("threads %v left in another namespace", left)
			}
		})
	}
}

func mustCreate(t *testing.T, path string) {
	t.Helper()
	if err := CreateNetNS(path); err != nil {
		t.Fatal(err)
	}
}

// TestSetSysctls writes sysctls inside a fresh namespace: only values that
// differ are written, and the process's own namespace is left alone.
func TestSetSysctls(t *testing.T) {
	requireRoot(t)
	const ipForward = "/proc/sys/net/ipv4/ip_forward"
	tests := []struct {
		name string
		// files are regular files made in a temp dir first (name: content),
		// standing in for sysctls whose writes can be seen.
		files   map[string]string
		set     []Sysctl // relative paths are in the temp dir
		want    map[string]string
		wantErr error
	}{
		{
			name:  "value differs",
			files: map[string]string{"a": "0\n"},
			set:   []Sysctl{{Path: "a", Value: "1"}},
			want:  map[string]string{"a": "1\n"},
		},
		{
			name:  "value already set is not written",
			files: map[string]string{"a": "1"},
			set:   []Sysctl{{Path: "a", Value: "1"}},
			want:  map[string]string{"a": "1"}, // a write would add "\n"
		},
		{
			name:  "several",
			files: map[string]string{"a": "1\n", "b": "1\n"},
			set:   []Sysctl{{Path: "a", Value: "1"}, {Path: "b", Value: "0"}},
			want:  map[string]string{"a": "1\n", "b": "0\n"},
		},
		{
			name:    "missing file",
			set:     []Sysctl{{Path: "a", Value: "1"}},
			wantErr: fs.ErrNotExist,
		},
		{
			name: "ip_forward in the namespace",
			set:  []Sysctl{{Path: ipForward, Value: "1"}},
			want: map[string]string{ipForward: "1\n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			abs := func(p string) string {
				if filepath.IsAbs(p) {
					return p
				}
				return filepath.Join(dir, p)
			}
			for name, content := range tt.files {
				if err := os.WriteFile(abs(name), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var set []Sysctl
			for _, s := range tt.set {
				set = append(set, Sysctl{Path: abs(s.Path), Value: s.Value})
			}
			ns := nsFile(t)
			mustCreate(t, ns)
			hostBefore, err := os.ReadFile(ipForward)
			if err != nil {
				t.Fatal(err)
			}

			if err := SetSysctls(ns, set...); !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("SetSysctls = %v; want %v", err, tt.wantErr)
			}

			got := map[string]string{}
			err = InNetNS(ns, func() error {
				for p := range tt.want {
					b, err := os.ReadFile(abs(p))
					if err != nil {
						return err
					}
					got[p] = string(b)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for p, want := range tt.want {
				if got[p] != want {
					t.Errorf("%s = %q; want %q", p, got[p], want)
				}
			}
			if hostAfter, err := os.ReadFile(ipForward); err != nil || string(hostAfter) != string(hostBefore) {
				t.Errorf("host %s = %q, %v; want it unchanged at %q", ipForward, hostAfter, err, hostBefore)
			}
		})
	}
}
