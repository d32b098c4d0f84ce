// Package allocator gives new tasks the cluster resources they need before
// they can be placed, and moves them from NEW to PENDING: an address and
// MAC on each overlay network of the task's service (see package ipam;
// services' virtual IPs are allocated by the control API with the service).
// A task whose network has no free address stays NEW and says so.
//
// The allocator runs on the leader only: Run watches the store and writes
// through store.Update, so a stale view is refused by optimistic concurrency
// and retried.
package allocator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/shoal-project/shoal/manager/ipam"
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	// MaxBatch bounds the tasks written in one store.Update: one Raft entry
	// per batch, kept well under the transport's message size even when a
	// service is scaled to thousands of replicas.
	MaxBatch = 200
	// maxConflictRetries is how often a batch is re-read and retried after
	// a conflict (another component wrote one of its tasks first)
	// before the allocator waits for retryDelay instead.
	maxConflictRetries = 3
	// retryDelay is how long to wait after a failed write (lost leadership,
	// proposal timeout) before a full resync: long enough not to spin,
	// short next to the ~1 s it takes a new task to start.
	retryDelay = time.Second
	// allocatedMessage is the status message of an allocated task.
	allocatedMessage = "allocated"
)

// Allocator moves NEW tasks to PENDING. Create it with New, run it with Run.
type Allocator struct {
	store  *store.Store
	logger *slog.Logger
	now    func() time.Time
}

// New returns an allocator over s. A nil logger discards logs.
func New(s *store.Store, logger *slog.Logger) *Allocator {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Allocator{store: s, logger: logger, now: time.Now}
}

// Run allocates every NEW task in the store, then every task created or
// reset to NEW later, until ctx ends; it then returns nil. When the store's
// watch closes (the allocator fell behind) it resyncs from a full view.
func (a *Allocator) Run(ctx context.Context) error {
	// retry fires once after a failed write; stopped until then. (Go
	// 1.23+ timers: a stopped timer's channel never delivers a stale tick.)
	retry := time.NewTimer(retryDelay)
	retry.Stop()
	defer retry.Stop()

	for ctx.Err() == nil {
		a.sync(ctx, retry)
	}
	return nil
}

// sync allocates from a full view, then follows the store's watch until it
// closes, ctx ends or retry fires.
func (a *Allocator) sync(ctx context.Context, retry *time.Timer) {
	// The watch lives as long as this sync, not as long as Run.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Watch before reading the view so nothing written in between is
	// missed; seeing a task in both is harmless.
	events := a.store.Watch(wctx)
	if err := a.allocate(ctx, a.newTasks()); err != nil {
		a.logger.Warn("allocate tasks", "err", err)
		retry.Reset(retryDelay)
	}
	a.follow(ctx, events, retry)
}

// follow handles watch events until the watch closes, ctx ends or retry
// fires.
func (a *Allocator) follow(ctx context.Context, events <-chan store.Event, retry *time.Timer) {
	for {
		var ids []string
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			ids = appendNew(ids, ev)
		}
		// Take whatever else is already queued, so a burst (a service
		// scaled to 100) becomes one write.
	drain:
		for len(ids) < MaxBatch {
			select {
			case ev, ok := <-events:
				if !ok {
					break drain
				}
				ids = appendNew(ids, ev)
			default:
				break drain
			}
		}
		if err := a.allocate(ctx, ids); err != nil {
			if ctx.Err() != nil {
				return
			}
			a.logger.Warn("allocate tasks", "err", err)
			retry.Reset(retryDelay)
		}
	}
}

// appendNew appends the event's task id when it is a task that needs
// allocating.
func appendNew(ids []string, ev store.Event) []string {
	t, ok := ev.Object.(*shoalpb.Task)
	if !ok || ev.Kind == store.EventDelete || !needsAllocation(t) {
		return ids
	}
	return append(ids, t.GetId())
}

