package store

import (
	"context"

	"google.golang.org/protobuf/proto"
)

// WatchBuffer is how many events a watcher may lag behind before its
// channel is closed. Large enough to hold several full batches of the
// components' biggest writes (hundreds of tasks each) while a consumer
// works, small enough that a stuck consumer costs little memory; one that
// falls further behind resyncs from View, which is cheaper than replaying.
const WatchBuffer = 10000

// EventKind says what an applied write did to an object.
type EventKind int

const (
	EventCreate EventKind = iota + 1
	EventUpdate
	EventDelete
)

func (k EventKind) String() string {
	switch k {
	case EventCreate:
		return "create"
	case EventUpdate:
		return "update"
	case EventDelete:
		return "delete"
	}
	return "unknown"
}

// Event is one applied write. Object is *shoalpb.Node, *shoalpb.Service,
// *shoalpb.Task or *shoalpb.Cluster: the new value, or for a delete the last
// value. It is the store's own object: proto.Clone it before modifying.
type Event struct {
	Kind   EventKind
	Index  uint64 // raft index of the write
	Object proto.Message
}

// watcher is one Watch call.
type watcher struct {
	ch   chan Event
	stop func() bool // stops the ctx.Done hook
}

// Watch streams the events of every write applied after the call, in order.
// The channel is closed when ctx ends, when the watcher falls more than
// WatchBuffer events behind, or when the store is restored from a snapshot;
// a watcher whose channel closes while its ctx is live must resync from View
// and watch again. Call Watch before View to miss nothing (an event may then
// repeat what the view already shows).
func (s *Store) Watch(ctx context.Context) <-chan Event {
	w := &watcher{ch: make(chan Event, WatchBuffer)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil {
		close(w.ch)
		return w.ch
	}
	s.watchers[w] = struct{}{}
	// AfterFunc runs (in its own goroutine) only once ctx ends, and is
	// stopped when the watcher is dropped first: no goroutine outlives
	// the watcher.
	w.stop = context.AfterFunc(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.dropLocked(w)
	})
	return w.ch
}

// dropLocked unregisters w and closes its channel, once.
func (s *Store) dropLocked(w *watcher) {
	if _, ok := s.watchers[w]; !ok {
		return
	}
	delete(s.watchers, w)
	w.stop()
	close(w.ch)
}

// publishLocked hands one entry's events to every watcher. A watcher without
// room for all of them is dropped rather than given a partial entry: it
// resyncs from a view that has the whole entry.
func (s *Store) publishLocked(events []Event) {
	if len(events) == 0 {
		return
	}
	for w := range s.watchers {
		if cap(w.ch)-len(w.ch) < len(events) {
			s.dropLocked(w)
			continue
		}
		for _, ev := range events {
			w.ch <- ev
		}
	}
}
