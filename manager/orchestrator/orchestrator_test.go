package orchestrator

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/protobuf/proto"
)

// waitTimeout bounds every wait so a broken orchestrator fails the test
// instead of hanging it.
const waitTimeout = 5 * time.Second

const (
	stNew       = shoalpb.TaskState_TASK_STATE_NEW
	stAssigned  = shoalpb.TaskState_TASK_STATE_ASSIGNED
	stRunning   = shoalpb.TaskState_TASK_STATE_RUNNING
	stShutdown  = shoalpb.TaskState_TASK_STATE_SHUTDOWN
	stFailed    = shoalpb.TaskState_TASK_STATE_FAILED
	stRemove    = shoalpb.TaskState_TASK_STATE_REMOVE
	stOrphaned  = shoalpb.TaskState_TASK_STATE_ORPHANED
	stComplete  = shoalpb.TaskState_TASK_STATE_COMPLETE
	nodeReady   = shoalpb.NodeState_NODE_STATE_READY
	availActive = shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	availDrain  = shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex // guards following
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// harness is a store with an orchestrator running on it.
type harness struct {
	t     *testing.T
	s     *store.Store
	clock *fakeClock
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	s := store.New()
	s.SetProposer(store.NewLocalProposer(s))
	h := &harness{t: t, s: s, clock: &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}}
	return h
}

// start runs the orchestrator until the test ends.
func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		o := New(h.s, Config{Clock: h.clock.Now})
		if err := o.Run(ctx); err != nil {
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

func replicatedSpec(name string, replicas uint64) *shoalpb.ServiceSpec {
	return &shoalpb.ServiceSpec{
		Name:      name,
		Container: &shoalpb.ContainerSpec{Image: "busybox", Command: []string{"sleep", "1000"}},
		Mode:      &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: replicas}},
	}
}

func (h *harness) createService(id string, spec *shoalpb.ServiceSpec) {
	h.t.Helper()
	h.update(func(_ store.ReadTx, b *store.Batch) error {
		b.CreateService(&shoalpb.Service{Id: id, Spec: spec})
		return nil
	})
}

// editService applies fn to a copy of the stored service and writes it.
func (h *harness) editService(id string, fn func(*shoalpb.Service)) {
	h.t.Helper()
	h.update(func(tx store.ReadTx, b *store.Batch) error {
		svc := proto.Clone(tx.GetService(id)).(*shoalpb.Service)
		fn(svc)
		b.UpdateService(svc)
		return nil
	})
}

func (h *harness) createNode(id string, avail shoalpb.NodeAvailability) {
	h.t.Helper()
	h.update(func(_ store.ReadTx, b *store.Batch) error {
		b.CreateNode(&shoalpb.Node{
			Id:     id,
			Spec:   &shoalpb.NodeSpec{Availability: avail},
			Status: &shoalpb.NodeStatus{State: nodeReady},
		})
		return nil
	})
}

// report plays the agent: sets the observed state (and node) of a task.
func (h *harness) report(taskID, nodeID string, state shoalpb.TaskState) {
	h.t.Helper()
	h.update(func(tx store.ReadTx, b *store.Batch) error {
		t := proto.Clone(tx.GetTask(taskID)).(*shoalpb.Task)
		if nodeID != "" {
			t.NodeId = nodeID
		}
		t.Status = &shoalpb.TaskStatus{State: state}
		b.UpdateTask(t)
		return nil
	})
}

func (h *harness) tasks(serviceID string) []*shoalpb.Task {
	var tasks []*shoalpb.Task
	h.s.View(func(tx store.ReadTx) { tasks = tx.TasksByService(serviceID) })
	sort.Slice(tasks, func(i, j int) bool {
		if tasks[i].GetSlot() != tasks[j].GetSlot() {
			return tasks[i].GetSlot() < tasks[j].GetSlot()
		}
		return tasks[i].GetMeta().GetVersion() < tasks[j].GetMeta().GetVersion()
	})
	return tasks
}

func dump(tasks []*shoalpb.Task) string {
	var sb strings.Builder
	for _, t := range tasks {
		fmt.Fprintf(&sb, "\n  %s slot=%d node=%q desired=%v state=%v", t.GetId(), t.GetSlot(), t.GetNodeId(),
			t.GetDesiredState(), t.GetStatus().GetState())
	}
	return sb.String()
}

