package placement

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// waitTimeout bounds every wait so a broken placer fails the test instead
// of hanging it.
const waitTimeout = 5 * time.Second

const (
	stPending  = shoalpb.TaskState_TASK_STATE_PENDING
	stAssigned = shoalpb.TaskState_TASK_STATE_ASSIGNED
	stRunning  = shoalpb.TaskState_TASK_STATE_RUNNING
	up         = shoalpb.NodeState_NODE_STATE_READY
	down       = shoalpb.NodeState_NODE_STATE_DOWN
	avActive   = shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	avDrained  = shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN
)

type harness struct {
	t *testing.T
	s *store.Store
}

func newHarness(t *testing.T) *harness {
	s := store.New()
	s.SetProposer(store.NewLocalProposer(s))
	return &harness{t: t, s: s}
}

// start runs a placer until the test ends.
func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := New(h.s, nil).Run(ctx); err != nil {
			h.t.Errorf("Run: %v", err)
		}
	}()
	h.t.Cleanup(func() { cancel(); wg.Wait() })
}

func (h *harness) update(fn func(tx store.ReadTx, b *store.Batch) error) {
	h.t.Helper()
	if err := h.s.Update(context.Background(), fn); err != nil {
		h.t.Fatalf("update store: %v", err)
	}
}

func node(id string, state shoalpb.NodeState, avail shoalpb.NodeAvailability) *shoalpb.Node {
	return &shoalpb.Node{
		Id:     id,
		Spec:   &shoalpb.NodeSpec{Availability: avail},
		Status: &shoalpb.NodeStatus{State: state},
	}
}

// task returns a task of svc in state, on node (may be "").
func task(id, svc, nodeID string, state shoalpb.TaskState) *shoalpb.Task {
	return &shoalpb.Task{
		Id:           id,
		ServiceId:    svc,
		NodeId:       nodeID,
		DesiredState: stRunning,
		Status:       &shoalpb.TaskStatus{State: state},
	}
}

func (h *harness) create(nodes []*shoalpb.Node, tasks []*shoalpb.Task) {
	h.t.Helper()
	h.update(func(_ store.ReadTx, b *store.Batch) error {
		for _, n := range nodes {
			b.CreateNode(n)
		}
		for _, t := range tasks {
			b.CreateTask(t)
		}
		return nil
	})
}

func (h *harness) get(id string) *shoalpb.Task {
	var t *shoalpb.Task
	h.s.View(func(tx store.ReadTx) { t = tx.GetTask(id) })
	return t
}

