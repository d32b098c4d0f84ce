package e2e

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/harness"
)

// probeSettle bounds how long reachability may take to settle after a
// fault verb (ARP after a restored link). A hang guard, not a speed check.
const probeSettle = 10 * time.Second

// pings reports whether from can ping to's underlay address once.
func pings(from, to *harness.Host) error {
	_, err := from.Exec("busybox", "ping", "-c", "1", "-W", "1", to.Addr.String())
	return err
}

// TestFaultVerbs checks that the harness's faults cut exactly the traffic
// they claim to, and that their inverses bring it back: hosts run no
// daemons, only the underlay is probed.
func TestFaultVerbs(t *testing.T) {
	c := harness.New(t, 3)
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]
	type pair struct{ a, b *harness.Host }
	all := []pair{{h1, h2}, {h1, h3}, {h2, h3}}

	steps := []struct {
		name    string
		do      func()
		blocked []pair // pairs that must not reach each other; others must
	}{
		{name: "baseline", do: func() {}},
		{name: "cut h1 link", do: h1.CutLink, blocked: []pair{{h1, h2}, {h1, h3}}},
		{name: "restore h1 link", do: h1.RestoreLink},
		{name: "partition h1 from h2 h3", do: func() { c.Partition([]*harness.Host{h1}, []*harness.Host{h2, h3}) }, blocked: []pair{{h1, h2}, {h1, h3}}},
		{name: "re-partition h3 from h1 h2", do: func() { c.Partition([]*harness.Host{h1, h2}, []*harness.Host{h3}) }, blocked: []pair{{h1, h3}, {h2, h3}}},
		{name: "heal", do: c.Heal},
		{name: "heal twice", do: c.Heal},
	}
	for _, st := range steps {
		st.do()
		for _, p := range all {
			isBlocked := false
			for _, b := range st.blocked {
				if b == p {
					isBlocked = true
				}
			}
			for _, dir := range [][2]*harness.Host{{p.a, p.b}, {p.b, p.a}} {
				from, to := dir[0], dir[1]
				if isBlocked {
					if err := pings(from, to); err == nil {
						t.Fatalf("%s: %s reaches %s, want it cut off", st.name, from.Name, to.Name)
					}
					continue
				}
				c.Eventually(probeSettle, st.name+": "+from.Name+" reaches "+to.Name, func() error { return pings(from, to) })
			}
		}
		if st.name == "cut h1 link" {
			// The host's own side is untouched: eth0 is still admin up
			// and only reports that its peer went away.
			out, err := h1.Exec("ip", "link", "show", "eth0")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "NO-CARRIER") || !strings.Contains(out, ",UP") {
				t.Fatalf("cut link: h1 eth0 is %q, want admin UP with NO-CARRIER", out)
			}
		}
	}

	// A partition must also cut TCP, the traffic the daemons use.
	c.Partition([]*harness.Host{h1}, []*harness.Host{h2, h3})
	nc := exec.Command("nsenter", "--net=/run/netns/"+h2.NetNS, "--", "busybox", "nc", "-l", "-p", "7000")
	if err := nc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = nc.Process.Kill()
		_ = nc.Wait()
	})
	// bash's /dev/tcp exits 0 exactly when the connect succeeded.
	connect := func(from *harness.Host) error {
		_, err := from.Exec("timeout", "3", "bash", "-c", "echo hi >/dev/tcp/"+h2.Addr.String()+"/7000")
		return err
	}
	c.Eventually(probeSettle, "h2 listening", func() error {
		_, err := h2.Exec("sh", "-c", "busybox netstat -ltn | grep -q ':7000 '")
		return err
	})
	// h1 first: the listener serves one connection and exits.
	if err := connect(h1); err == nil {
		t.Fatalf("partitioned: h1 connected to h2:7000")
	}
	if err := connect(h3); err != nil {
		t.Fatalf("partitioned: h3 cannot connect to h2:7000 in its own group: %v", err)
	}

	// Close leaves no namespace of the cluster behind.
	c.Close()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), c.Prefix) {
		t.Fatalf("namespaces left after Close:\n%s", out)
	}
}

// TestRegistry pushes the test image to the underlay registry and reads
// it back from a host, then checks Close stops the registry.
func TestRegistry(t *testing.T) {
	c := harness.New(t, 2)
	images := harness.Images(t)
	reg := c.StartRegistry()
	if again := c.StartRegistry(); again != reg {
		t.Fatalf("second StartRegistry = %q, want the running %q", again, reg)
	}
	for _, h := range c.Hosts {
		if strings.HasPrefix(reg, h.Addr.String()+":") {
			t.Fatalf("registry %s took %s's address", reg, h.Name)
		}
	}
	full := c.PushImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest")
	if want := reg + "/shoal/testapp:latest"; full != want {
		t.Fatalf("PushImage = %q, want %q", full, want)
	}

	tests := []struct {
		name string
		path string
		want string
	}{
		{"tags list the pushed tag", "/v2/shoal/testapp/tags/list", `"latest"`},
		{"catalog lists the repository", "/v2/_catalog", `"shoal/testapp"`},
		{"manifest is served", "/v2/shoal/testapp/manifests/latest", `"layers"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, h := range c.Hosts {
				// The Accept header asks for the schema 2 manifest that
				// was pushed, not the registry's schema 1 rewrite.
				out, err := h.Exec("curl", "-sS", "--fail", "--max-time", "5",
					"-H", "Accept: application/vnd.docker.distribution.manifest.v2+json", "http://"+reg+tt.path)
				if err != nil {
					t.Fatalf("%s: GET %s: %v", h.Name, tt.path, err)
				}
				if !strings.Contains(out, tt.want) {
					t.Fatalf("%s: GET %s = %s, want it to contain %s", h.Name, tt.path, out, tt.want)
				}
			}
		})
	}

	pid := c.RegistryPID()
	if pid <= 0 {
		t.Fatalf("registry PID = %d while running", pid)
	}
	c.Close()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("registry PID %d still exists after Close (kill 0: %v)", pid, err)
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), c.Prefix) {
		t.Fatalf("namespaces left after Close:\n%s", out)
	}
}

// TestDaemonRestartVerbs checks Restart and KillDaemon leave a daemon that
// answers and still knows its cluster.
func TestDaemonRestartVerbs(t *testing.T) {
	c := harness.New(t, 1)
	h := c.Hosts[0]
	h.Start()
	h.MustShoal("cluster", "init")
	before := h.MustShoal("info")
	if !strings.Contains(before, "Cluster ID:") {
		t.Fatalf("info before restart = %q, want the cluster it joined", before)
	}

	steps := []struct {
		name string
		do   func()
	}{
		{"restart", h.Restart},
		{"kill and start", func() { h.KillDaemon(); h.Start() }},
	}
	for _, st := range steps {
		st.do()
		if after := h.MustShoal("info"); after != before {
			t.Fatalf("%s: info changed:\nbefore:\n%s\nafter:\n%s", st.name, before, after)
		}
	}
}