// waitFor polls the service's tasks until cond holds; it fails the test
// with what cond reports otherwise.
func (h *harness) waitFor(serviceID string, cond func([]*shoalpb.Task) error) []*shoalpb.Task {
	h.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		tasks := h.tasks(serviceID)
		err := cond(tasks)
		if err == nil {
			return tasks
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%v; tasks:%s", err, dump(tasks))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runningSlots expects exactly one runnable task in each of slots 1..n
// and no other runnable task.
func runningSlots(n uint64) func([]*shoalpb.Task) error {
	return func(tasks []*shoalpb.Task) error {
		count := make(map[uint64]int)
		for _, t := range tasks {
			if t.GetDesiredState() == stRunning {
				count[t.GetSlot()]++
			}
		}
		for slot := uint64(1); slot <= n; slot++ {
			if count[slot] != 1 {
				return fmt.Errorf("slot %d has %d runnable tasks, want 1", slot, count[slot])
			}
		}
		if len(count) != int(n) {
			return fmt.Errorf("runnable tasks in %d slots, want %d", len(count), n)
		}
		return nil
	}
}

func TestReplicatedScale(t *testing.T) {
	tests := []struct {
		name string
		from uint64
		to   uint64
		// assigned: the tasks reached a node before the scale, so
		// scaled-down tasks wait for their agent to stop them.
		assigned bool
	}{
		{name: "create 3", from: 0, to: 3},
		{name: "scale up 1 to 4", from: 1, to: 4},
		{name: "scale down 3 to 1 before assignment", from: 3, to: 1},
		{name: "scale down 4 to 2 while running", from: 4, to: 2, assigned: true},
		{name: "scale to 0", from: 2, to: 0, assigned: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.createNode("n1", availActive)
			h.start()
			h.createService("svc", replicatedSpec("web", tc.from))
			tasks := h.waitFor("svc", runningSlots(tc.from))
			if tc.assigned {
				for _, task := range tasks {
					h.report(task.GetId(), "n1", stRunning)
				}
			}
			h.editService("svc", func(s *shoalpb.Service) { s.Spec.GetReplicated().Replicas = tc.to })
			tasks = h.waitFor("svc", runningSlots(tc.to))
			h.waitFor("svc", func(tasks []*shoalpb.Task) error {
				for _, task := range tasks {
					if task.GetSlot() <= tc.to {
						continue
					}
					want := stShutdown // never assigned: nobody else will say so
					if tc.assigned {
						want = stRunning // until the agent reports it stopped
					}
					if task.GetDesiredState() != stShutdown || task.GetStatus().GetState() != want {
						return fmt.Errorf("task in slot %d: desired %v state %v, want desired SHUTDOWN state %v",
							task.GetSlot(), task.GetDesiredState(), task.GetStatus().GetState(), want)
					}
				}
				return nil
			})
			var version uint64
			h.s.View(func(tx store.ReadTx) { version = tx.GetService("svc").GetMeta().GetVersion() })
			for _, task := range tasks {
				if task.GetDesiredState() != stRunning || task.GetSlot() <= tc.from {
					continue
				}
				// A task created by this scale-up carries the service.
				if task.GetServiceName() != "web" || task.GetServiceVersion() != version ||
					task.GetSpec().GetContainer().GetImage() != "busybox" || task.GetStatus().GetState() != stNew {
					t.Errorf("new task %s: name %q version %d image %q state %v; want web, %d, busybox, NEW",
						task.GetId(), task.GetServiceName(), task.GetServiceVersion(),
						task.GetSpec().GetContainer().GetImage(), task.GetStatus().GetState(), version)
				}
			}
		})
	}
}

// slotTask returns the runnable task of a slot, or nil.
func slotTask(tasks []*shoalpb.Task, slot uint64) *shoalpb.Task {
	for _, t := range tasks {
		if t.GetSlot() == slot && t.GetDesiredState() == stRunning {
			return t
		}
	}
	return nil
}

func TestRestartReplacesInSameSlot(t *testing.T) {
	tests := []struct {
		name string
		// finish makes slot 2's task finish, given the harness.
		finish    func(h *harness, task *shoalpb.Task)
		wantState shoalpb.TaskState
	}{
		{
			name:      "failed",
			finish:    func(h *harness, task *shoalpb.Task) { h.report(task.GetId(), "n1", stFailed) },
			wantState: stFailed,
		},
		{
			name:      "completed",
			finish:    func(h *harness, task *shoalpb.Task) { h.report(task.GetId(), "n1", stComplete) },
			wantState: stComplete,
		},
		{
			name: "node removed",
			finish: func(h *harness, task *shoalpb.Task) {
				h.update(func(tx store.ReadTx, b *store.Batch) error {
					b.DeleteNode("n1", 0)
					return nil
				})
			},
			wantState: stOrphaned,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.createNode("n1", availActive)
			h.createNode("n2", availActive)
			h.start()
			h.createService("svc", replicatedSpec("web", 3))
			tasks := h.waitFor("svc", runningSlots(3))
			// Slot 2 runs on n1, the others on n2.
			for _, task := range tasks {
				node := "n2"
				if task.GetSlot() == 2 {
					node = "n1"
				}
				h.report(task.GetId(), node, stRunning)
			}
			old := slotTask(tasks, 2)
			tc.finish(h, old)

			tasks = h.waitFor("svc", func(tasks []*shoalpb.Task) error {
				if err := runningSlots(3)(tasks); err != nil {
					return err
				}
				if slotTask(tasks, 2).GetId() == old.GetId() {
					return fmt.Errorf("slot 2 still runs the finished task")
				}
				return nil
			})
			for _, task := range tasks {
				if task.GetId() != old.GetId() {
					continue
				}
				if task.GetDesiredState() != stShutdown || task.GetStatus().GetState() != tc.wantState {
					t.Errorf("finished task: desired %v state %v, want SHUTDOWN and %v",
						task.GetDesiredState(), task.GetStatus().GetState(), tc.wantState)
				}
			}
			if n := len(tasks); n != 4 {
				t.Errorf("service has %d tasks, want 4 (3 runnable + the finished one):%s", n, dump(tasks))
			}
		})
	}
}