// waitTask polls the task until cond holds, failing with cond's error.
func (h *harness) waitTask(id string, cond func(*shoalpb.Task) error) *shoalpb.Task {
	h.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		t := h.get(id)
		err := cond(t)
		if err == nil {
			return t
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("task %s: %v", id, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isAssigned(t *shoalpb.Task) error {
	if s := t.GetStatus().GetState(); s != stAssigned {
		return fmt.Errorf("state %v (%q), want ASSIGNED", s, t.GetStatus().GetMessage())
	}
	return nil
}

func hasMessage(msg string) func(*shoalpb.Task) error {
	return func(t *shoalpb.Task) error {
		if got := t.GetStatus().GetMessage(); got != msg || t.GetStatus().GetState() != stPending {
			return fmt.Errorf("state %v message %q, want PENDING %q", t.GetStatus().GetState(), got, msg)
		}
		return nil
	}
}

func TestPlacement(t *testing.T) {
	tests := []struct {
		name  string
		nodes []*shoalpb.Node
		// tasks holds running tasks already placed and the pending
		// ones, created together.
		tasks []*shoalpb.Task
		want  map[string]string // pending task -> node
	}{
		{
			name:  "spread over ready nodes",
			nodes: []*shoalpb.Node{node("n1", up, avActive), node("n2", up, avActive), node("n3", up, avActive)},
			tasks: []*shoalpb.Task{
				task("t1", "web", "", stPending), task("t2", "web", "", stPending), task("t3", "web", "", stPending),
			},
			want: map[string]string{"t1": "n1", "t2": "n2", "t3": "n3"},
		},
		{
			name:  "nodes already running the service come last",
			nodes: []*shoalpb.Node{node("n1", up, avActive), node("n2", up, avActive), node("n3", up, avActive)},
			tasks: []*shoalpb.Task{
				task("r1", "web", "n1", stRunning), task("r2", "web", "n2", stRunning),
				task("t1", "web", "", stPending), task("t2", "web", "", stPending),
			},
			// t1 evens the nodes out, t2 takes the lowest id.
			want: map[string]string{"t1": "n3", "t2": "n1"},
		},
		{
			name:  "down and drained nodes skipped",
			nodes: []*shoalpb.Node{node("n1", down, avActive), node("n2", up, avDrained), node("n3", up, avActive)},
			tasks: []*shoalpb.Task{task("t1", "web", "", stPending), task("t2", "web", "", stPending)},
			want:  map[string]string{"t1": "n3", "t2": "n3"},
		},
		{
			name:  "task naming its node goes there",
			nodes: []*shoalpb.Node{node("n1", up, avActive), node("n2", up, avActive)},
			tasks: []*shoalpb.Task{task("g1", "agent", "n2", stPending)},
			want:  map[string]string{"g1": "n2"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.start()
			h.create(tc.nodes, tc.tasks)
			for id, want := range tc.want {
				got := h.waitTask(id, isAssigned)
				if got.GetNodeId() != want {
					t.Errorf("task %s assigned to %q, want %q", id, got.GetNodeId(), want)
				}
				if msg := got.GetStatus().GetMessage(); msg != "assigned to node "+want {
					t.Errorf("task %s message %q", id, msg)
				}
			}
		})
	}
}

func TestUnplaceableTaskSaysWhyThenPlaced(t *testing.T) {
	h := newHarness(t)
	h.create([]*shoalpb.Node{node("n1", down, avActive), node("n2", up, avDrained)}, nil)
	h.start()
	h.create(nil, []*shoalpb.Task{task("t1", "web", "", stPending)})
	waiting := h.waitTask("t1", hasMessage("no suitable node (1 node not ready; 1 node drained)"))

	// A node change that leaves the reason as it is must not rewrite the
	// task. A second task created after it tells when the placer has
	// seen the change.
	h.update(func(tx store.ReadTx, b *store.Batch) error {
		n := proto.Clone(tx.GetNode("n2")).(*shoalpb.Node)
		n.Spec.Labels = map[string]string{"zone": "a"}
		b.UpdateNode(n)
		return nil
	})
	h.create(nil, []*shoalpb.Task{task("t2", "web", "", stPending)})
	h.waitTask("t2", hasMessage("no suitable node (1 node not ready; 1 node drained)"))
	if v := h.get("t1").GetMeta().GetVersion(); v != waiting.GetMeta().GetVersion() {
		t.Errorf("waiting task rewritten (version %d -> %d) though its reason did not change",
			waiting.GetMeta().GetVersion(), v)
	}

	// The node comes back: the task is placed there.
	h.update(func(tx store.ReadTx, b *store.Batch) error {
		n := proto.Clone(tx.GetNode("n1")).(*shoalpb.Node)
		n.Status.State = up
		b.UpdateNode(n)
		return nil
	})
	if got := h.waitTask("t1", isAssigned); got.GetNodeId() != "n1" {
		t.Errorf("task assigned to %q, want n1", got.GetNodeId())
	}
}

func TestTaskForMissingNodeWaits(t *testing.T) {
	h := newHarness(t)
	h.start()
	h.create([]*shoalpb.Node{node("n1", up, avActive)}, []*shoalpb.Task{task("g1", "agent", "gone", stPending)})
	h.waitTask("g1", hasMessage("node gone not found"))
}

func TestNotPendingTasksLeftAlone(t *testing.T) {
	h := newHarness(t)
	h.start()
	stopping := task("s1", "web", "", stPending)
	stopping.DesiredState = shoalpb.TaskState_TASK_STATE_SHUTDOWN
	h.create([]*shoalpb.Node{node("n1", up, avActive)}, []*shoalpb.Task{
		stopping,
		task("new", "web", "", shoalpb.TaskState_TASK_STATE_NEW),
	})
	h.create(nil, []*shoalpb.Task{task("t1", "web", "", stPending)})
	h.waitTask("t1", isAssigned) // the placer ran after the others existed
	for _, id := range []string{"s1", "new"} {
		if got := h.get(id); got.GetNodeId() != "" || got.GetStatus().GetState() == stAssigned {
			t.Errorf("task %s assigned to %q though not pending for a node", id, got.GetNodeId())
		}
	}
}
