package orchestrator

import (
	"fmt"
	"testing"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// editNode applies fn to a copy of the stored node and writes it.
func (h *harness) editNode(id string, fn func(*shoalpb.Node)) {
	h.t.Helper()
	h.update(func(tx store.ReadTx, b *store.Batch) error {
		n := proto.Clone(tx.GetNode(id)).(*shoalpb.Node)
		fn(n)
		b.UpdateNode(n)
		return nil
	})
}

// reportNow is report with the status stamped by the fake clock, as an
// agent stamps it.
func (h *harness) reportNow(taskID, nodeID string, state shoalpb.TaskState) {
	h.t.Helper()
	h.update(func(tx store.ReadTx, b *store.Batch) error {
		t := proto.Clone(tx.GetTask(taskID)).(*shoalpb.Task)
		t.NodeId = nodeID
		t.Status = &shoalpb.TaskStatus{State: state, Timestamp: timestamppb.New(h.clock.Now())}
		b.UpdateTask(t)
		return nil
	})
}

// advance moves the fake clock forward.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// runnableIn returns the slot's runnable task, or nil.
func runnableIn(tasks []*shoalpb.Task, slot uint64) *shoalpb.Task {
	for _, t := range tasks {
		if t.GetSlot() == slot && t.GetDesiredState() == stRunning {
			return t
		}
	}
	return nil
}

// retired waits until the orchestrator has judged task id (asked it to
// stop), which it does in the same pass as deciding on its replacement.
func (h *harness) retired(serviceID, id string) []*shoalpb.Task {
	h.t.Helper()
	return h.waitFor(serviceID, func(tasks []*shoalpb.Task) error {
		for _, t := range tasks {
			if t.GetId() == id && t.GetDesiredState() == stShutdown {
				return nil
			}
		}
		return fmt.Errorf("task %s not retired yet", id)
	})
}

func TestRestartPolicy(t *testing.T) {
	tests := []struct {
		name   string
		policy *shoalpb.RestartPolicy
		// ends are the states the slot's successive tasks end in.
		ends []shoalpb.TaskState
		// replaced says, after each end, whether a new task fills the slot.
		replaced []bool
	}{
		{name: "default any", ends: []shoalpb.TaskState{stComplete, stFailed}, replaced: []bool{true, true}},
		{name: "none", policy: &shoalpb.RestartPolicy{Condition: shoalpb.RestartPolicy_CONDITION_NONE},
			ends: []shoalpb.TaskState{stFailed}, replaced: []bool{false}},
		{name: "on-failure after exit 0", policy: &shoalpb.RestartPolicy{Condition: shoalpb.RestartPolicy_CONDITION_ON_FAILURE},
			ends: []shoalpb.TaskState{stComplete}, replaced: []bool{false}},
		{name: "on-failure after failures", policy: &shoalpb.RestartPolicy{Condition: shoalpb.RestartPolicy_CONDITION_ON_FAILURE},
			ends: []shoalpb.TaskState{stFailed, shoalpb.TaskState_TASK_STATE_REJECTED, stComplete}, replaced: []bool{true, true, false}},
		{name: "max attempts 2", policy: &shoalpb.RestartPolicy{MaxAttempts: 2},
			ends: []shoalpb.TaskState{stFailed, stFailed, stFailed}, replaced: []bool{true, true, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.createNode("n1", availActive)
			h.start()
			spec := replicatedSpec("web", 1)
			spec.RestartPolicy = tc.policy
			// A delay-free policy: the default backoff would wait.
			if spec.RestartPolicy == nil {
				spec.RestartPolicy = &shoalpb.RestartPolicy{}
			}
			spec.RestartPolicy.Delay = durationpb.New(0)
			h.createService("svc", spec)
			for i, end := range tc.ends {
				cur := runnableIn(h.waitFor("svc", runningSlots(1)), 1)
				h.reportNow(cur.GetId(), "n1", end)
				tasks := h.retired("svc", cur.GetId())
				if got := runnableIn(tasks, 1) != nil; got != tc.replaced[i] {
					t.Fatalf("after end %d (%v): replaced=%v, want %v:%s", i+1, end, got, tc.replaced[i], dump(tasks))
				}
			}
		})
	}
}

func TestRestartPolicyWindowAndDelay(t *testing.T) {
	h := newHarness(t)
	h.createNode("n1", availActive)
	h.start()
	spec := replicatedSpec("web", 1)
	spec.RestartPolicy = &shoalpb.RestartPolicy{
		Delay:       durationpb.New(10 * time.Second),
		MaxAttempts: 1,
		Window:      durationpb.New(time.Minute),
	}
	h.createService("svc", spec)

	// The first failure is restarted, but only after the delay.
	cur := runnableIn(h.waitFor("svc", runningSlots(1)), 1)
	h.reportNow(cur.GetId(), "n1", stFailed)
	if tasks := h.retired("svc", cur.GetId()); runnableIn(tasks, 1) != nil {
		t.Fatalf("replaced before the 10s delay:%s", dump(tasks))
	}
	h.clock.advance(11 * time.Second)
	h.editService("svc", func(*shoalpb.Service) {}) // an event: look again
	cur = runnableIn(h.waitFor("svc", runningSlots(1)), 1)

	// A second failure within the window is one too many.
	h.clock.advance(time.Second)
	h.reportNow(cur.GetId(), "n1", stFailed)
	h.clock.advance(11 * time.Second)
	if tasks := h.retired("svc", cur.GetId()); runnableIn(tasks, 1) != nil {
		t.Fatalf("restarted beyond max attempts within the window:%s", dump(tasks))
	}
	// Once the first failure is out of the window, the slot restarts.
	h.clock.advance(time.Minute)
	h.editService("svc", func(*shoalpb.Service) {})
	h.waitFor("svc", runningSlots(1))
}

func TestNodeDownReplacesReplicatedTasks(t *testing.T) {
	h := newHarness(t)
	h.createNode("n1", availActive)
	h.createNode("n2", availActive)
	h.start()
	h.createService("svc", replicatedSpec("web", 2))
	h.createService("glob", &shoalpb.ServiceSpec{
		Name:      "agent",
		Container: &shoalpb.ContainerSpec{Image: "busybox"},
		Mode:      &shoalpb.ServiceSpec_Global{Global: &shoalpb.GlobalService{}},
	})
	tasks := h.waitFor("svc", runningSlots(2))
	h.report(slotTask(tasks, 1).GetId(), "n1", stRunning)
	h.report(slotTask(tasks, 2).GetId(), "n2", stRunning)
	lostID := slotTask(tasks, 1).GetId()
	globals := h.waitFor("glob", func(ts []*shoalpb.Task) error {
		if len(ts) != 2 {
			return fmt.Errorf("%d global tasks, want 2", len(ts))
		}
		return nil
	})
	for _, g := range globals {
		h.report(g.GetId(), "", stRunning)
	}

	h.editNode("n1", func(n *shoalpb.Node) { n.Status.State = shoalpb.NodeState_NODE_STATE_DOWN })
	tasks = h.waitFor("svc", func(ts []*shoalpb.Task) error {
		if err := runningSlots(2)(ts); err != nil {
			return err
		}
		if runnableIn(ts, 1).GetId() == lostID {
			return fmt.Errorf("slot 1 still counts on the task of the down node")
		}
		return nil
	})
	for _, task := range tasks {
		if task.GetId() == lostID && task.GetStatus().GetState() != stRunning {
			t.Errorf("task of the down node: state %v, want RUNNING until its node says otherwise", task.GetStatus().GetState())
		}
	}
	// A global service keeps its task with the down node.
	for _, g := range h.tasks("glob") {
		if g.GetDesiredState() != stRunning {
			t.Errorf("global task on %s asked to stop when n1 went down", g.GetNodeId())
		}
	}
}

func TestDrainStartsReplacementFirst(t *testing.T) {
	h := newHarness(t)
	h.createNode("n1", availActive)
	h.createNode("n2", availActive)
	h.start()
	h.createService("svc", replicatedSpec("web", 1))
	old := runnableIn(h.waitFor("svc", runningSlots(1)), 1)
	h.report(old.GetId(), "n1", stRunning)

	h.editNode("n1", func(n *shoalpb.Node) { n.Spec.Availability = availDrain })
	var repl *shoalpb.Task
	h.waitFor("svc", func(ts []*shoalpb.Task) error {
		for _, task := range ts {
			switch {
			case task.GetId() == old.GetId() && task.GetDesiredState() != stRunning:
				return fmt.Errorf("the drained task was stopped before its replacement runs")
			case task.GetId() != old.GetId() && task.GetDesiredState() == stRunning:
				repl = task
			}
		}
		if repl == nil {
			return fmt.Errorf("no replacement yet")
		}
		return nil
	})
	h.report(repl.GetId(), "n2", stRunning)
	h.retired("svc", old.GetId())
	h.waitFor("svc", runningSlots(1))
}

func TestGlobalFollowsConstraintsAndLabels(t *testing.T) {
	h := newHarness(t)
	h.createNode("n1", availActive)
	h.createNode("n2", availActive)
	h.editNode("n1", func(n *shoalpb.Node) { n.Spec.Labels = map[string]string{"zone": "a"} })
	h.start()
	h.createService("svc", &shoalpb.ServiceSpec{
		Name:      "agent",
		Container: &shoalpb.ContainerSpec{Image: "busybox"},
		Placement: &shoalpb.Placement{Constraints: []string{"node.labels.zone==a"}},
		Mode:      &shoalpb.ServiceSpec_Global{Global: &shoalpb.GlobalService{}},
	})
	on := func(want string) func([]*shoalpb.Task) error {
		return func(ts []*shoalpb.Task) error {
			got := ""
			for _, task := range ts {
				if task.GetDesiredState() == stRunning {
					got += task.GetNodeId() + ","
				}
			}
			if got != want {
				return fmt.Errorf("runnable on %q, want %q", got, want)
			}
			return nil
		}
	}
	h.waitFor("svc", on("n1,"))
	h.editNode("n2", func(n *shoalpb.Node) { n.Spec.Labels = map[string]string{"zone": "a"} })
	h.waitFor("svc", on("n1,n2,"))
	h.editNode("n1", func(n *shoalpb.Node) { n.Spec.Labels = map[string]string{"zone": "b"} })
	h.waitFor("svc", on("n2,"))
}