func TestServiceRemovedTasksReaped(t *testing.T) {
	for _, controlAPISetsRemove := range []bool{true, false} {
		t.Run(fmt.Sprintf("control API sets REMOVE=%v", controlAPISetsRemove), func(t *testing.T) {
			h := newHarness(t)
			h.createNode("n1", availActive)
			h.start()
			h.createService("svc", replicatedSpec("web", 3))
			tasks := h.waitFor("svc", runningSlots(3))
			// Slots 1 and 2 run on n1; slot 3 never got a node.
			h.report(slotTask(tasks, 1).GetId(), "n1", stRunning)
			h.report(slotTask(tasks, 2).GetId(), "n1", stRunning)

			h.update(func(tx store.ReadTx, b *store.Batch) error {
				b.DeleteService("svc", 0)
				if controlAPISetsRemove {
					for _, task := range tx.TasksByService("svc") {
						task = proto.Clone(task).(*shoalpb.Task)
						task.DesiredState = stRemove
						b.UpdateTask(task)
					}
				}
				return nil
			})
			// The unassigned task goes at once; running ones wait for
			// their agent.
			tasks = h.waitFor("svc", func(tasks []*shoalpb.Task) error {
				if len(tasks) != 2 {
					return fmt.Errorf("%d tasks left, want the 2 running ones", len(tasks))
				}
				for _, task := range tasks {
					if task.GetDesiredState() != stRemove || task.GetStatus().GetState() != stRunning {
						return fmt.Errorf("task %s desired %v state %v, want REMOVE and RUNNING",
							task.GetId(), task.GetDesiredState(), task.GetStatus().GetState())
					}
				}
				return nil
			})
			h.report(tasks[0].GetId(), "", stShutdown)
			h.waitFor("svc", func(tasks []*shoalpb.Task) error {
				if len(tasks) != 1 {
					return fmt.Errorf("%d tasks left, want 1 after one reported SHUTDOWN", len(tasks))
				}
				return nil
			})
			h.report(tasks[1].GetId(), "", stShutdown)
			h.waitFor("svc", func(tasks []*shoalpb.Task) error {
				if len(tasks) != 0 {
					return fmt.Errorf("%d tasks left, want none", len(tasks))
				}
				return nil
			})
		})
	}
}

