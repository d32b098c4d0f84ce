package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/e2e/harness"
)

// TestMain lets the test binary double as a helper process: with
// wgHelperEnv set it serves a benchmark's reference WireGuard device
// (runWGHelper) instead of running tests.
func TestMain(m *testing.M) {
	if spec := os.Getenv(wgHelperEnv); spec != "" {
		os.Exit(runWGHelper(spec))
	}
	os.Exit(m.Run())
}

// task is the part of `shoal service ps --format json` the tests read
// (protojson: 64-bit integers are strings, enums their names).
type task struct {
	ID           string `json:"id"`
	ServiceID    string `json:"serviceId"`
	Slot         string `json:"slot"`
	NodeID       string `json:"nodeId"`
	DesiredState string `json:"desiredState"`
	Status       struct {
		State     string   `json:"state"`
		Message   string   `json:"message"`
		Err       string   `json:"err"`
		ExitCode  int      `json:"exitCode"`
		Addresses []string `json:"addresses"`
		Pid       int      `json:"pid"`
	} `json:"status"`
}

func (t task) running() bool {
	return t.DesiredState == "TASK_STATE_RUNNING" && t.Status.State == "TASK_STATE_RUNNING"
}

// ip is the task's container address without the prefix length.
func (t task) ip() string {
	if len(t.Status.Addresses) == 0 {
		return ""
	}
	return strings.Split(t.Status.Addresses[0], "/")[0]
}

func tasks(h *harness.Host, service string) ([]task, error) {
	out, err := h.Shoal("service", "ps", "--format", "json", service)
	if err != nil {
		return nil, err
	}
	var ts []task
	if err := json.Unmarshal([]byte(out), &ts); err != nil {
		return nil, fmt.Errorf("parse service ps json: %w\n%s", err, out)
	}
	return ts, nil
}

func runningTasks(h *harness.Host, service string) ([]task, error) {
	all, err := tasks(h, service)
	if err != nil {
		return nil, err
	}
	var out []task
	for _, t := range all {
		if t.running() {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Slot < out[j].Slot })
	return out, nil
}

// waitRunning waits until exactly n tasks of the service run, with one
// task per slot, and returns them.
func waitRunning(c *harness.Cluster, h *harness.Host, service string, n int) []task {
	c.T.Helper()
	var got []task
	c.Eventually(waitConverge, fmt.Sprintf("%d tasks of %s running", n, service), func() error {
		ts, err := runningTasks(h, service)
		if err != nil {
			return err
		}
		slots := map[string]bool{}
		for _, t := range ts {
			slots[t.Slot] = true
		}
		if len(ts) != n || len(slots) != n {
			all, _ := tasks(h, service)
			return fmt.Errorf("%d running in %d slots, want %d; tasks: %s", len(ts), len(slots), n, summarize(all))
		}
		got = ts
		return nil
	})
	return got
}

func summarize(ts []task) string {
	var parts []string
	for _, t := range ts {
		parts = append(parts, fmt.Sprintf("%s slot=%s desired=%s state=%s err=%q", t.ID[:8], t.Slot,
			strings.TrimPrefix(t.DesiredState, "TASK_STATE_"), strings.TrimPrefix(t.Status.State, "TASK_STATE_"), t.Status.Err))
	}
	return strings.Join(parts, "; ")
}

// runningContainers lists the ids of the containers runc runs for the host.
func runningContainers(h *harness.Host) ([]string, error) {
	out, err := h.Runc("list", "--format", "json")
	if err != nil {
		return nil, err
	}
	var list []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if strings.TrimSpace(out) == "null" || strings.TrimSpace(out) == "" {
		return nil, nil
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("parse runc list: %w: %s", err, out)
	}
	var ids []string
	for _, c := range list {
		if c.Status == "running" {
			ids = append(ids, c.ID)
		}
	}
	sort.Strings(ids)
	return ids, nil
}
