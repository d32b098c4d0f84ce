// Package placement assigns pending tasks to nodes. It feeds the pure
// scheduler package from the store (the nodes, the tasks active on each, the
// tasks waiting) and writes its answers back: ASSIGNED with the node, or
// still PENDING with the reason no node fits in the status message, so
// `shoal service ps` says why a task waits. It also tells the scheduler
// where each service failed recently (RecentFailureWindow), so that
// replacements try other nodes first.
//
// Placement runs on the leader only. Passes are debounced: a burst of
// changes (a service scaled to 100, a node flapping) costs one pass.
package placement

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/shoal-project/shoal/scheduler"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// Debounce is how long a pass waits after the change that triggered
	// it, so the changes of a burst are placed together (and spread
	// together): short next to a container start.
	Debounce = 50 * time.Millisecond
	// MaxBatch bounds the tasks written in one store.Update: one Raft entry
	// per batch, kept small when thousands of tasks are placed at once.
	MaxBatch = 200
	// maxConflictRetries is how often a batch is re-read and retried after
	// a conflict before the pass is retried after retryDelay.
	maxConflictRetries = 3
	// retryDelay is how long to wait after a failed write (lost leadership,
	// proposal timeout) before the next pass.
	retryDelay = time.Second
	// RecentFailureWindow is how long a task of a service that failed or
	// was rejected on a node makes that node rank last for the service
	// (scheduler.NodeInfo.RecentFailures). Long enough to span a restart
	// loop, so replacements try other nodes instead of the one where the
	// task keeps failing (a missing image or volume, a port taken outside
	// Shoal); short enough that a node the operator fixed is used again
	// soon without anyone clearing anything. SwarmKit uses the same 5
	// minutes. Measured from the failed status's timestamp, so the skew
	// between the agent's clock and the manager's shifts it a little.
	RecentFailureWindow = 5 * time.Minute
)

// Placer assigns pending tasks to nodes. Create it with New, run it with
// Run.
type Placer struct {
	store  *store.Store
	logger *slog.Logger
	now    func() time.Time

	// waiting is how many tasks the last pass could not place. Only Run's
	// goroutine uses it: while some wait, a task that finishes (freeing
	// its node) also triggers a pass.
	waiting int
}

// New returns a placer over s. A nil logger discards logs.
func New(s *store.Store, logger *slog.Logger) *Placer {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Placer{store: s, logger: logger, now: time.Now}
}

// Run places the pending tasks of the store, then again Debounce after
// every change that can affect placement, until ctx ends; it then returns
// nil. When the store's watch closes (the placer fell behind) it resyncs.
func (p *Placer) Run(ctx context.Context) error {
	// pass fires when a pass is due; stopped while none is (Go 1.23+
	// timers: a stopped timer never delivers a stale tick).
	pass := time.NewTimer(Debounce)
	pass.Stop()
	defer pass.Stop()

	for ctx.Err() == nil {
		p.sync(ctx, pass)
	}
	return nil
}

// sync runs a pass, then follows the store's watch until it closes or ctx
// ends.
func (p *Placer) sync(ctx context.Context, pass *time.Timer) {
	// The watch lives as long as this sync, not as long as Run.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Watch before reading so nothing written in between is missed.
	events := p.store.Watch(wctx)
	p.runPass(ctx, pass)
	armed := false
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if !armed && p.relevant(ev) {
				pass.Reset(Debounce)
				armed = true
			}
		case <-pass.C:
			armed = false
			p.runPass(ctx, pass)
		}
	}
}

// runPass places what it can; after a failure it arms pass for a retry.
func (p *Placer) runPass(ctx context.Context, pass *time.Timer) {
	if err := p.place(ctx); err != nil && ctx.Err() == nil {
		p.logger.Warn("place tasks", "err", err)
		pass.Reset(retryDelay)
	}
}

// relevant reports whether an event can change a placement: a task became
// pending, a node changed, or (while tasks wait) a task left its node.
func (p *Placer) relevant(ev store.Event) bool {
	switch v := ev.Object.(type) {
	case *shoalpb.Node:
		return true
	case *shoalpb.Task:
		if ev.Kind != store.EventDelete && pending(v) {
			return true
		}
		return p.waiting > 0 && (ev.Kind == store.EventDelete || !active(v))
	}
	return false
}

// pending reports whether t waits for a node.
func pending(t *shoalpb.Task) bool {
	return t.GetStatus().GetState() == shoalpb.TaskState_TASK_STATE_PENDING &&
		t.GetDesiredState() <= shoalpb.TaskState_TASK_STATE_RUNNING
}

// active reports whether t occupies its node: assigned there and not
// finished (a task being stopped still runs).
func active(t *shoalpb.Task) bool {
	s := t.GetStatus().GetState()
	return t.GetNodeId() != "" && s >= shoalpb.TaskState_TASK_STATE_ASSIGNED &&
		s <= shoalpb.TaskState_TASK_STATE_RUNNING
}

// place runs one pass: schedule every pending task from one view of the
// store, then write the results.
func (p *Placer) place(ctx context.Context) error {
	var results []scheduler.Result
	now := p.now()
	p.store.View(func(tx store.ReadTx) { results = plan(tx, now) })
	p.waiting = 0
	for _, r := range results {
		if r.NodeID == "" {
			p.waiting++
		}
	}
	for len(results) > 0 {
		n := min(len(results), MaxBatch)
		if err := p.write(ctx, results[:n]); err != nil {
			return err
		}
		results = results[n:]
	}
	return nil
}

