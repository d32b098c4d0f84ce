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
	"google.golang.org/protobuf/types/known/timestamppb"
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

// t0 is the placers' clock in tests: recent failures are relative to it.
var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// start runs a placer until the test ends.
func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	p := New(h.s, nil)
	p.now = func() time.Time { return t0 }
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := p.Run(ctx); err != nil {
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

// finished returns a task of svc that ended in state on node, ago before
// t0.
func finished(id, svc, nodeID string, state shoalpb.TaskState, ago time.Duration) *shoalpb.Task {
	t := task(id, svc, nodeID, state)
	t.Status.Timestamp = timestamppb.New(t0.Add(-ago))
	return t
}

// reserving sets the memory t reserves.
func reserving(t *shoalpb.Task, memoryBytes int64) *shoalpb.Task {
	if t.Spec == nil {
		t.Spec = &shoalpb.ServiceSpec{}
	}
	t.Spec.Container = &shoalpb.ContainerSpec{Resources: &shoalpb.ResourceRequirements{
		Reservations: &shoalpb.Resources{MemoryBytes: memoryBytes},
	}}
	return t
}

// withMemory describes the node's memory.
func withMemory(n *shoalpb.Node, memoryBytes int64) *shoalpb.Node {
	n.Description = &shoalpb.NodeDescription{Resources: &shoalpb.Resources{NanoCpus: 4e9, MemoryBytes: memoryBytes}}
	return n
}

const gib = 1 << 30

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
			// n1 sorts first, but web failed there a minute ago.
			name:  "a node where the service failed recently comes last",
			nodes: []*shoalpb.Node{node("n1", up, avActive), node("n2", up, avActive)},
			tasks: []*shoalpb.Task{
				finished("f1", "web", "n1", shoalpb.TaskState_TASK_STATE_FAILED, time.Minute),
				task("t1", "web", "", stPending),
			},
			want: map[string]string{"t1": "n2"},
		},
		{
			name:  "rejected counts as failed",
			nodes: []*shoalpb.Node{node("n1", up, avActive), node("n2", up, avActive)},
			tasks: []*shoalpb.Task{
				finished("f1", "web", "n1", shoalpb.TaskState_TASK_STATE_REJECTED, time.Minute),
				task("t1", "web", "", stPending),
			},
			want: map[string]string{"t1": "n2"},
		},
		{
			name:  "old failures, other services' failures and other ends do not count",
			nodes: []*shoalpb.Node{node("n1", up, avActive), node("n2", up, avActive)},
			tasks: []*shoalpb.Task{
				finished("f1", "web", "n1", shoalpb.TaskState_TASK_STATE_FAILED, RecentFailureWindow+time.Second),
				finished("f2", "db", "n1", shoalpb.TaskState_TASK_STATE_FAILED, time.Minute),
				finished("f3", "web", "n1", shoalpb.TaskState_TASK_STATE_COMPLETE, time.Minute),
				finished("f4", "web", "n1", shoalpb.TaskState_TASK_STATE_SHUTDOWN, time.Minute),
				task("t1", "web", "", stPending),
			},
			want: map[string]string{"t1": "n1"},
		},
		{
			name:  "reservations of running tasks count",
			nodes: []*shoalpb.Node{withMemory(node("n1", up, avActive), 2*gib), withMemory(node("n2", up, avActive), 2*gib)},
			tasks: []*shoalpb.Task{
				reserving(task("r1", "db", "n1", stRunning), 2*gib),
				task("r2", "cache", "n2", stRunning), task("r3", "cache", "n2", stRunning),
				reserving(task("t1", "web", "", stPending), 1*gib),
			},
			want: map[string]string{"t1": "n2"},
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

// A task of a global service (naming its node) is placed before the others:
// it can run nowhere else, and its reservation is taken before theirs.
func TestTasksNamingTheirNodePlacedFirst(t *testing.T) {
	h := newHarness(t)
	h.create([]*shoalpb.Node{withMemory(node("n1", up, avActive), 1*gib)}, nil)
	h.start()
	older := reserving(task("t1", "web", "", stPending), 1*gib)
	older.Meta = &shoalpb.Meta{CreatedAt: timestamppb.New(t0.Add(-time.Hour))}
	h.create(nil, []*shoalpb.Task{older, reserving(task("g1", "agent", "n1", stPending), 1*gib)})
	if got := h.waitTask("g1", isAssigned); got.GetNodeId() != "n1" {
		t.Errorf("g1 assigned to %q, want n1", got.GetNodeId())
	}
	h.waitTask("t1", hasMessage("no suitable node (insufficient memory on 1 node)"))
}

// A waiting task is placed as soon as a node fits: when the node describes
// enough memory, then gets the label its constraint asks for.
func TestWaitingTaskPlacedWhenNodeFits(t *testing.T) {
	h := newHarness(t)
	h.create([]*shoalpb.Node{node("n1", up, avActive)}, nil)
	h.start()
	waiting := reserving(task("t1", "web", "", stPending), 1*gib)
	waiting.Spec.Placement = &shoalpb.Placement{Constraints: []string{"node.labels.zone==a"}}
	h.create(nil, []*shoalpb.Task{waiting})
	h.waitTask("t1", hasMessage("no suitable node (insufficient memory on 1 node)"))

	updateNode := func(fn func(*shoalpb.Node)) {
		h.update(func(tx store.ReadTx, b *store.Batch) error {
			n := proto.Clone(tx.GetNode("n1")).(*shoalpb.Node)
			fn(n)
			b.UpdateNode(n)
			return nil
		})
	}
	updateNode(func(n *shoalpb.Node) { withMemory(n, 2*gib) })
	h.waitTask("t1", hasMessage("no suitable node (constraint node.labels.zone==a not met on 1 node)"))
	updateNode(func(n *shoalpb.Node) { n.Spec.Labels = map[string]string{"zone": "a"} })
	if got := h.waitTask("t1", isAssigned); got.GetNodeId() != "n1" {
		t.Errorf("task assigned to %q, want n1", got.GetNodeId())
	}
}

// A waiting task is placed as soon as a task that held the memory it needs
// ends.
func TestWaitingTaskPlacedWhenMemoryFreed(t *testing.T) {
	h := newHarness(t)
	h.create([]*shoalpb.Node{withMemory(node("n1", up, avActive), 2*gib)},
		[]*shoalpb.Task{reserving(task("r1", "db", "n1", stRunning), 2*gib)})
	h.start()
	h.create(nil, []*shoalpb.Task{reserving(task("t1", "web", "", stPending), 1*gib)})
	h.waitTask("t1", hasMessage("no suitable node (insufficient memory on 1 node)"))

	h.update(func(tx store.ReadTx, b *store.Batch) error {
		r := proto.Clone(tx.GetTask("r1")).(*shoalpb.Task)
		r.Status.State = shoalpb.TaskState_TASK_STATE_COMPLETE
		b.UpdateTask(r)
		return nil
	})
	if got := h.waitTask("t1", isAssigned); got.GetNodeId() != "n1" {
		t.Errorf("task assigned to %q, want n1", got.GetNodeId())
	}
}
