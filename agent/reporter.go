package agent

import (
	"context"
	"sync"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// reportBatchDelay lets a burst of status changes (a task going ACCEPTED,
// PREPARING, STARTING in a few milliseconds) leave as one request, without
// delaying a lone change noticeably.
const reportBatchDelay = 20 * time.Millisecond

// reportRetryDelay is the pause after a failed send before trying again.
const reportRetryDelay = 500 * time.Millisecond

// reporter keeps the latest unacknowledged status of each task and sends
// them to the dispatcher in batches. A status survives a broken session and
// is sent on the next one.
type reporter struct {
	notify chan struct{} // buffered 1

	mu      sync.Mutex // guards following
	pending map[string]*shoalpb.TaskStatus
}

func newReporter() *reporter {
	return &reporter{notify: make(chan struct{}, 1), pending: make(map[string]*shoalpb.TaskStatus)}
}

func (r *reporter) set(taskID string, st *shoalpb.TaskStatus) {
	r.mu.Lock()
	r.pending[taskID] = st
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// forget drops a task's pending status: the task no longer exists.
func (r *reporter) forget(taskID string) {
	r.mu.Lock()
	delete(r.pending, taskID)
	r.mu.Unlock()
}

func (r *reporter) take() []*shoalpb.TaskStatusUpdate {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*shoalpb.TaskStatusUpdate, 0, len(r.pending))
	for id, st := range r.pending {
		out = append(out, &shoalpb.TaskStatusUpdate{TaskId: id, Status: st})
	}
	clear(r.pending)
	return out
}

// putBack returns unsent updates unless a newer status arrived meanwhile.
func (r *reporter) putBack(updates []*shoalpb.TaskStatusUpdate) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, u := range updates {
		if _, ok := r.pending[u.TaskId]; !ok {
			r.pending[u.TaskId] = u.Status
		}
	}
}

// run sends pending statuses with send until ctx ends or send fails; a
// failed batch stays pending for the next session.
func (r *reporter) run(ctx context.Context, send func(context.Context, []*shoalpb.TaskStatusUpdate) error) error {
	for {
		r.mu.Lock()
		n := len(r.pending)
		r.mu.Unlock()
		if n == 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-r.notify:
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(reportBatchDelay):
		}
		updates := r.take()
		if len(updates) == 0 {
			continue
		}
		if err := send(ctx, updates); err != nil {
			r.putBack(updates)
			return err
		}
	}
}
