package dispatcher

import (
	"context"
	"errors"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// refusal carries a gRPC status out of a store.Update callback, whatever
// the store wraps it in.
type refusal struct{ st *status.Status }

func (r *refusal) Error() string { return r.st.Message() }

func refuse(c codes.Code, format string, args ...any) error {
	return &refusal{st: status.Newf(c, format, args...)}
}

// UpdateTaskStatus records the statuses an agent reports, all in one store
// write. Every task must be assigned to the caller's node, else the whole
// request is refused with codes.PermissionDenied. A report that would move a
// task back in its lifecycle is ignored (a late duplicate), as is one for a
// task already deleted.
func (d *Dispatcher) UpdateTaskStatus(ctx context.Context, req *shoalpb.UpdateTaskStatusRequest) (*shoalpb.UpdateTaskStatusResponse, error) {
	s, err := d.lookup(req.GetNodeId(), req.GetSessionId())
	if err != nil {
		return nil, err
	}
	for _, u := range req.GetUpdates() {
		if u.GetStatus() == nil {
			return nil, status.Errorf(codes.InvalidArgument, "task %s: status is required", u.GetTaskId())
		}
		if u.GetStatus().GetState() == shoalpb.TaskState_TASK_STATE_REMOVE {
			return nil, status.Errorf(codes.InvalidArgument, "task %s: REMOVE is a desired state, not one a task reports", u.GetTaskId())
		}
	}
	err = d.update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		// Several reports of one task in a request: each applies to the
		// result of the previous, and the task is written once.
		changed := make(map[string]*shoalpb.Task)
		var order []string
		now := timestamppb.New(d.now())
		for _, u := range req.GetUpdates() {
			t := changed[u.GetTaskId()]
			if t == nil {
				t = tx.GetTask(u.GetTaskId())
			}
			if t == nil {
				continue
			}
			if t.GetNodeId() != s.nodeID {
				return refuse(codes.PermissionDenied, "task %s is not assigned to node %s", u.GetTaskId(), s.nodeID)
			}
			next := u.GetStatus()
			if next.GetState() < t.GetStatus().GetState() {
				continue
			}
			if proto.Equal(withoutTimestamp(next), withoutTimestamp(t.GetStatus())) {
				continue
			}
			if changed[t.GetId()] == nil {
				t = proto.Clone(t).(*shoalpb.Task)
				changed[t.GetId()] = t
				order = append(order, t.GetId())
			}
			t.Status = proto.Clone(next).(*shoalpb.TaskStatus)
			if t.Status.Timestamp == nil {
				t.Status.Timestamp = now
			}
		}
		for _, id := range order {
			b.UpdateTask(changed[id])
		}
		return nil
	})
	var r *refusal
	switch {
	case errors.As(err, &r):
		return nil, r.st.Err()
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "record task status: %v", err)
	}
	return &shoalpb.UpdateTaskStatusResponse{}, nil
}

// withoutTimestamp returns st with no timestamp, to compare content only.
func withoutTimestamp(st *shoalpb.TaskStatus) *shoalpb.TaskStatus {
	if st.GetTimestamp() == nil {
		return st
	}
	c := proto.Clone(st).(*shoalpb.TaskStatus)
	c.Timestamp = nil
	return c
}
