package dispatcher

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Assignments streams the full set of tasks assigned to the node: once at
// start, then again AssignmentsBatchDelay after any of them changes, is
// added or is deleted. A change of a task's status alone (the agent's own
// report coming back) is not resent. The stream ends with the session.
func (d *Dispatcher) Assignments(req *shoalpb.AssignmentsRequest, stream grpc.ServerStreamingServer[shoalpb.AssignmentsMessage]) error {
	s, err := d.lookup(req.GetNodeId(), req.GetSessionId())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	nodeID := s.nodeID

	// send pushes the current set when it differs from the last one sent
	// (always the first time).
	var sent map[string]*shoalpb.Task
	send := func() error {
		tasks := d.assigned(nodeID)
		if sent != nil && sameAssignments(sent, tasks) {
			return nil
		}
		if err := stream.Send(&shoalpb.AssignmentsMessage{Tasks: tasks}); err != nil {
			return err
		}
		sent = make(map[string]*shoalpb.Task, len(tasks))
		for _, t := range tasks {
			sent[t.GetId()] = t
		}
		return nil
	}

	// flush fires AssignmentsBatchDelay after the first change of a burst;
	// stopped while nothing is pending (Go 1.23+ timers: no stale tick).
	flush := time.NewTimer(AssignmentsBatchDelay)
	flush.Stop()
	defer flush.Stop()

	for {
		// The watch lives until it closes (this stream fell behind);
		// then a fresh watch and a full send resync.
		wctx, cancel := context.WithCancel(ctx)
		events := d.store.Watch(wctx)
		armed := false
		err := send()
		for err == nil {
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-s.ctx.Done():
				err = sessionEnded(s)
			case <-flush.C:
				armed = false
				err = send()
			case ev, ok := <-events:
				if !ok {
					err = errResync
					continue
				}
				t, isTask := ev.Object.(*shoalpb.Task)
				if !armed && isTask && (t.GetNodeId() == nodeID || sent[t.GetId()] != nil) {
					flush.Reset(AssignmentsBatchDelay)
					armed = true
				}
			}
		}
		cancel()
		if !errors.Is(err, errResync) {
			if ctx.Err() != nil {
				return nil // the agent went away
			}
			return err
		}
	}
}

// errResync ends one watch of Assignments' loop; never returned.
var errResync = errors.New("watch closed: resync")

// assigned returns the tasks the node must know about, by id: the ones
// placed on it, until they are deleted.
func (d *Dispatcher) assigned(nodeID string) []*shoalpb.Task {
	var tasks []*shoalpb.Task
	d.store.View(func(tx store.ReadTx) {
		for _, t := range tx.TasksByNode(nodeID) {
			// Global tasks name their node before they are assigned:
			// the agent sees them once placement agrees.
			if t.GetStatus().GetState() >= shoalpb.TaskState_TASK_STATE_ASSIGNED &&
				t.GetDesiredState() <= shoalpb.TaskState_TASK_STATE_REMOVE {
				tasks = append(tasks, t)
			}
		}
	})
	sort.Slice(tasks, func(i, j int) bool { return tasks[i].GetId() < tasks[j].GetId() })
	return tasks
}

// sameAssignments reports whether tasks holds the same tasks as sent with
// the same content apart from status and meta.
func sameAssignments(sent map[string]*shoalpb.Task, tasks []*shoalpb.Task) bool {
	if len(sent) != len(tasks) {
		return false
	}
	for _, t := range tasks {
		old := sent[t.GetId()]
		if old == nil || !sameButStatus(old, t) {
			return false
		}
	}
	return true
}

// sameButStatus compares two versions of a task ignoring Status and Meta.
func sameButStatus(a, b *shoalpb.Task) bool {
	if a.GetMeta().GetVersion() == b.GetMeta().GetVersion() {
		return true
	}
	a, b = proto.Clone(a).(*shoalpb.Task), proto.Clone(b).(*shoalpb.Task)
	a.Meta, a.Status, b.Meta, b.Status = nil, nil, nil, nil
	return proto.Equal(a, b)
}
