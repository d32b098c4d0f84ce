package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/harness"
)

// TestManagersFailover runs 3 managers and 2 workers: managers join through
// the leader with the manager token, any manager serves every call, and
// killing the leader leaves a cluster that takes writes again quickly and
// lost nothing; the old leader rejoins.
func TestManagersFailover(t *testing.T) {
	c := harness.New(t, 5)
	images := harness.Images(t)
	reg := c.StartRegistry()
	ref := c.PushImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest")
	for _, h := range c.Hosts {
		h.Start("--insecure-registry", reg)
	}
	h1 := c.Hosts[0]
	h1.MustShoal("cluster", "init")
	leaderAddr := h1.Addr.String() + ":4242"
	mtok := strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "manager"))
	wtok := strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "worker"))
	for _, h := range c.Hosts[1:3] {
		if out := h.MustShoal("cluster", "join", "--token", mtok, leaderAddr); !strings.Contains(out, "as a manager") {
			t.Fatalf("%s join said %q", h.Name, out)
		}
	}
	for _, h := range c.Hosts[3:] {
		h.MustShoal("cluster", "join", "--token", wtok, leaderAddr)
	}
	c.Eventually(waitConverge, "5 nodes ready, 3 of them managers", func() error {
		out, err := h1.Shoal("node", "ls")
		if err != nil {
			return err
		}
		if n := strings.Count(out, "Ready"); n != 5 {
			return fmt.Errorf("%d ready:\n%s", n, out)
		}
		if strings.Count(out, "Leader") != 1 || strings.Count(out, "Reachable") != 2 {
			return fmt.Errorf("want 1 leader and 2 reachable managers:\n%s", out)
		}
		return nil
	})

	// A follower's socket serves writes (forwarded to the leader).
	h3 := c.Hosts[2]
	h3.MustShoal("service", "create", "--name", "web", "--replicas", "5", ref)
	waitRunning(c, h3, "web", 5)
	for _, h := range c.Hosts[:3] {
		if out := h.MustShoal("service", "ls"); !strings.Contains(out, "web") {
			t.Errorf("%s does not list the service:\n%s", h.Name, out)
		}
	}
	before := ids(waitRunning(c, h1, "web", 5))

	// A service created through a worker's socket (with the operator
	// token) and constrained to workers runs on the workers only.
	h4, h5 := c.Hosts[3], c.Hosts[4]
	opTok := strings.TrimSpace(h1.MustShoal("cluster", "operator-token"))
	h4.MustShoal("--token", opTok, "service", "create", "--name", "onworkers", "--replicas", "4", "--constraint", "node.role==worker", ref)
	workers := map[string]bool{nodeID(t, h4): true, nodeID(t, h5): true}
	for _, x := range waitRunning(c, h1, "onworkers", 4) {
		if !workers[x.NodeID] {
			t.Errorf("task %s of a workers-only service runs on node %s", x.ID, x.NodeID)
		}
	}
	h1.MustShoal("service", "rm", "onworkers")

	// kill -9 the leader: another manager takes writes again.
	h1.Kill()
	h2 := c.Hosts[1]
	start := time.Now()
	c.Eventually(waitConverge, "a write accepted after the leader died", func() error {
		_, err := h2.Shoal("service", "create", "-d", "--name", "after", ref)
		return err
	})
	t.Logf("leader killed: a new leader accepted a write after %s", time.Since(start).Round(time.Millisecond))
	if out := h2.MustShoal("service", "ls"); !strings.Contains(out, "web") || !strings.Contains(out, "after") {
		t.Errorf("services after failover:\n%s", out)
	}
	// The dead host is seen down; every other host, the workers that were
	// connected to it included, has a session with the new leader.
	c.Eventually(waitConverge, "dead leader down, the 4 other hosts ready", func() error {
		out, err := h2.Shoal("node", "ls")
		if err != nil {
			return err
		}
		if strings.Count(out, "Ready") != 4 || strings.Count(out, "Down") != 1 {
			return fmt.Errorf("want 4 ready and 1 down:\n%s", out)
		}
		return nil
	})

	// The old leader restarts and rejoins as a follower; nothing was lost.
	h1.Start("--insecure-registry", reg)
	c.Eventually(waitConverge, "old leader back and in sync", func() error {
		out, err := h1.Shoal("service", "ls")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "web") || !strings.Contains(out, "after") {
			return fmt.Errorf("h1 lists:\n%s", out)
		}
		return nil
	})
	after := ids(waitRunning(c, h1, "web", 5))

	// Two of three managers gone: writes fail with a clear error, reads
	// still answer and say they may be stale.
	h1.Kill()
	h2.Kill()
	c.Eventually(waitConverge, "writes refused without quorum", func() error {
		_, err := h3.Shoal("service", "scale", "web=2")
		if err == nil {
			return fmt.Errorf("a write succeeded with 1 of 3 managers")
		}
		if !strings.Contains(err.Error(), "quorum") {
			return fmt.Errorf("write error does not mention the lost quorum: %v", err)
		}
		return nil
	})
	out, errOut, err := h3.ShoalOutput("service", "ls")
	if err != nil || !strings.Contains(out, "web") || !strings.Contains(errOut, "may miss the latest writes") {
		t.Errorf("service ls without quorum: err %v, stdout %q, stderr %q; want the services and a staleness warning", err, out, errOut)
	}

	// The lone survivor recovers the cluster: it becomes the only manager,
	// with everything it had, and takes writes again.
	if out := h3.MustShoal("cluster", "init", "--force-new-cluster"); !strings.Contains(out, "recovered") {
		t.Errorf("force-new-cluster said %q", out)
	}
	c.Eventually(waitConverge, "writes accepted after force-new-cluster", func() error {
		_, err := h3.Shoal("service", "scale", "web=2")
		return err
	})
	if out := h3.MustShoal("service", "ls"); !strings.Contains(out, "web") || !strings.Contains(out, "after") {
		t.Errorf("services after force-new-cluster:\n%s", out)
	}
	if after != before {
		t.Logf("tasks of web changed across the failover (tasks on the killed host's containers kept running): before %s after %s", before, after)
	}
}
