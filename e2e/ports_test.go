package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/e2e/harness"
)

// portsTable is the nftables table of the published ports on a host's
// default bridge (shoal0).
const portsTable = "shoal-ports-shoal0"

// TestHostModePorts publishes a port in host mode on two hosts: each task
// answers on its own host's address from the other host and on its host's
// 127.0.0.1, its mapping comes back when a restarted daemon adopts the
// task, and it goes with the service.
func TestHostModePorts(t *testing.T) {
	c := harness.New(t, 2)
	images := harness.Images(t)
	reg := c.StartRegistry()
	app := c.PushImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest")
	h1, h2 := c.Hosts[0], c.Hosts[1]
	for _, h := range c.Hosts {
		h.Start("--insecure-registry", reg)
	}
	h1.MustShoal("cluster", "init")
	tok := strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "worker"))
	h2.MustShoal("cluster", "join", "--token", tok, h1.Addr.String()+":4242")
	c.Eventually(waitConverge, "both nodes ready", func() error {
		out, err := h1.Shoal("node", "ls")
		if err != nil {
			return err
		}
		if n := strings.Count(out, "Ready"); n != 2 {
			return fmt.Errorf("%d nodes ready:\n%s", n, out)
		}
		return nil
	})
	hostOf := map[string]*harness.Host{nodeID(t, h1): h1, nodeID(t, h2): h2}
	other := map[*harness.Host]*harness.Host{h1: h2, h2: h1}

	// The app listens on 80 and is published on 8080, so an answer on 8080
	// can only come through the mapping.
	h1.MustShoal("service", "create", "--name", "web", "--mode", "global", "--env", "PORT=80", "--publish", "8080:80", app)
	if ls := h1.MustShoal("service", "ls"); !strings.Contains(ls, "host:8080->80/tcp") {
		t.Errorf("service ls does not show the published port:\n%s", ls)
	}
	byHost := waitOnePerHost(c, h1, "web", hostOf)
	for h, tk := range byHost {
		checkPublished(t, other[h], h.Addr.String(), tk)
		checkPublished(t, h, "127.0.0.1", tk)
	}

	// The table outlives a killed daemon (the containers keep serving); a
	// restarted daemon publishes its adopted task's ports again, even when
	// the table was lost meanwhile.
	h2.Kill()
	if _, err := h2.Exec("nft", "delete", "table", "ip", portsTable); err != nil {
		t.Fatalf("delete h2's port table while its daemon is down: %v", err)
	}
	if _, err := h1.HTTPGet(fmt.Sprintf("http://%s:8080/", h2.Addr)); err == nil {
		t.Fatalf("h2's port still answers without its table: the test would prove nothing")
	}
	h2.Start("--insecure-registry", reg)
	c.Eventually(waitConverge, "h2's port published again after the restart", func() error {
		body, err := h1.HTTPGet(fmt.Sprintf("http://%s:8080/", h2.Addr))
		if err != nil {
			return err
		}
		if !strings.Contains(body, "task="+byHost[h2].ID) {
			return fmt.Errorf("answered %q, want the adopted task %s", body, byHost[h2].ID)
		}
		return nil
	})

	// A port a process of the host listens on is refused, not shadowed:
	// here the manager's own cluster port.
	_, err := h1.Shoal("service", "create", "--name", "hijack", "--constraint", "node.id=="+nodeID(t, h1),
		"--env", "PORT=80", "--publish", "4242:80", app)
	if err == nil || !strings.Contains(err.Error(), "host port in use: 4242/tcp") {
		t.Errorf("publishing the manager's port 4242: %v, want the task to fail saying the host port is in use", err)
	}
	// A new connection from the other host still reaches the manager.
	if out, err := h2.Exec(filepath.Join(c.Bin, "shoal"), "--host", "tcp://"+h1.Addr.String()+":4242",
		"--tls-dir", filepath.Join(h1.DataDir, "certificates"), "node", "ls"); err != nil || strings.Count(out, "Ready") != 2 {
		t.Errorf("cluster API from h2 after the refused publish: %v\n%s", err, out)
	}
	h1.MustShoal("service", "rm", "hijack")

	// Removing the service withdraws the mappings: nothing answers, and no
	// table is left.
	h1.MustShoal("service", "rm", "web")
	for h, o := range other {
		c.Eventually(waitConverge, h.Name+"'s port withdrawn", func() error {
			if body, err := o.HTTPGet(fmt.Sprintf("http://%s:8080/", h.Addr)); err == nil {
				return fmt.Errorf("%s:8080 still answers: %q", h.Addr, body)
			}
			if out, err := h.Exec("nft", "list", "table", "ip", portsTable); err == nil {
				return fmt.Errorf("port table still there:\n%s", out)
			}
			return nil
		})
	}
}

// waitOnePerHost waits until the global service runs one task on each
// host of hostOf (node id to host) and returns them by host.
func waitOnePerHost(c *harness.Cluster, h *harness.Host, service string, hostOf map[string]*harness.Host) map[*harness.Host]task {
	c.T.Helper()
	var got map[*harness.Host]task
	c.Eventually(waitConverge, fmt.Sprintf("%s running on %d hosts", service, len(hostOf)), func() error {
		ts, err := runningTasks(h, service)
		if err != nil {
			return err
		}
		got = map[*harness.Host]task{}
		for _, tk := range ts {
			if host, ok := hostOf[tk.NodeID]; ok {
				got[host] = tk
			}
		}
		if len(ts) != len(hostOf) || len(got) != len(hostOf) {
			return fmt.Errorf("%d running on %d hosts: %s", len(ts), len(got), summarize(ts))
		}
		return nil
	})
	return got
}

// checkPublished asserts that from's namespace reaches tk through port
// 8080 of addr.
func checkPublished(t *testing.T, from *harness.Host, addr string, tk task) {
	t.Helper()
	url := fmt.Sprintf("http://%s:8080/", addr)
	body, err := from.HTTPGet(url)
	if err != nil {
		t.Errorf("%s from %s: %v", url, from.Name, err)
		return
	}
	if !strings.Contains(body, "task="+tk.ID) {
		t.Errorf("%s from %s answered %q, want task %s", url, from.Name, body, tk.ID)
	}
}
