package vip

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
)

// newNS makes a named netns for the test, with loopback up, 10.99.0.2 and
// 10.99.0.3 on lo as two backends and a route for the VIPs' subnet; it is
// deleted when the test ends.
func newNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and nftables rules")
	}
	name := fmt.Sprintf("shvip%d", time.Now().UnixNano()%1e9)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run("-n", name, "link", "set", "lo", "up")
	run("-n", name, "addr", "add", "10.99.0.2/32", "dev", "lo")
	run("-n", name, "addr", "add", "10.99.0.3/32", "dev", "lo")
	run("-n", name, "route", "add", "10.99.1.0/24", "dev", "lo")
	return "/run/netns/" + name
}

// inNS runs fn on a thread that entered the namespace; the thread is
// discarded afterwards (never unlocked), so no other goroutine runs in it.
func inNS[T any](t *testing.T, path string, fn func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(path)
		if err == nil {
			defer ns.Close()
			err = netns.Set(ns)
		}
		if err != nil {
			var zero T
			ch <- result{zero, err}
			return
		}
		v, err := fn()
		ch <- result{v, err}
	}()
	r := <-ch
	return r.v, r.err
}

// serve answers every connection to addr with name and a newline, then
// echoes lines back.
func serve(t *testing.T, path, addr, name string) {
	t.Helper()
	l, err := inNS(t, path, func() (net.Listener, error) { return net.Listen("tcp", addr) })
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintln(c, name)
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintln(c, sc.Text())
				}
			}()
		}
	}()
}

func dial(t *testing.T, path, addr string) (net.Conn, string, error) {
	t.Helper()
	c, err := inNS(t, path, func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 2*time.Second) })
	if err != nil {
		return nil, "", err
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, "", err
	}
	return c, strings.TrimSpace(line), nil
}

func TestApplyBalancesAndSwapsAtomically(t *testing.T) {
	path := newNS(t)
	serve(t, path, "10.99.0.2:8080", "b2")
	serve(t, path, "10.99.0.3:8080", "b3")
	ctx := context.Background()
	vip := netip.MustParseAddr("10.99.1.10")
	b2, b3 := netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("10.99.0.3")

	if err := Apply(ctx, path, []Service{{VIP: vip, Backends: []netip.Addr{b2, b3}}}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	seen := map[string]int{}
	var kept net.Conn // a connection to b2, kept across the swap below
	for range 60 {
		c, who, err := dial(t, path, "10.99.1.10:8080")
		if err != nil {
			t.Fatalf("connect to the VIP: %v", err)
		}
		seen[who]++
		if who == "b2" && kept == nil {
			kept = c
		} else {
			c.Close()
		}
	}
	if seen["b2"] == 0 || seen["b3"] == 0 {
		t.Fatalf("60 connections reached %v, want both backends", seen)
	}
	defer kept.Close()

	// b2 leaves: new connections go to b3 only; the open one to b2 lives on.
	if err := Apply(ctx, path, []Service{{VIP: vip, Backends: []netip.Addr{b3}}}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	for range 20 {
		c, who, err := dial(t, path, "10.99.1.10:8080")
		if err != nil || who != "b3" {
			t.Fatalf("after b2 left: reached %q (%v), want b3", who, err)
		}
		c.Close()
	}
	fmt.Fprintln(kept, "still there?")
	if line, err := bufio.NewReader(kept).ReadString('\n'); err != nil || strings.TrimSpace(line) != "still there?" {
		t.Errorf("the connection to b2 opened before the swap: %q, %v; want it kept", line, err)
	}

	// No backends: refused at once (a reset), not left to time out.
	if err := Apply(ctx, path, []Service{{VIP: vip}}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	start := time.Now()
	if _, _, err := dial(t, path, "10.99.1.10:8080"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("VIP without backends: %v, want connection refused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %v", d)
	}

	// Remove leaves no table behind.
	if err := Remove(ctx, path); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == TableName {
			t.Errorf("table %s left after Remove", TableName)
		}
	}
	if err := Remove(ctx, path); err != nil {
		t.Errorf("second Remove: %v", err)
	}
}

func TestApplyRefusesIPv6(t *testing.T) {
	err := Apply(context.Background(), "", []Service{{VIP: netip.MustParseAddr("fd00::1")}})
	if err == nil || !strings.Contains(err.Error(), "IPv4") {
		t.Errorf("IPv6 VIP: %v, want a refusal naming IPv4", err)
	}
}
