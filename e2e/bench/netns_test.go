package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// dialTestTimeout bounds a dial and an echo in the namespace test, so a
// broken dialer fails instead of hanging.
const dialTestTimeout = 5 * time.Second

// testNetNS creates a network namespace named uniquely for this run with
// loopback up, and removes it when the test ends.
func testNetNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2) on PATH")
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := "shb" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v\n%s", name, err, out)
	}
	return "/run/netns/" + name
}

// listenIn opens a TCP listener on loopback inside the namespace at path,
// the same way the dialer creates its sockets.
func listenIn(t *testing.T, path string) net.Listener {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("enter %s: %v", path, err)
	}
	ln, lerr := net.Listen("tcp", "127.0.0.1:0")
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked so it is discarded with this goroutine.
		t.Fatalf("leave %s: %v", path, err)
	}
	runtime.UnlockOSThread()
	if lerr != nil {
		t.Fatalf("listen in %s: %v", path, lerr)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// threadNetNS identifies the calling thread's network namespace.
func threadNetNS(t *testing.T) string {
	t.Helper()
	link, err := os.Readlink(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		t.Fatal(err)
	}
	return link
}

func TestNetNSDialerReachesNamespace(t *testing.T) {
	path := testNetNS(t)
	ln := listenIn(t, path)
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		line, _ := bufio.NewReader(conn).ReadString('\n')
		fmt.Fprintf(conn, "echo %s", line)
	}()
	t.Cleanup(func() { ln.Close(); <-done })

	d, err := NewNetNSDialer(path)
	if err != nil {
		t.Fatalf("NewNetNSDialer: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTestTimeout)
	defer cancel()

	runtime.LockOSThread()
	before := threadNetNS(t)
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	after := threadNetNS(t)
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatalf("dial %s in %s: %v", ln.Addr(), path, err)
	}
	defer conn.Close()
	if before != after {
		t.Errorf("calling thread left in namespace %s, was %s", after, before)
	}
	_ = conn.SetDeadline(time.Now().Add(dialTestTimeout))
	if _, err := fmt.Fprintf(conn, "hello\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
	got, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if got != "echo hello\n" {
		t.Errorf("reply = %q, want the namespace's echo server", got)
	}
}

func TestNetNSDialerErrors(t *testing.T) {
	path := testNetNS(t)
	regular := filepath.Join(t.TempDir(), "not-a-netns")
	if err := os.WriteFile(regular, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Run("regular file is not a namespace", func(t *testing.T) {
		if _, err := NewNetNSDialer(regular); err == nil {
			t.Error("want an error")
		}
	})
	t.Run("missing path", func(t *testing.T) {
		if _, err := NewNetNSDialer(regular + "-missing"); err == nil {
			t.Error("want an error")
		}
	})
	d, err := NewNetNSDialer(path)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, addr string
		wantErr    error // nil: any error
	}{
		{"host name refused", "localhost:80", ErrNotIPLiteral},
		{"no port", "127.0.0.1", nil},
		// Port 1 on the fresh namespace's loopback: nothing can listen there.
		{"nothing listening", "127.0.0.1:1", syscall.ECONNREFUSED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), dialTestTimeout)
			defer cancel()
			conn, err := d.DialContext(ctx, "tcp", tt.addr)
			if err == nil {
				conn.Close()
				t.Fatalf("dial %s: want an error", tt.addr)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("dial %s: err = %v, want %v", tt.addr, err, tt.wantErr)
			}
		})
	}
}
