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

// TestSchedulingAndHealing runs four hosts with zone labels through
// placement (global services following nodes, spread, constraints, why a
// task waits, max per node, reservations), limits (OOM), restart policy,
// drain and the loss of a host.
func TestSchedulingAndHealing(t *testing.T) {
	c := harness.New(t, 4)
	images := harness.Images(t)
	reg := c.StartRegistry()
	app := c.PushImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest")
	bb := c.PushImage(filepath.Join(images, "busybox.oci.tar"), "shoal/busybox:latest")
	for _, h := range c.Hosts {
		h.Start("--insecure-registry", reg)
	}
	h1, h2, h3, h4 := c.Hosts[0], c.Hosts[1], c.Hosts[2], c.Hosts[3]
	h1.MustShoal("cluster", "init")
	tok := strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "worker"))
	addr := h1.Addr.String() + ":4242"
	h2.MustShoal("cluster", "join", "--token", tok, addr)
	h3.MustShoal("cluster", "join", "--token", tok, addr)
	waitReady(c, h1, 3)
	id := map[*harness.Host]string{h1: nodeID(t, h1), h2: nodeID(t, h2), h3: nodeID(t, h3)}

	// A global service runs on every node, and on a node that joins.
	h1.MustShoal("service", "create", "-d", "--name", "agent", "--mode", "global", bb, "sleep", "3600")
	waitGlobal(c, h1, "agent", id[h1], id[h2], id[h3])
	h4.MustShoal("cluster", "join", "--token", tok, addr)
	waitReady(c, h1, 4)
	id[h4] = nodeID(t, h4)
	waitGlobal(c, h1, "agent", id[h1], id[h2], id[h3], id[h4])

	// Zone a is h1 alone, zone b the other three: spreading 4 replicas over
	// zones puts 2 on h1 (ranking by tasks per node alone would put 1).
	h1.MustShoal("node", "update", "--label-add", "zone=a", id[h1])
	for _, h := range []*harness.Host{h2, h3, h4} {
		h1.MustShoal("node", "update", "--label-add", "zone=b", id[h])
	}
	h1.MustShoal("service", "create", "--name", "spread", "--replicas", "4", "--placement-pref", "spread=node.labels.zone", app)
	perNode := countByNode(waitRunning(c, h1, "spread", 4))
	if perNode[id[h1]] != 2 {
		t.Errorf("spread over zones: %d tasks on h1 (zone a), want 2: %v", perNode[id[h1]], perNode)
	}

	// A constraint no node meets: the task waits and says why, then runs
	// as soon as a node gets the label.
	h1.MustShoal("service", "create", "-d", "--name", "pinned", "--constraint", "node.labels.disk==ssd", app)
	waitPendingReason(c, h1, "pinned", "constraint node.labels.disk==ssd not met on 4 nodes")
	h1.MustShoal("node", "update", "--label-add", "disk=ssd", id[h3])
	if ts := waitRunning(c, h1, "pinned", 1); ts[0].NodeID != id[h3] {
		t.Errorf("pinned runs on %s, want h3 (%s)", ts[0].NodeID, id[h3])
	}

	// Max replicas per node and reservations nobody can meet.
	h1.MustShoal("service", "create", "-d", "--name", "capped", "--replicas", "2", "--replicas-max-per-node", "1",
		"--constraint", "node.labels.zone==a", app)
	waitPendingReason(c, h1, "capped", "max replicas per node")
	h1.MustShoal("service", "create", "-d", "--name", "huge", "--reserve-memory", "64T", app)
	waitPendingReason(c, h1, "huge", "insufficient memory on 4 nodes")
	h1.MustShoal("service", "rm", "capped", "huge", "pinned")

	// Memory limit: the kernel kills the container and the task says so.
	h1.MustShoal("service", "create", "-d", "--name", "hog", "--limit-memory", "16M", "--restart-condition", "none",
		bb, "sh", "-c", "x=0123456789; while :; do x=$x$x; done")
	c.Eventually(waitConverge, "hog OOM-killed", func() error {
		ts, err := tasks(h1, "hog")
		if err != nil {
			return err
		}
		for _, tk := range ts {
			if tk.Status.State == "TASK_STATE_FAILED" && strings.Contains(tk.Status.Err, "OOM") {
				return nil
			}
		}
		return fmt.Errorf("no task failed with OOM: %s", summarize(ts))
	})

	// Restart policy: 2 restarts, so 3 runs, then the slot stays empty.
	h1.MustShoal("service", "create", "-d", "--name", "crash", "--restart-max-attempts", "2", "--restart-delay", "0s",
		bb, "sh", "-c", "exit 3")
	failed := func() (int, int, error) {
		ts, err := tasks(h1, "crash")
		if err != nil {
			return 0, 0, err
		}
		n, runnable := 0, 0
		for _, tk := range ts {
			if tk.Status.State == "TASK_STATE_FAILED" && tk.Status.ExitCode == 3 {
				n++
			}
			if tk.DesiredState == "TASK_STATE_RUNNING" {
				runnable++
			}
		}
		return n, runnable, nil
	}
	c.Eventually(waitConverge, "crash failed 3 times", func() error {
		n, runnable, err := failed()
		if err == nil && (n != 3 || runnable != 0) {
			err = fmt.Errorf("%d failed runs, %d runnable tasks; want 3 and 0", n, runnable)
		}
		return err
	})
	// The orchestrator decides right when a task fails; give a fourth run,
	// if there were going to be one, time to be created and fail.
	time.Sleep(2 * time.Second)
	if n, runnable, err := failed(); err != nil || n != 3 || runnable != 0 {
		t.Errorf("after max attempts: %d failed runs, %d runnable (%v); want 3 and 0", n, runnable, err)
	}
	h1.MustShoal("service", "rm", "hog", "crash")

	// Drain h2: the global task there stops, replicated tasks move, and
	// h2 runs no container any more.
	h1.MustShoal("node", "update", "--availability", "drain", id[h2])
	waitGlobal(c, h1, "agent", id[h1], id[h3], id[h4])
	c.Eventually(waitConverge, "h2 drained", func() error {
		ts, err := runningTasks(h1, "spread")
		if err != nil {
			return err
		}
		if n := countByNode(ts)[id[h2]]; n != 0 || len(ts) != 4 {
			return fmt.Errorf("%d of spread running, %d on h2", len(ts), n)
		}
		if ids, err := runningContainers(h2); err != nil || len(ids) != 0 {
			return fmt.Errorf("h2 still runs %v (%v)", ids, err)
		}
		return nil
	})
	h1.MustShoal("node", "update", "--availability", "active", id[h2])
	waitGlobal(c, h1, "agent", id[h1], id[h2], id[h3], id[h4])
	h1.MustShoal("service", "rm", "spread")

	// Node loss: cut h4 off; its task runs elsewhere, and when h4 comes
	// back its stale container is stopped.
	h1.MustShoal("service", "create", "--name", "onb", "--replicas", "3", "--constraint", "node.labels.zone==b", app)
	var lost task
	for _, tk := range waitRunning(c, h1, "onb", 3) {
		if tk.NodeID == id[h4] {
			lost = tk
		}
	}
	if lost.ID == "" {
		t.Fatalf("no task of onb on h4")
	}
	// Two signals can mark h4 DOWN, gossip and the dispatcher's
	// heartbeats; status.message says which one did.
	cut := time.Now()
	h4.CutLink()
	var healed, down time.Duration
	var downMsg string
	deadline := cut.Add(waitConverge)
	for healed == 0 || down == 0 {
		if st, msg, err := nodeStatus(h1, id[h4]); down == 0 && err == nil && st == "NODE_STATE_DOWN" {
			down, downMsg = time.Since(cut), msg
		}
		if ts, err := runningTasks(h1, "onb"); healed == 0 && err == nil && len(ts) == 3 && countByNode(ts)[id[h4]] == 0 {
			healed = time.Since(cut)
		}
		if time.Now().After(deadline) {
			all, _ := tasks(h1, "onb")
			st, msg, err := nodeStatus(h1, id[h4])
			t.Fatalf("%s after h4's link was cut: h4 is %s %q (%v); tasks of onb (want 3 running, none on h4): %s", waitConverge, st, msg, err, summarize(all))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("link cut → h4 DOWN in %.2fs (status.message %q), replacement RUNNING in %.2fs", down.Seconds(), downMsg, healed.Seconds())
	for _, l := range livenessLog(h1, id[h4], cut) {
		t.Logf("h1: %s", l)
	}
	fmt.Printf("node loss: link cut to h4 DOWN: %.2fs (%s); to replacement RUNNING: %.2fs\n", down.Seconds(), downMsg, healed.Seconds())

	h4.RestoreLink()
	c.Eventually(waitConverge, "h4's stale task stopped", func() error {
		ids, err := runningContainers(h4)
		if err != nil {
			return err
		}
		for _, cid := range ids {
			if cid == lost.ID {
				return fmt.Errorf("h4 still runs %s", lost.ID)
			}
		}
		ts, err := tasks(h1, "onb")
		if err != nil {
			return err
		}
		for _, tk := range ts {
			if tk.ID == lost.ID && tk.Status.State != "TASK_STATE_SHUTDOWN" {
				return fmt.Errorf("the stale task is %s", tk.Status.State)
			}
		}
		return nil
	})
	waitRunning(c, h1, "onb", 3)
}

// waitReady waits until n nodes are ready.
func waitReady(c *harness.Cluster, h *harness.Host, n int) {
	c.T.Helper()
	c.Eventually(waitConverge, fmt.Sprintf("%d nodes ready", n), func() error {
		out, err := h.Shoal("node", "ls")
		if err != nil {
			return err
		}
		if got := strings.Count(out, "Ready"); got != n {
			return fmt.Errorf("%d nodes ready:\n%s", got, out)
		}
		return nil
	})
}

// waitGlobal waits until the global service runs exactly one task on each
// of the nodes, and none elsewhere.
func waitGlobal(c *harness.Cluster, h *harness.Host, service string, nodes ...string) {
	c.T.Helper()
	want := append([]string(nil), nodes...)
	sort.Strings(want)
	c.Eventually(waitConverge, fmt.Sprintf("%s on %d nodes", service, len(nodes)), func() error {
		ts, err := runningTasks(h, service)
		if err != nil {
			return err
		}
		var got []string
		for _, tk := range ts {
			got = append(got, tk.NodeID)
		}
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			return fmt.Errorf("running on %v, want %v", got, want)
		}
		return nil
	})
}

// waitPendingReason waits until a pending task of the service says why it
// waits, with text in the reason.
func waitPendingReason(c *harness.Cluster, h *harness.Host, service, text string) {
	c.T.Helper()
	c.Eventually(waitConverge, service+" pending: "+text, func() error {
		ts, err := tasks(h, service)
		if err != nil {
			return err
		}
		for _, tk := range ts {
			if tk.Status.State == "TASK_STATE_PENDING" && strings.Contains(tk.Status.Message, text) {
				return nil
			}
		}
		var msgs []string
		for _, tk := range ts {
			msgs = append(msgs, tk.Status.State+": "+tk.Status.Message)
		}
		return fmt.Errorf("no pending task says %q: %v", text, msgs)
	})
	// `service ps` shows the reason too.
	if out := h.MustShoal("service", "ps", "--no-trunc", service); !strings.Contains(out, text) {
		c.T.Errorf("service ps %s does not say %q:\n%s", service, text, out)
	}
}

func countByNode(ts []task) map[string]int {
	m := make(map[string]int)
	for _, tk := range ts {
		m[tk.NodeID]++
	}
	return m
}
