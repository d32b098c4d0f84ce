package agent

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// taskRunner drives one task's container toward the task's desired state
// and reports every state it observes. It never moves a task backwards in
// the lifecycle, and it leaves the container alone when the daemon stops:
// containers outlive the daemon and are adopted again on restart.
type taskRunner struct {
	exec   Executor
	report func(taskID string, st *shoalpb.TaskStatus)
	now    func() time.Time
	log    *slog.Logger

	changed chan struct{} // a new version of the task arrived; buffered 1
	done    chan struct{} // closed when run returns

	mu     sync.Mutex          // guards following
	task   *shoalpb.Task       // latest assignment
	status *shoalpb.TaskStatus // last status reported
}

func newTaskRunner(exec Executor, t *shoalpb.Task, report func(string, *shoalpb.TaskStatus), now func() time.Time, log *slog.Logger) *taskRunner {
	st := proto.Clone(t.GetStatus()).(*shoalpb.TaskStatus)
	if st == nil {
		st = &shoalpb.TaskStatus{}
	}
	return &taskRunner{
		exec:    exec,
		report:  report,
		now:     now,
		log:     log.With("task", t.GetId()),
		changed: make(chan struct{}, 1),
		done:    make(chan struct{}),
		task:    proto.Clone(t).(*shoalpb.Task),
		status:  st,
	}
}

// update hands the runner a newer version of its task.
func (r *taskRunner) update(t *shoalpb.Task) {
	r.mu.Lock()
	r.task = proto.Clone(t).(*shoalpb.Task)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *taskRunner) current() (*shoalpb.Task, *shoalpb.TaskStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.task, r.status
}

func (r *taskRunner) wantsStop() bool {
	t, _ := r.current()
	return t.GetDesiredState() >= shoalpb.TaskState_TASK_STATE_SHUTDOWN
}

// setStatus records and reports a new observed state. It refuses to move
// backwards: a manager must never see RUNNING after FAILED.
func (r *taskRunner) setStatus(state shoalpb.TaskState, msg string, mutate func(*shoalpb.TaskStatus)) {
	r.mu.Lock()
	if state < r.status.GetState() {
		r.mu.Unlock()
		return
	}
	st := proto.Clone(r.status).(*shoalpb.TaskStatus)
	st.State = state
	st.Message = msg
	st.Timestamp = timestamppb.New(r.now())
	if mutate != nil {
		mutate(st)
	}
	r.status = st
	id := r.task.GetId()
	r.mu.Unlock()
	r.log.Debug("task state", "state", state, "message", msg)
	r.report(id, proto.Clone(st).(*shoalpb.TaskStatus))
}

func isTerminal(s shoalpb.TaskState) bool {
	return s >= shoalpb.TaskState_TASK_STATE_COMPLETE
}

// run is the runner's loop. It returns when ctx ends.
func (r *taskRunner) run(ctx context.Context) {
	defer close(r.done)
	if err := r.bringUp(ctx); err != nil && ctx.Err() == nil {
		r.log.Warn("task did not start", "err", err)
	}
	// Whatever happened, keep honouring desired-state changes (a stop
	// request for a task that is still running) until the runner ends.
	for {
		_, st := r.current()
		if r.wantsStop() && !isTerminal(st.GetState()) {
			r.stop(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.changed:
		}
	}
}

// bringUp moves the task from wherever it is to RUNNING, then waits for the
// container to exit or for a stop request.
func (r *taskRunner) bringUp(ctx context.Context) error {
	t, st := r.current()
	if isTerminal(st.GetState()) {
		return nil
	}
	// Adopt whatever an earlier daemon process left behind.
	cs, err := r.exec.Inspect(ctx, t.GetId())
	if err != nil {
		return r.fail(shoalpb.TaskState_TASK_STATE_FAILED, fmt.Errorf("inspect container: %w", err))
	}
	switch cs.State {
	case ContainerRunning:
		if err := r.exec.Adopt(ctx, t); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return r.fail(shoalpb.TaskState_TASK_STATE_FAILED, fmt.Errorf("adopt running container: %w", err))
		}
		r.setStatus(shoalpb.TaskState_TASK_STATE_RUNNING, "started", func(s *shoalpb.TaskStatus) {
			s.Pid = int32(cs.Pid)
			s.ContainerId = t.GetId()
			if len(cs.Addresses) > 0 {
				s.Addresses = cs.Addresses
			}
		})
		return r.waitRunning(ctx)
	case ContainerExited:
		r.exited(cs)
		return nil
	case ContainerAbsent:
		if st.GetState() >= shoalpb.TaskState_TASK_STATE_RUNNING {
			return r.fail(shoalpb.TaskState_TASK_STATE_FAILED, fmt.Errorf("container vanished while the daemon was down"))
		}
	}
	if r.wantsStop() {
		r.setStatus(shoalpb.TaskState_TASK_STATE_SHUTDOWN, "shut down before it started", nil)
		return nil
	}

	r.setStatus(shoalpb.TaskState_TASK_STATE_ACCEPTED, "accepted", nil)
	r.setStatus(shoalpb.TaskState_TASK_STATE_PREPARING, "preparing", nil)
	addrs, err := r.exec.Prepare(ctx, t)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return r.fail(shoalpb.TaskState_TASK_STATE_REJECTED, err)
	}
	if r.wantsStop() {
		r.setStatus(shoalpb.TaskState_TASK_STATE_SHUTDOWN, "shut down before it started", nil)
		return nil
	}
	r.setStatus(shoalpb.TaskState_TASK_STATE_STARTING, "starting", func(s *shoalpb.TaskStatus) {
		s.Addresses = addrs
		s.ContainerId = t.GetId()
	})
	if err := r.exec.Start(ctx, t); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return r.fail(shoalpb.TaskState_TASK_STATE_FAILED, fmt.Errorf("start container: %w", err))
	}
	cs, err = r.exec.Inspect(ctx, t.GetId())
	if err != nil {
		return r.fail(shoalpb.TaskState_TASK_STATE_FAILED, fmt.Errorf("inspect container: %w", err))
	}
	if cs.State == ContainerExited {
		r.exited(cs)
		return nil
	}
	r.setStatus(shoalpb.TaskState_TASK_STATE_RUNNING, "started", func(s *shoalpb.TaskStatus) {
		s.Pid = int32(cs.Pid)
	})
	return r.waitRunning(ctx)
}

