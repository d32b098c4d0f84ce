package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// worker keeps one taskRunner per assigned task and removes the containers
// of tasks that are no longer assigned to this host.
type worker struct {
	exec Executor
	rep  *reporter
	now  func() time.Time
	log  *slog.Logger

	wg sync.WaitGroup // runners and removals

	mu       sync.Mutex // guards following
	runners  map[string]*runnerHandle
	removing map[string]bool
}

type runnerHandle struct {
	r      *taskRunner
	cancel context.CancelFunc
}

func newWorker(exec Executor, rep *reporter, now func() time.Time, log *slog.Logger) *worker {
	return &worker{
		exec:     exec,
		rep:      rep,
		now:      now,
		log:      log,
		runners:  make(map[string]*runnerHandle),
		removing: make(map[string]bool),
	}
}

// assign reconciles the host with the full set of tasks the managers assign
// to it. ctx bounds the runners it starts (the agent's lifetime).
func (w *worker) assign(ctx context.Context, tasks []*shoalpb.Task) {
	want := make(map[string]*shoalpb.Task, len(tasks))
	for _, t := range tasks {
		want[t.GetId()] = t
	}

	w.mu.Lock()
	for id, t := range want {
		if h, ok := w.runners[id]; ok {
			h.r.update(t)
			continue
		}
		if w.removing[id] {
			continue
		}
		rctx, cancel := context.WithCancel(ctx)
		r := newTaskRunner(w.exec, t, w.rep.set, w.now, w.log)
		w.runners[id] = &runnerHandle{r: r, cancel: cancel}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			r.run(rctx)
		}()
	}
	for id, h := range w.runners {
		if _, ok := want[id]; !ok {
			delete(w.runners, id)
			w.removeLocked(ctx, id, h)
		}
	}
	w.mu.Unlock()

	// Containers no runner knows of: left by tasks that were deleted while
	// this daemon was down. The assignment set is authoritative.
	ids, err := w.exec.List(ctx)
	if err != nil {
		w.log.Warn("list containers", "err", err)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range ids {
		if _, ok := want[id]; ok {
			continue
		}
		if _, ok := w.runners[id]; ok {
			continue
		}
		w.removeLocked(ctx, id, nil)
	}
}

// removeLocked stops the task's runner, then stops and removes its
// container, in the background.
func (w *worker) removeLocked(ctx context.Context, id string, h *runnerHandle) {
	if w.removing[id] {
		return
	}
	w.removing[id] = true
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		if h != nil {
			h.cancel()
			<-h.r.done
			t, _ := h.r.current()
			if _, err := w.exec.Stop(ctx, t); err != nil && ctx.Err() == nil {
				w.log.Warn("stop removed task", "task", id, "err", err)
			}
		}
		if err := w.exec.Remove(ctx, id); err != nil && ctx.Err() == nil {
			w.log.Warn("remove container", "task", id, "err", err)
		} else if ctx.Err() == nil {
			w.log.Info("removed container", "task", id)
		}
		w.rep.forget(id)
		w.mu.Lock()
		delete(w.removing, id)
		w.mu.Unlock()
	}()
}

// wait blocks until every runner and removal has returned; the caller
// cancels their context first.
func (w *worker) wait() {
	w.wg.Wait()
}
