package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/harness"
)

// waitConverge bounds how long the cluster may take to reach a state. It is
// a hang guard, not a speed assertion: convergence is measured by the
// benchmarks.
const waitConverge = 60 * time.Second

// TestSingleHostLifecycle walks one host through a service's whole life:
// create, serve, scale, self-heal, daemon crash and adoption, removal.
func TestSingleHostLifecycle(t *testing.T) {
	c := harness.New(t, 1)
	images := harness.Images(t)
	h := c.Hosts[0]
	h.Start()

	out := h.MustShoal("cluster", "init")
	if !strings.Contains(out, "initialised") {
		t.Fatalf("cluster init said %q", out)
	}
	out = h.MustShoal("image", "load", "-i", filepath.Join(images, "testapp.tar"))
	if !strings.Contains(out, "shoal/testapp:latest") {
		t.Fatalf("image load said %q, want the loaded ref", out)
	}
	h.MustShoal("service", "create", "--name", "web", "--replicas", "3", "shoal/testapp:latest")

	// Every replica answers with its own task id.
	ts := waitRunning(c, h, "web", 3)
	checkServes(t, h, ts)

	// Scale up and down.
	h.MustShoal("service", "scale", "web=5")
	ts = waitRunning(c, h, "web", 5)
	checkServes(t, h, ts)
	h.MustShoal("service", "scale", "web=1")
	waitRunning(c, h, "web", 1)
	c.Eventually(waitConverge, "containers of scaled-down tasks stopped", func() error {
		ids, err := runningContainers(h)
		if err != nil {
			return err
		}
		if len(ids) != 1 {
			return fmt.Errorf("%d containers running, want 1: %v", len(ids), ids)
		}
		return nil
	})

	// A container killed from outside is replaced in its slot.
	h.MustShoal("service", "scale", "web=3")
	ts = waitRunning(c, h, "web", 3)
	victim := ts[1]
	if _, err := h.Runc("kill", victim.ID, "KILL"); err != nil {
		t.Fatal(err)
	}
	c.Eventually(waitConverge, "killed task replaced", func() error {
		now, err := runningTasks(h, "web")
		if err != nil {
			return err
		}
		for _, r := range now {
			if r.Slot == victim.Slot && r.ID != victim.ID && len(now) == 3 {
				return nil
			}
		}
		return fmt.Errorf("slot %s not yet replaced: %s", victim.Slot, summarize(now))
	})
	all, err := tasks(h, "web")
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range all {
		if x.ID == victim.ID && (x.Status.State != "TASK_STATE_FAILED" || x.Status.Err == "") {
			t.Errorf("killed task %s: state %s err %q, want FAILED with the reason", x.ID, x.Status.State, x.Status.Err)
		}
	}
	ts = waitRunning(c, h, "web", 3)
	before, err := runningContainers(h)
	if err != nil {
		t.Fatal(err)
	}

	// kill -9 the daemon: containers keep serving, and the restarted daemon
	// adopts them instead of starting duplicates.
	h.Kill()
	checkServes(t, h, ts)
	h.Start()
	c.Eventually(waitConverge, "node ready again after restart", func() error {
		out, err := h.Shoal("node", "ls")
		if err != nil {
			return err
		}
		if !strings.Contains(strings.ToLower(out), "ready") {
			return fmt.Errorf("node ls: %s", out)
		}
		return nil
	})
	after := waitRunning(c, h, "web", 3)
	if ids(after) != ids(ts) {
		t.Errorf("tasks after restart %s, want the same tasks %s", ids(after), ids(ts))
	}
	// Give the agent time to (wrongly) start anything twice, then look.
	time.Sleep(2 * time.Second)
	now, err := runningContainers(h)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(now, ",") != strings.Join(before, ",") {
		t.Errorf("containers after restart %v, want exactly the survivors %v", now, before)
	}
	checkServes(t, h, after)

	// Logs are kept per task with timestamps.
	logs := h.MustShoal("service", "logs", "web")
	if !strings.Contains(logs, "listening") {
		t.Errorf("service logs has no start line of the test app:\n%s", logs)
	}

	// An OCI-layout archive loads too, and a service's command replaces the
	// image's CMD.
	out = h.MustShoal("image", "load", "-i", filepath.Join(images, "busybox.oci.tar"))
	if !strings.Contains(out, "shoal/busybox:latest") {
		t.Fatalf("image load of the OCI archive said %q", out)
	}
	if ls := h.MustShoal("image", "ls"); !strings.Contains(ls, "shoal/busybox") || !strings.Contains(ls, "shoal/testapp") {
		t.Errorf("image ls does not list both images:\n%s", ls)
	}
	h.MustShoal("service", "create", "--name", "bb", "--env", "GREETING=hello-from-bb", "shoal/busybox", "sh", "-c", "echo $GREETING; echo to-stderr >&2; exec sleep 600")
	waitRunning(c, h, "bb", 1)
	c.Eventually(waitConverge, "busybox service logs", func() error {
		out, err := h.Shoal("service", "logs", "bb")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "hello-from-bb") {
			return fmt.Errorf("logs of bb: %q", out)
		}
		return nil
	})

	// rm leaves nothing behind: containers, mounts, netns files, cgroups.
	h.MustShoal("service", "rm", "bb")
	h.MustShoal("service", "rm", "web")
	c.Eventually(waitConverge, "everything of the service removed", func() error {
		if ids, err := runningContainers(h); err != nil || len(ids) > 0 {
			return fmt.Errorf("containers still running: %v %v", ids, err)
		}
		if m := harness.MountsUnder(h.RunDir); len(m) > 0 {
			return fmt.Errorf("mounts left: %v", m)
		}
		if m := harness.MountsUnder(h.DataDir); len(m) > 0 {
			return fmt.Errorf("mounts left: %v", m)
		}
		for _, dir := range h.CgroupDirs() {
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if e.IsDir() {
					return fmt.Errorf("cgroup left: %s/%s", dir, e.Name())
				}
			}
		}
		if out, _ := h.Shoal("service", "ls", "-q"); strings.TrimSpace(out) != "" {
			return fmt.Errorf("service still listed: %s", out)
		}
		return nil
	})
	nsFiles, _ := filepath.Glob(filepath.Join(h.RunDir, "bridge", "netns", "*"))
	if len(nsFiles) > 0 {
		t.Errorf("container network namespaces left: %v", nsFiles)
	}
}

// checkServes asserts each task answers HTTP with its own task id.
func checkServes(t *testing.T, h *harness.Host, ts []task) {
	t.Helper()
	for _, x := range ts {
		if x.ip() == "" {
			t.Errorf("task %s has no address", x.ID)
			continue
		}
		body, err := h.HTTPGet("http://" + x.ip() + ":8080/")
		if err != nil {
			t.Errorf("task %s at %s: %v", x.ID, x.ip(), err)
			continue
		}
		if !strings.Contains(body, "task="+x.ID) {
			t.Errorf("task %s at %s answered %q, want its own task id", x.ID, x.ip(), body)
		}
	}
}

func ids(ts []task) string {
	var out []string
	for _, t := range ts {
		out = append(out, t.ID)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