// waitRunning waits for the running container to exit, or stops it when
// the task's desired state asks for it.
func (r *taskRunner) waitRunning(ctx context.Context) error {
	t, _ := r.current()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		cs  ContainerStatus
		err error
	}
	exited := make(chan result, 1)
	go func() {
		cs, err := r.exec.Wait(wctx, t.GetId())
		exited <- result{cs, err}
	}()
	for {
		if r.wantsStop() {
			cancel()
			<-exited
			r.stop(ctx)
			return nil
		}
		select {
		case <-ctx.Done():
			cancel()
			<-exited
			return ctx.Err()
		case res := <-exited:
			if res.err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return r.fail(shoalpb.TaskState_TASK_STATE_FAILED, fmt.Errorf("wait for container: %w", res.err))
			}
			r.exited(res.cs)
			return nil
		case <-r.changed:
		}
	}
}

// stop stops the container gracefully and reports SHUTDOWN.
func (r *taskRunner) stop(ctx context.Context) {
	t, _ := r.current()
	cs, err := r.exec.Stop(ctx, t)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("stop task", "err", err)
		r.setStatus(shoalpb.TaskState_TASK_STATE_SHUTDOWN, "shut down", func(s *shoalpb.TaskStatus) {
			s.Err = fmt.Sprintf("stop container: %v", err)
		})
		return
	}
	r.setStatus(shoalpb.TaskState_TASK_STATE_SHUTDOWN, "shut down", func(s *shoalpb.TaskStatus) {
		s.ExitCode = int32(cs.ExitCode)
	})
}

// exited reports a container's own exit: COMPLETE for 0, FAILED otherwise.
func (r *taskRunner) exited(cs ContainerStatus) {
	if r.wantsStop() {
		r.setStatus(shoalpb.TaskState_TASK_STATE_SHUTDOWN, "shut down", func(s *shoalpb.TaskStatus) {
			s.ExitCode = int32(cs.ExitCode)
		})
		return
	}
	if cs.ExitCode == 0 && cs.Signal == "" {
		r.setStatus(shoalpb.TaskState_TASK_STATE_COMPLETE, "finished", func(s *shoalpb.TaskStatus) { s.ExitCode = 0 })
		return
	}
	msg := exitMessage(cs)
	r.setStatus(shoalpb.TaskState_TASK_STATE_FAILED, "failed", func(s *shoalpb.TaskStatus) {
		s.ExitCode = int32(cs.ExitCode)
		s.Err = msg
	})
}

// exitMessage explains a container's failed exit for TaskStatus.Err.
func exitMessage(cs ContainerStatus) string {
	if cs.OOMKilled {
		why := "the host ran out of memory"
		if cs.MemoryLimit > 0 {
			why = "container exceeded its memory limit of " + formatBytes(cs.MemoryLimit)
		}
		if cs.Signal == "SIGKILL" {
			return "OOM killed: " + why
		}
		// The OOM killer took another process; init exited by itself.
		return fmt.Sprintf("task: non-zero exit (%d) after a process was OOM killed: %s", cs.ExitCode, why)
	}
	if cs.Signal != "" {
		return fmt.Sprintf("task: killed by %s (exit %d)", cs.Signal, cs.ExitCode)
	}
	return fmt.Sprintf("task: non-zero exit (%d)", cs.ExitCode)
}

// formatBytes writes n in the largest binary unit it reaches: "32 MiB",
// "1.5 GiB", "512 bytes".
func formatBytes(n int64) string {
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	if n < 1<<10 {
		return fmt.Sprintf("%d bytes", n)
	}
	i := 0
	for i+1 < len(units) && n >= 1<<(10*(i+2)) {
		i++
	}
	unit := int64(1) << (10 * (i + 1))
	if n%unit == 0 {
		return fmt.Sprintf("%d %s", n/unit, units[i])
	}
	return strconv.FormatFloat(float64(n)/float64(unit), 'f', 1, 64) + " " + units[i]
}

func (r *taskRunner) fail(state shoalpb.TaskState, err error) error {
	r.setStatus(state, "failed", func(s *shoalpb.TaskStatus) { s.Err = err.Error() })
	return err
}
