// Package orchestrator keeps every service's tasks in line with its spec:
// the replicated orchestrator (one task per slot 1..replicas), the global
// orchestrator (one task per eligible node), restarts (a finished task that
// should be running is replaced in its slot) and the task reaper (tasks of
// removed services deleted once stopped, finished tasks kept per slot only up
// to the cluster's task history limit).
//
// It is one component because all four decide over the same set of tasks:
// each pass reconciles one service in one store.Update, so its decisions are
// consistent and written atomically. It runs on the leader only; a stale
// read is refused by optimistic concurrency and the service reconciled again.
package orchestrator

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
)

const (
	// DefaultTaskHistoryLimit is how many finished tasks are kept per slot
	// (per node for global services) when the cluster does not say: Swarm's
	// default, enough to see why a task keeps failing.
	DefaultTaskHistoryLimit = 5
	// DefaultRestartDelay is how long a slot waits after its task finished
	// before a replacement is created, when the task is the slot's only
	// recent failure: zero, so a crashed container is replaced at once.
	DefaultRestartDelay = 0 * time.Second
	// RestartBackoffBase and RestartBackoffWindow slow down a slot whose
	// tasks keep failing (a crash loop, an image that cannot be pulled):
	// the n-th failure within the window waits base * 2^(n-2), so the
	// managers do not write a new task to Raft every few milliseconds.
	// With the default history of 5 tasks per slot the wait tops out at
	// 4 s, close to Swarm's fixed 5 s restart delay.
	RestartBackoffBase   = 500 * time.Millisecond
	RestartBackoffWindow = time.Minute
	// MaxWritesPerPass bounds the task writes of one store.Update: one
	// Raft entry stays small when a service of thousands of tasks is
	// scaled or removed; the service is reconciled again at once for the
	// rest.
	MaxWritesPerPass = 500
	// maxConflictRetries is how often a service is re-read and reconciled
	// again after a conflict before waiting for retryDelay.
	maxConflictRetries = 3
	// retryDelay is how long to wait after a failed write (lost
	// leadership, proposal timeout) before trying the service again.
	retryDelay = time.Second
)

// Config configures an Orchestrator.
type Config struct {
	// Clock returns the current time (task status timestamps, restart
	// delays); nil means time.Now.
	Clock func() time.Time
	// Logger receives the orchestrator's logs; nil discards them.
	Logger *slog.Logger
}

// Orchestrator reconciles services and their tasks. Create it with New, run
// it with Run.
type Orchestrator struct {
	store  *store.Store
	now    func() time.Time
	logger *slog.Logger
}

// New returns an orchestrator over s.
func New(s *store.Store, cfg Config) *Orchestrator {
	o := &Orchestrator{store: s, now: cfg.Clock, logger: cfg.Logger}
	if o.now == nil {
		o.now = time.Now
	}
	if o.logger == nil {
		o.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o
}

// Run reconciles every service from a full view of the store, then every
// service touched by a later write, until ctx ends; it then returns nil. When
// the store's watch closes (the orchestrator fell behind) it resyncs from a
// full view.
func (o *Orchestrator) Run(ctx context.Context) error {
	// wake fires when a service must be looked at again: after a failed
	// write, or when a restart delay ends. Stopped until then (Go 1.23+
	// timers: a stopped timer never delivers a stale tick).
	wake := time.NewTimer(retryDelay)
	wake.Stop()
	defer wake.Stop()

	for ctx.Err() == nil {
		o.sync(ctx, wake)
	}
	return nil
}

// sync does one full resync, then follows the store's watch until it closes,
// ctx ends or wake fires.
func (o *Orchestrator) sync(ctx context.Context, wake *time.Timer) {
	// The watch lives as long as this sync, not as long as Run.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Watch before reading so nothing written in between is missed.
	events := o.store.Watch(wctx)
	dirty := o.allServices()
	for {
		next := o.reconcile(ctx, dirty)
		dirty = make(map[string]bool)
		if !next.IsZero() {
			wake.Reset(max(next.Sub(o.now()), 0))
		}
		if !o.collect(ctx, events, wake, dirty) {
			return
		}
	}
}

// collect blocks for the next event, then takes every event already queued,
// marking the services they touch in dirty. It returns false when the watch
// closed, ctx ended or wake fired: the caller resyncs everything.
func (o *Orchestrator) collect(ctx context.Context, events <-chan store.Event, wake *time.Timer, dirty map[string]bool) bool {
	select {
	case <-ctx.Done():
		return false
	case <-wake.C:
		return false
	case ev, ok := <-events:
		if !ok {
			return false
		}
		o.mark(ev, dirty)
	}
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return false
			}
			o.mark(ev, dirty)
		default:
			return true
		}
	}
}

