package e2e

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/harness"
)

// TestOverlayAcrossHosts runs a service on an overlay network across three
// hosts and checks, from a client container on the same network, that its
// tasks answer by IP (across hosts), that tasks.SERVICE resolves to them,
// and that the service name reaches them through the VIP; a container on
// another network reaches none of them.
func TestOverlayAcrossHosts(t *testing.T) {
	c := harness.New(t, 3)
	images := harness.Images(t)
	reg := c.StartRegistry()
	app := c.PushImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest")
	bb := c.PushImage(filepath.Join(images, "busybox.oci.tar"), "shoal/busybox:latest")
	for _, h := range c.Hosts {
		h.Start("--insecure-registry", reg)
	}
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]
	h1.MustShoal("cluster", "init")
	tok := strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "worker"))
	addr := h1.Addr.String() + ":4242"
	h2.MustShoal("cluster", "join", "--token", tok, addr)
	h3.MustShoal("cluster", "join", "--token", tok, addr)
	waitReady(c, h1, 3)
	hostOf := map[string]*harness.Host{nodeID(t, h1): h1, nodeID(t, h2): h2, nodeID(t, h3): h3}

	h1.MustShoal("network", "create", "appnet")
	h1.MustShoal("network", "create", "othernet")
	h1.MustShoal("service", "create", "--name", "web", "--replicas", "2", "--network", "appnet",
		"--constraint", "node.id!="+nodeID(t, h1), app)
	h1.MustShoal("service", "create", "--name", "client", "--network", "appnet",
		"--constraint", "node.id=="+nodeID(t, h1), bb, "sleep", "3600")
	h1.MustShoal("service", "create", "--name", "stranger", "--network", "othernet",
		"--constraint", "node.id=="+nodeID(t, h1), bb, "sleep", "3600")
	web := waitRunning(c, h1, "web", 2)
	client := waitRunning(c, h1, "client", 1)[0]
	stranger := waitRunning(c, h1, "stranger", 1)[0]

	// exec runs a command in a task's container, on its host.
	exec := func(tk task, args ...string) (string, error) {
		h := hostOf[tk.NodeID]
		return h.Runc(append([]string{"exec", tk.ID}, args...)...)
	}
	overlayIP := func(tk task) string {
		for _, a := range tk.Status.Addresses {
			if strings.HasPrefix(a, "10.10.") {
				return strings.Split(a, "/")[0]
			}
		}
		t.Fatalf("task %s has no overlay address: %v", tk.ID, tk.Status.Addresses)
		return ""
	}

	// By IP, across hosts.
	var webIPs []string
	for _, w := range web {
		ip := overlayIP(w)
		webIPs = append(webIPs, ip)
		c.Eventually(waitConverge, "client reaches web task "+w.ID[:8]+" by IP", func() error {
			out, err := exec(client, "timeout", "3", "wget", "-qO-", "http://"+ip+":8080/")
			if err != nil {
				return err
			}
			if !strings.Contains(out, w.ID) {
				return fmt.Errorf("answer %q does not name task %s", out, w.ID)
			}
			return nil
		})
	}
	sort.Strings(webIPs)

	// tasks.web resolves to both tasks, through the embedded DNS server.
	c.Eventually(waitConverge, "tasks.web resolves to the tasks", func() error {
		out, err := exec(client, "nslookup", "tasks.web")
		if err != nil {
			return err
		}
		for _, ip := range webIPs {
			if !strings.Contains(out, ip) {
				return fmt.Errorf("nslookup tasks.web: %q lacks %s", out, ip)
			}
		}
		return nil
	})

	// The service name goes through the VIP to both tasks.
	seen := map[string]bool{}
	c.Eventually(waitConverge, "web by name reaches both tasks", func() error {
		out, err := exec(client, "timeout", "3", "wget", "-qO-", "http://web:8080/")
		if err != nil {
			return err
		}
		for _, w := range web {
			if strings.Contains(out, w.ID) {
				seen[w.ID] = true
			}
		}
		if len(seen) != 2 {
			return fmt.Errorf("reached %d of 2 tasks so far", len(seen))
		}
		return nil
	})

	// Drain a host running a web task while the client requests web by
	// name in a steady loop: the replacement starts first, the drained
	// task leaves the VIP before it stops, and no request fails.
	var drained task
	for _, w := range web {
		if hostOf[w.NodeID] == h2 {
			drained = w
		}
	}
	if drained.ID == "" {
		t.Fatalf("no web task on h2: %v", web)
	}
	loop := hostOf[client.NodeID].RuncCmd("exec", client.ID, "sh", "-c",
		`i=0; f=0; while [ $i -lt 200 ]; do timeout 3 wget -qO- http://web:8080/ >/dev/null 2>&1 || f=$((f+1)); i=$((i+1)); sleep 0.1; done; echo "failures=$f"`)
	var loopOut strings.Builder
	loop.Stdout = &loopOut
	if err := loop.Start(); err != nil {
		t.Fatalf("start the client loop: %v", err)
	}
	loopDone := make(chan error, 1)
	go func() { loopDone <- loop.Wait() }()
	time.Sleep(time.Second)
	h1.MustShoal("node", "update", "--availability", "drain", nodeID(t, h2))
	c.Eventually(waitConverge, "web drained off h2", func() error {
		ts, err := runningTasks(h1, "web")
		if err != nil {
			return err
		}
		for _, tk := range ts {
			if tk.ID == drained.ID || hostOf[tk.NodeID] == h2 {
				return fmt.Errorf("web still runs on h2")
			}
		}
		if len(ts) != 2 {
			return fmt.Errorf("%d web tasks running, want 2", len(ts))
		}
		all, _ := tasks(h1, "web")
		for _, tk := range all {
			if tk.ID == drained.ID && tk.Status.State != "TASK_STATE_SHUTDOWN" {
				return fmt.Errorf("the drained task is %s", tk.Status.State)
			}
		}
		return nil
	})
	select {
	case <-loopDone:
		t.Fatalf("the client loop ended before the drain did, so it does not cover it: %q", loopOut.String())
	default:
	}
	select {
	case err := <-loopDone:
		if err != nil || !strings.Contains(loopOut.String(), "failures=0") {
			t.Errorf("client loop during the drain: %q, %v; want failures=0", loopOut.String(), err)
		}
	case <-time.After(waitConverge):
		t.Fatalf("client loop did not finish")
	}
	h1.MustShoal("node", "update", "--availability", "active", nodeID(t, h2))

	// An internal network has no way out: the registry on the underlay
	// answers a container on appnet, not one on an internal network.
	h1.MustShoal("network", "create", "--internal", "closed")
	h1.MustShoal("service", "create", "--name", "inside", "--network", "closed",
		"--constraint", "node.id=="+nodeID(t, h1), bb, "sleep", "3600")
	inside := waitRunning(c, h1, "inside", 1)[0]
	registryURL := "http://" + reg + "/v2/"
	if _, err := exec(client, "timeout", "3", "wget", "-qO-", registryURL); err != nil {
		t.Errorf("a container on appnet cannot reach the registry at %s: %v", reg, err)
	}
	if out, err := exec(inside, "timeout", "3", "wget", "-qO-", registryURL); err == nil {
		t.Errorf("a container on an internal network reached the registry: %q", out)
	}

	// Another network is isolated: no route, no name.
	if out, err := exec(stranger, "timeout", "2", "wget", "-qO-", "http://"+webIPs[0]+":8080/"); err == nil {
		t.Errorf("a container on othernet reached web at %s: %q", webIPs[0], out)
	}
	if out, err := exec(stranger, "nslookup", "web"); err == nil && strings.Contains(out, "10.10.0.") {
		t.Errorf("a container on othernet resolves web: %q", out)
	}
}
