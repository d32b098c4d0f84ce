package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// fakeExecutor records calls and lets a test decide what containers do.
type fakeExecutor struct {
	mu         sync.Mutex // guards following
	containers map[string]*fakeContainer
	calls      []string
	prepareErr error
	adoptErr   error
}

type fakeContainer struct {
	status ContainerStatus
	exit   chan ContainerStatus // closed-over exit for Wait
}

func newFakeExecutor() *fakeExecutor {
	return &fakeExecutor{containers: map[string]*fakeContainer{}}
}

func (f *fakeExecutor) record(call string) {
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
}

func (f *fakeExecutor) count(call string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == call {
			n++
		}
	}
	return n
}

func (f *fakeExecutor) Prepare(_ context.Context, t *shoalpb.Task) ([]string, error) {
	f.record("prepare " + t.GetId())
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.prepareErr != nil {
		return nil, f.prepareErr
	}
	if _, ok := f.containers[t.GetId()]; !ok {
		f.containers[t.GetId()] = &fakeContainer{status: ContainerStatus{State: ContainerCreated}, exit: make(chan ContainerStatus, 1)}
	}
	return []string{"172.29.0.2/16"}, nil
}

func (f *fakeExecutor) Start(_ context.Context, t *shoalpb.Task) error {
	f.record("start " + t.GetId())
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[t.GetId()]
	if !ok {
		return errors.New("no such container")
	}
	c.status.State = ContainerRunning
	c.status.Pid = 42
	return nil
}

func (f *fakeExecutor) Adopt(_ context.Context, t *shoalpb.Task) error {
	f.record("adopt " + t.GetId())
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.adoptErr
}

func (f *fakeExecutor) Inspect(_ context.Context, id string) (ContainerStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.containers[id]; ok {
		return c.status, nil
	}
	return ContainerStatus{State: ContainerAbsent}, nil
}

func (f *fakeExecutor) Wait(ctx context.Context, id string) (ContainerStatus, error) {
	f.mu.Lock()
	c, ok := f.containers[id]
	f.mu.Unlock()
	if !ok {
		return ContainerStatus{}, errors.New("no such container")
	}
	select {
	case st := <-c.exit:
		c.exit <- st // keep it for later waiters
		return st, nil
	case <-ctx.Done():
		return ContainerStatus{}, ctx.Err()
	}
}

// exit makes a running container exit with code.
func (f *fakeExecutor) exit(id string, code int) {
	f.exitWith(id, ContainerStatus{ExitCode: code})
}

// exitWith makes a running container exit with st.
func (f *fakeExecutor) exitWith(id string, st ContainerStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.containers[id]
	st.State = ContainerExited
	c.status = st
	c.exit <- c.status
}

func (f *fakeExecutor) Stop(_ context.Context, t *shoalpb.Task) (ContainerStatus, error) {
	f.record("stop " + t.GetId())
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[t.GetId()]
	if !ok || c.status.State != ContainerRunning {
		if ok {
			return c.status, nil
		}
		return ContainerStatus{State: ContainerAbsent}, nil
	}
	c.status = ContainerStatus{State: ContainerExited, ExitCode: 143, Signal: "SIGTERM"}
	c.exit <- c.status
	return c.status, nil
}

func (f *fakeExecutor) Remove(_ context.Context, id string) error {
	f.record("remove " + id)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.containers, id)
	return nil
}

func (f *fakeExecutor) List(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id := range f.containers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

// statusLog collects what a runner reports.
type statusLog struct {
	mu     sync.Mutex // guards following
	states map[string][]shoalpb.TaskState
	last   map[string]*shoalpb.TaskStatus
}

func newStatusLog() *statusLog {
	return &statusLog{states: map[string][]shoalpb.TaskState{}, last: map[string]*shoalpb.TaskStatus{}}
}

func (s *statusLog) report(id string, st *shoalpb.TaskStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.states[id] = append(s.states[id], st.GetState())
	s.last[id] = st
}

func (s *statusLog) lastOf(id string) *shoalpb.TaskStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[id]
}