// needsAllocation reports whether t is NEW and still meant to run.
func needsAllocation(t *shoalpb.Task) bool {
	return t.GetStatus().GetState() == shoalpb.TaskState_TASK_STATE_NEW &&
		t.GetDesiredState() <= shoalpb.TaskState_TASK_STATE_RUNNING
}

// newTasks returns the ids of every task that needs allocating.
func (a *Allocator) newTasks() []string {
	var ids []string
	a.store.View(func(tx store.ReadTx) {
		for _, t := range tx.ListTasks() {
			if needsAllocation(t) {
				ids = append(ids, t.GetId())
			}
		}
	})
	return ids
}

// allocate moves the given tasks to PENDING, MaxBatch per write. Tasks that
// changed meanwhile are re-read; those no longer needing allocation are
// skipped.
func (a *Allocator) allocate(ctx context.Context, ids []string) error {
	for len(ids) > 0 {
		n := min(len(ids), MaxBatch)
		chunk := ids[:n]
		ids = ids[n:]
		var err error
		for attempt := 0; attempt <= maxConflictRetries; attempt++ {
			err = a.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
				// An id can be queued twice (created, then updated):
				// write it once.
				seen := make(map[string]bool, len(chunk))
				var usage map[string]*ipam.AddrSet // built on first need
				for _, id := range chunk {
					t := tx.GetTask(id)
					if seen[id] || t == nil || !needsAllocation(t) {
						continue
					}
					seen[id] = true
					t = proto.Clone(t).(*shoalpb.Task)
					if len(t.GetSpec().GetNetworks()) > 0 && usage == nil {
						usage = ipam.Usage(tx.ListNetworks(), tx.ListServices(), tx.ListTasks())
					}
					if err := attach(t, usage); err != nil {
						// Wait, saying why; written only when the reason
						// changes, so waiting costs no writes.
						if msg := "waiting: " + err.Error(); t.GetStatus().GetMessage() != msg {
							t.Status = &shoalpb.TaskStatus{Timestamp: timestamppb.New(a.now()), State: shoalpb.TaskState_TASK_STATE_NEW, Message: msg}
							b.UpdateTask(t)
						}
						continue
					}
					t.Status = &shoalpb.TaskStatus{
						Timestamp: timestamppb.New(a.now()),
						State:     shoalpb.TaskState_TASK_STATE_PENDING,
						Message:   allocatedMessage,
					}
					b.UpdateTask(t)
				}
				return nil
			})
			if !conflict(err) {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("move %d tasks to pending: %w", len(chunk), err)
		}
		a.logger.Debug("allocated tasks", "count", len(chunk))
	}
	return nil
}

// attach gives t an address and MAC on each of its service's networks,
// taking them from usage. A task that already has its attachments (a
// retried write) keeps them.
func attach(t *shoalpb.Task, usage map[string]*ipam.AddrSet) error {
	if len(t.GetNetworks()) == len(t.GetSpec().GetNetworks()) {
		return nil
	}
	var out []*shoalpb.NetworkAttachment
	for _, n := range t.GetSpec().GetNetworks() {
		set := usage[n.GetTarget()]
		if set == nil {
			return fmt.Errorf("network %s does not exist", n.GetTarget())
		}
		addr, err := set.Allocate()
		if err != nil {
			return fmt.Errorf("no address for network %s: %w", n.GetTarget(), err)
		}
		out = append(out, &shoalpb.NetworkAttachment{
			NetworkId: n.GetTarget(),
			Addresses: []string{addr.String()},
			Mac:       ipam.MAC(addr.Addr()).String(),
		})
	}
	t.Networks = out
	return nil
}

// conflict reports whether a write was refused because the store changed
// since the read it was computed from (an object updated or deleted
// meanwhile): re-reading and computing again resolves it.
func conflict(err error) bool {
	return errors.Is(err, store.ErrVersionMismatch) || errors.Is(err, store.ErrNotFound)
}
