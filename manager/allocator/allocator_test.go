package allocator

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// waitTimeout bounds every wait so a broken allocator fails instead of
// hanging the test run.
const waitTimeout = 5 * time.Second

func newStore(t *testing.T) *store.Store {
	t.Helper()
	s := store.New()
	s.SetProposer(store.NewLocalProposer(s))
	return s
}

// start runs an allocator until the test ends.
func start(t *testing.T, s *store.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := New(s, nil).Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

func createTasks(t *testing.T, s *store.Store, tasks ...*shoalpb.Task) {
	t.Helper()
	err := s.Update(context.Background(), func(_ store.ReadTx, b *store.Batch) error {
		for _, task := range tasks {
			b.CreateTask(task)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("create tasks: %v", err)
	}
}

func newTask(id string, desired shoalpb.TaskState) *shoalpb.Task {
	return &shoalpb.Task{
		Id:           id,
		ServiceId:    "svc",
		Slot:         1,
		DesiredState: desired,
		Status:       &shoalpb.TaskStatus{State: shoalpb.TaskState_TASK_STATE_NEW},
	}
}

// waitState polls until the task reaches want, failing after waitTimeout.
func waitState(t *testing.T, s *store.Store, id string, want shoalpb.TaskState) *shoalpb.Task {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		var got *shoalpb.Task
		s.View(func(tx store.ReadTx) { got = tx.GetTask(id) })
		if got.GetStatus().GetState() == want {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s state %v, want %v", id, got.GetStatus().GetState(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAllocator(t *testing.T) {
	const running = shoalpb.TaskState_TASK_STATE_RUNNING
	tests := []struct {
		name string
		// before are created before the allocator starts (the initial
		// resync), after while it runs (the watch).
		before, after []*shoalpb.Task
		pending       []string // tasks that must become PENDING
	}{
		{
			name:    "tasks present at start are allocated",
			before:  []*shoalpb.Task{newTask("t1", running), newTask("t2", running)},
			pending: []string{"t1", "t2"},
		},
		{
			name:    "tasks created later are allocated",
			after:   []*shoalpb.Task{newTask("t1", running), newTask("t2", running), newTask("t3", running)},
			pending: []string{"t1", "t2", "t3"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if len(tc.before) > 0 {
				createTasks(t, s, tc.before...)
			}
			start(t, s)
			if len(tc.after) > 0 {
				createTasks(t, s, tc.after...)
			}
			for _, id := range tc.pending {
				got := waitState(t, s, id, shoalpb.TaskState_TASK_STATE_PENDING)
				if msg := got.GetStatus().GetMessage(); msg != allocatedMessage {
					t.Errorf("task %s message %q, want %q", id, msg, allocatedMessage)
				}
				if got.GetStatus().GetTimestamp() == nil {
					t.Errorf("task %s has no status timestamp", id)
				}
			}
		})
	}
}

func TestAllocatorSkipsTasksNotMeantToRun(t *testing.T) {
	s := newStore(t)
	start(t, s)
	// The shut-down task is created first: once the later one is
	// allocated, the allocator has seen both.
	createTasks(t, s, newTask("stopped", shoalpb.TaskState_TASK_STATE_SHUTDOWN))
	createTasks(t, s, newTask("live", shoalpb.TaskState_TASK_STATE_RUNNING))
	waitState(t, s, "live", shoalpb.TaskState_TASK_STATE_PENDING)
	var got *shoalpb.Task
	s.View(func(tx store.ReadTx) { got = tx.GetTask("stopped") })
	if st := got.GetStatus().GetState(); st != shoalpb.TaskState_TASK_STATE_NEW {
		t.Errorf("task with desired SHUTDOWN moved to %v, want it left NEW", st)
	}
}

func TestAllocatorAllocatesBurstsLargerThanABatch(t *testing.T) {
	s := newStore(t)
	start(t, s)
	var tasks []*shoalpb.Task
	for range MaxBatch*2 + 7 {
		tasks = append(tasks, newTask(store.NewID(), shoalpb.TaskState_TASK_STATE_RUNNING))
	}
	createTasks(t, s, tasks...)
	for _, task := range tasks {
		waitState(t, s, task.GetId(), shoalpb.TaskState_TASK_STATE_PENDING)
	}
}