func TestTaskHistoryLimit(t *testing.T) {
	tests := []struct {
		name     string
		limit    int64 // cluster setting; 0 = no cluster object
		failures int
		want     int // finished tasks kept in the slot
	}{
		{name: "default limit", limit: 0, failures: DefaultTaskHistoryLimit + 2, want: DefaultTaskHistoryLimit},
		{name: "limit 2", limit: 2, failures: 4, want: 2},
		{name: "below the limit", limit: 3, failures: 2, want: 2},
		{name: "negative keeps all", limit: -1, failures: 7, want: 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if tc.limit != 0 {
				h.update(func(_ store.ReadTx, b *store.Batch) error {
					b.CreateCluster(&shoalpb.Cluster{Id: "c", Spec: &shoalpb.ClusterSpec{TaskHistoryLimit: tc.limit}})
					return nil
				})
			}
			h.createNode("n1", availActive)
			h.start()
			h.createService("svc", replicatedSpec("web", 1))
			var failed []string
			for range tc.failures {
				tasks := h.waitFor("svc", runningSlots(1))
				task := slotTask(tasks, 1)
				h.report(task.GetId(), "n1", stFailed)
				failed = append(failed, task.GetId())
				h.waitFor("svc", func(tasks []*shoalpb.Task) error {
					if slotTask(tasks, 1).GetId() == task.GetId() {
						return fmt.Errorf("failed task %s not replaced", task.GetId())
					}
					return nil
				})
			}
			tasks := h.waitFor("svc", func(tasks []*shoalpb.Task) error {
				if got := len(tasks) - 1; got != tc.want {
					return fmt.Errorf("%d finished tasks kept, want %d", got, tc.want)
				}
				return nil
			})
			// The newest failures are the ones kept.
			kept := make(map[string]bool)
			for _, task := range tasks {
				kept[task.GetId()] = true
			}
			for i, id := range failed {
				if wantKept := i >= len(failed)-tc.want; kept[id] != wantKept {
					t.Errorf("failure %d (%s) kept=%v, want %v", i, id, kept[id], wantKept)
				}
			}
		})
	}
}

func TestSpecChangeReplacesTasks(t *testing.T) {
	h := newHarness(t)
	h.createNode("n1", availActive)
	h.start()
	h.createService("svc", replicatedSpec("web", 2))
	for _, task := range h.waitFor("svc", runningSlots(2)) {
		h.report(task.GetId(), "n1", stRunning)
	}
	h.editService("svc", func(s *shoalpb.Service) { s.Spec.Container.Image = "busybox:2" })
	h.waitFor("svc", func(tasks []*shoalpb.Task) error {
		if err := runningSlots(2)(tasks); err != nil {
			return err
		}
		for _, task := range tasks {
			image := task.GetSpec().GetContainer().GetImage()
			if (task.GetDesiredState() == stRunning) != (image == "busybox:2") {
				return fmt.Errorf("task %s desired %v runs %q", task.GetId(), task.GetDesiredState(), image)
			}
		}
		return nil
	})
}

func TestGlobalService(t *testing.T) {
	h := newHarness(t)
	h.createNode("n1", availActive)
	h.createNode("n2", availActive)
	h.createNode("n3", availDrain)
	h.start()
	h.createService("svc", &shoalpb.ServiceSpec{
		Name:      "agent",
		Container: &shoalpb.ContainerSpec{Image: "busybox"},
		Mode:      &shoalpb.ServiceSpec_Global{Global: &shoalpb.GlobalService{}},
	})
	onNodes := func(want ...string) func([]*shoalpb.Task) error {
		return func(tasks []*shoalpb.Task) error {
			var got []string
			for _, t := range tasks {
				if t.GetDesiredState() == stRunning {
					got = append(got, t.GetNodeId())
				}
			}
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(want, ",") {
				return fmt.Errorf("runnable tasks on %v, want %v", got, want)
			}
			return nil
		}
	}
	h.waitFor("svc", onNodes("n1", "n2"))

	h.createNode("n4", availActive)
	h.waitFor("svc", onNodes("n1", "n2", "n4"))

	h.update(func(tx store.ReadTx, b *store.Batch) error {
		n := proto.Clone(tx.GetNode("n1")).(*shoalpb.Node)
		n.Spec.Availability = availDrain
		b.UpdateNode(n)
		return nil
	})
	h.waitFor("svc", onNodes("n2", "n4"))
}

func TestAssignedTaskStateLeftToAgent(t *testing.T) {
	// A task assigned to a node but not yet accepted, desired SHUTDOWN:
	// the orchestrator must leave its state to the agent.
	h := newHarness(t)
	h.createNode("n1", availActive)
	h.start()
	h.createService("svc", replicatedSpec("web", 1))
	task := slotTask(h.waitFor("svc", runningSlots(1)), 1)
	h.report(task.GetId(), "n1", stAssigned)
	h.editService("svc", func(s *shoalpb.Service) { s.Spec.GetReplicated().Replicas = 0 })
	h.waitFor("svc", func(tasks []*shoalpb.Task) error {
		if len(tasks) != 1 || tasks[0].GetDesiredState() != stShutdown {
			return fmt.Errorf("want the one task desired SHUTDOWN")
		}
		if st := tasks[0].GetStatus().GetState(); st != stAssigned {
			return fmt.Errorf("assigned task state %v, want it left ASSIGNED", st)
		}
		return nil
	})
}