// plan schedules the pending tasks of tx. Tasks that already name their
// node (global services) are placed first, each checked against its node
// only: they can run nowhere else, while the other tasks can go around
// them. Then the other tasks, oldest first, over all nodes, with the
// first ones' reservations and ports taken. now tells which failures are
// recent.
func plan(tx store.ReadTx, now time.Time) []scheduler.Result {
	nodes := tx.ListNodes()
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].GetId() < nodes[j].GetId() })
	infos := make([]scheduler.NodeInfo, len(nodes))
	byID := make(map[string]int, len(nodes))
	for i, n := range nodes {
		infos[i] = scheduler.NodeInfo{Node: n, Tasks: make(map[string]*shoalpb.Task)}
		byID[n.GetId()] = i
	}

	var free []*shoalpb.Task
	preset := make(map[string][]*shoalpb.Task)
	for _, t := range tx.ListTasks() {
		switch {
		case active(t):
			if i, ok := byID[t.GetNodeId()]; ok {
				infos[i].Tasks[t.GetId()] = t
			}
		case failedSince(t, now.Add(-RecentFailureWindow)):
			if i, ok := byID[t.GetNodeId()]; ok {
				if infos[i].RecentFailures == nil {
					infos[i].RecentFailures = make(map[string]int)
				}
				infos[i].RecentFailures[t.GetServiceId()]++
			}
		case !pending(t):
		case t.GetNodeId() != "":
			preset[t.GetNodeId()] = append(preset[t.GetNodeId()], t)
		default:
			free = append(free, t)
		}
	}

	var results []scheduler.Result
	nodeIDs := make([]string, 0, len(preset))
	for id := range preset {
		nodeIDs = append(nodeIDs, id)
	}
	sort.Strings(nodeIDs)
	for _, id := range nodeIDs {
		tasks := preset[id]
		sortOldestFirst(tasks)
		i, ok := byID[id]
		if !ok {
			for _, t := range tasks {
				results = append(results, scheduler.Result{TaskID: t.GetId(), Reason: fmt.Sprintf("node %s not found", id)})
			}
			continue
		}
		placed := scheduler.Schedule(infos[i:i+1], tasks)
		for j, r := range placed {
			if r.NodeID != "" {
				infos[i].Tasks[r.TaskID] = tasks[j]
			}
		}
		results = append(results, placed...)
	}

	// Oldest first, so the tasks waiting longest are placed first.
	sortOldestFirst(free)
	return append(results, scheduler.Schedule(infos, free)...)
}

// failedSince reports whether t failed or was rejected on a node at or
// after since.
func failedSince(t *shoalpb.Task, since time.Time) bool {
	s := t.GetStatus()
	if t.GetNodeId() == "" || (s.GetState() != shoalpb.TaskState_TASK_STATE_FAILED && s.GetState() != shoalpb.TaskState_TASK_STATE_REJECTED) {
		return false
	}
	return s.GetTimestamp() != nil && !s.GetTimestamp().AsTime().Before(since)
}

func sortOldestFirst(tasks []*shoalpb.Task) {
	sort.Slice(tasks, func(i, j int) bool {
		a, b := tasks[i].GetMeta().GetCreatedAt().AsTime(), tasks[j].GetMeta().GetCreatedAt().AsTime()
		if c := a.Compare(b); c != 0 {
			return c < 0
		}
		return tasks[i].GetId() < tasks[j].GetId()
	})
}

// write records results in one store.Update, re-reading each task: a task
// that stopped being pending meanwhile is left alone. A waiting task is
// rewritten only when its reason changed.
func (p *Placer) write(ctx context.Context, results []scheduler.Result) error {
	var err error
	for attempt := 0; attempt <= maxConflictRetries; attempt++ {
		assigned := 0
		err = p.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
			now := timestamppb.New(p.now())
			for _, r := range results {
				t := tx.GetTask(r.TaskID)
				if t == nil || !pending(t) {
					continue
				}
				if r.NodeID == "" && t.GetStatus().GetMessage() == r.Reason {
					continue
				}
				t = proto.Clone(t).(*shoalpb.Task)
				if r.NodeID == "" {
					t.Status.Timestamp = now
					t.Status.Message = r.Reason
				} else {
					assigned++
					t.NodeId = r.NodeID
					t.Status = &shoalpb.TaskStatus{
						Timestamp: now,
						State:     shoalpb.TaskState_TASK_STATE_ASSIGNED,
						Message:   "assigned to node " + r.NodeID,
					}
				}
				b.UpdateTask(t)
			}
			return nil
		})
		if err == nil {
			if assigned > 0 {
				p.logger.Debug("assigned tasks", "count", assigned)
			}
			return nil
		}
		if !conflict(err) {
			break
		}
	}
	return fmt.Errorf("write %d placements: %w", len(results), err)
}

// conflict reports whether a write was refused because the store changed
// since the read it was computed from (an object updated or deleted
// meanwhile): re-reading and computing again resolves it.
func conflict(err error) bool {
	return errors.Is(err, store.ErrVersionMismatch) || errors.Is(err, store.ErrNotFound)
}