// mark records in dirty the services an event may affect.
func (o *Orchestrator) mark(ev store.Event, dirty map[string]bool) {
	switch v := ev.Object.(type) {
	case *shoalpb.Service:
		dirty[v.GetId()] = true
	case *shoalpb.Task:
		dirty[v.GetServiceId()] = true
	case *shoalpb.Node:
		// A removed node orphans its tasks; a node that joins, becomes
		// ready or changes availability changes where global services
		// run.
		o.store.View(func(tx store.ReadTx) {
			for _, t := range tx.TasksByNode(v.GetId()) {
				dirty[t.GetServiceId()] = true
			}
			for _, s := range tx.ListServices() {
				if s.GetSpec().GetGlobal() != nil {
					dirty[s.GetId()] = true
				}
			}
		})
	case *shoalpb.Cluster:
		// The task history limit may have changed.
		for id := range o.allServices() {
			dirty[id] = true
		}
	}
}

// allServices returns the ids of every service and of every service that
// still has tasks (removed services whose tasks are not reaped yet).
func (o *Orchestrator) allServices() map[string]bool {
	ids := make(map[string]bool)
	o.store.View(func(tx store.ReadTx) {
		for _, s := range tx.ListServices() {
			ids[s.GetId()] = true
		}
		for _, t := range tx.ListTasks() {
			ids[t.GetServiceId()] = true
		}
	})
	return ids
}

// reconcile reconciles each dirty service, in id order so runs are
// reproducible. It returns when the next pass is due without an event (a
// restart delay ends, or a failed write is retried), or the zero time.
func (o *Orchestrator) reconcile(ctx context.Context, dirty map[string]bool) time.Time {
	ids := make([]string, 0, len(dirty))
	for id := range dirty {
		ids = append(ids, id)
	}
	sort.Strings(ids)

	var next time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, id := range ids {
		if ctx.Err() != nil {
			return time.Time{}
		}
		wake, err := o.reconcileService(ctx, id)
		if err != nil {
			o.logger.Warn("reconcile service", "service", id, "err", err)
			earliest(o.now().Add(retryDelay))
			continue
		}
		earliest(wake)
	}
	return next
}

// reconcileService brings one service's tasks in line, in as many writes as
// MaxWritesPerPass requires. It returns when the service needs another
// pass (a restart delay ends), or the zero time.
func (o *Orchestrator) reconcileService(ctx context.Context, serviceID string) (time.Time, error) {
	conflicts := 0
	for {
		var p pass
		err := o.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
			p = pass{tx: tx, now: o.now(), serviceID: serviceID}
			p.run()
			p.write(b)
			return nil
		})
		switch {
		case conflict(err) && conflicts < maxConflictRetries:
			conflicts++
			continue
		case err != nil:
			return time.Time{}, fmt.Errorf("reconcile service %s: %w", serviceID, err)
		}
		if p.written > 0 {
			o.logger.Debug("reconciled service", "service", serviceID, "writes", p.written)
		}
		if !p.more {
			return p.wake, nil
		}
	}
}

// conflict reports whether a write was refused because the store changed
// since the read it was computed from (an object updated or deleted
// meanwhile): re-reading and computing again resolves it.
func conflict(err error) bool {
	return errors.Is(err, store.ErrVersionMismatch) || errors.Is(err, store.ErrNotFound)
}