func (s *statusLog) historyOf(id string) []shoalpb.TaskState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]shoalpb.TaskState(nil), s.states[id]...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newTask(id string, observed, desired shoalpb.TaskState) *shoalpb.Task {
	return &shoalpb.Task{
		Id:           id,
		DesiredState: desired,
		Status:       &shoalpb.TaskStatus{State: observed},
		Spec:         &shoalpb.ServiceSpec{Container: &shoalpb.ContainerSpec{Image: "shoal/testapp"}},
	}
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func startRunner(t *testing.T, exec Executor, task *shoalpb.Task, log *statusLog) *taskRunner {
	t.Helper()
	r := newTaskRunner(exec, task, log.report, time.Now, discard)
	ctx, cancel := context.WithCancel(context.Background())
	go r.run(ctx)
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

func TestTaskRunnerLifecycle(t *testing.T) {
	const (
		assigned = shoalpb.TaskState_TASK_STATE_ASSIGNED
		running  = shoalpb.TaskState_TASK_STATE_RUNNING
		shutdown = shoalpb.TaskState_TASK_STATE_SHUTDOWN
	)
	tests := []struct {
		name string
		// setup prepares the executor before the runner starts.
		setup func(f *fakeExecutor)
		task  *shoalpb.Task
		// act drives the scenario once the runner runs.
		act       func(t *testing.T, f *fakeExecutor, r *taskRunner, log *statusLog)
		wantState shoalpb.TaskState
		wantErr   bool
		wantCalls map[string]int
	}{
		{
			name: "assigned task runs, then exits non-zero",
			task: newTask("t1", assigned, running),
			act: func(t *testing.T, f *fakeExecutor, r *taskRunner, log *statusLog) {
				waitFor(t, "running", func() bool { return log.lastOf("t1").GetState() == running })
				f.exit("t1", 3)
			},
			wantState: shoalpb.TaskState_TASK_STATE_FAILED,
			wantErr:   true,
			wantCalls: map[string]int{"prepare t1": 1, "start t1": 1, "adopt t1": 0},
		},
		{
			name: "exit 0 completes",
			task: newTask("t2", assigned, running),
			act: func(t *testing.T, f *fakeExecutor, r *taskRunner, log *statusLog) {
				waitFor(t, "running", func() bool { return log.lastOf("t2").GetState() == running })
				f.exit("t2", 0)
			},
			wantState: shoalpb.TaskState_TASK_STATE_COMPLETE,
		},
		{
			name: "desired shutdown stops the container",
			task: newTask("t3", assigned, running),
			act: func(t *testing.T, f *fakeExecutor, r *taskRunner, log *statusLog) {
				waitFor(t, "running", func() bool { return log.lastOf("t3").GetState() == running })
				r.update(newTask("t3", running, shutdown))
			},
			wantState: shutdown,
			wantCalls: map[string]int{"stop t3": 1},
		},
		{
			name:      "prepare failure rejects with the reason",
			setup:     func(f *fakeExecutor) { f.prepareErr = fmt.Errorf("image nope is not on this host") },
			task:      newTask("t4", assigned, running),
			wantState: shoalpb.TaskState_TASK_STATE_REJECTED,
			wantErr:   true,
		},
		{
			name: "a running container left by an earlier daemon is adopted, not restarted",
			setup: func(f *fakeExecutor) {
				f.containers["t5"] = &fakeContainer{status: ContainerStatus{State: ContainerRunning, Pid: 7}, exit: make(chan ContainerStatus, 1)}
			},
			task:      newTask("t5", running, running),
			wantState: running,
			wantCalls: map[string]int{"prepare t5": 0, "start t5": 0, "adopt t5": 1},
		},
		{
			name: "an adopted container whose ports cannot be published again fails",
			setup: func(f *fakeExecutor) {
				f.containers["t8"] = &fakeContainer{status: ContainerStatus{State: ContainerRunning, Pid: 7}, exit: make(chan ContainerStatus, 1)}
				f.adoptErr = errors.New("publish ports: write nftables table: permission denied")
			},
			task:      newTask("t8", running, running),
			wantState: shoalpb.TaskState_TASK_STATE_FAILED,
			wantErr:   true,
			wantCalls: map[string]int{"adopt t8": 1, "start t8": 0},
		},
		{
			name:      "a running task whose container vanished fails",
			task:      newTask("t6", running, running),
			wantState: shoalpb.TaskState_TASK_STATE_FAILED,
			wantErr:   true,
			wantCalls: map[string]int{"start t6": 0},
		},
		{
			name:      "a task to shut down before it started never starts",
			task:      newTask("t7", assigned, shutdown),
			wantState: shutdown,
			wantCalls: map[string]int{"prepare t7": 0, "start t7": 0},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeExecutor()
			if tc.setup != nil {
				tc.setup(f)
			}
			log := newStatusLog()
			r := startRunner(t, f, tc.task, log)
			if tc.act != nil {
				tc.act(t, f, r, log)
			}
			id := tc.task.GetId()
			waitFor(t, tc.wantState.String(), func() bool { return log.lastOf(id).GetState() == tc.wantState })
			if got := log.lastOf(id).GetErr() != ""; got != tc.wantErr {
				t.Errorf("err %q, want an error: %v", log.lastOf(id).GetErr(), tc.wantErr)
			}
			hist := log.historyOf(id)
			for i := 1; i < len(hist); i++ {
				if hist[i] < hist[i-1] {
					t.Errorf("reported states went backwards: %v", hist)
				}
			}
			for call, n := range tc.wantCalls {
				if got := f.count(call); got != n {
					t.Errorf("%q called %d times, want %d", call, got, n)
				}
			}
		})
	}
}

func TestWorkerRemovesUnassigned(t *testing.T) {
	f := newFakeExecutor()
	// A container left by a task deleted while the daemon was down.
	f.containers["stale"] = &fakeContainer{status: ContainerStatus{State: ContainerRunning}, exit: make(chan ContainerStatus, 1)}
	rep := newReporter()
	w := newWorker(f, rep, time.Now, discard)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); w.wait() }()

	w.assign(ctx, []*shoalpb.Task{newTask("a", shoalpb.TaskState_TASK_STATE_ASSIGNED, shoalpb.TaskState_TASK_STATE_RUNNING)})
	waitFor(t, "stale container removed", func() bool { return f.count("remove stale") == 1 })
	waitFor(t, "assigned task started", func() bool { return f.count("start a") == 1 })

	// The task disappears from the assignments: it is stopped and removed.
	w.assign(ctx, nil)
	waitFor(t, "unassigned task removed", func() bool { return f.count("remove a") == 1 })
	if f.count("stop a") == 0 {
		t.Errorf("task a was removed without being stopped first")
	}
	// Assigning the same set again changes nothing.
	w.assign(ctx, nil)
	time.Sleep(20 * time.Millisecond)
	if n := f.count("remove a"); n != 1 {
		t.Errorf("task a removed %d times, want once", n)
	}
}

func TestReporterKeepsUnsentStatus(t *testing.T) {
	rep := newReporter()
	rep.set("a", &shoalpb.TaskStatus{State: shoalpb.TaskState_TASK_STATE_RUNNING})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failing := func(context.Context, []*shoalpb.TaskStatusUpdate) error { return errors.New("session broke") }
	if err := rep.run(ctx, failing); err == nil {
		t.Fatal("run returned nil after a failed send")
	}
	var got []*shoalpb.TaskStatusUpdate
	done := make(chan struct{})
	go func() {
		_ = rep.run(ctx, func(_ context.Context, u []*shoalpb.TaskStatusUpdate) error {
			got = u
			close(done)
			return errors.New("stop")
		})
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("status was not sent on the next session")
	}
	if len(got) != 1 || got[0].GetTaskId() != "a" || got[0].GetStatus().GetState() != shoalpb.TaskState_TASK_STATE_RUNNING {
		t.Errorf("next session sent %v, want task a RUNNING", got)
	}
}
