package controlapi

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// UpdateNode changes a node's availability and labels. The role is not
// changed here: promotion and demotion change Raft membership and have
// their own calls.
func (s *Server) UpdateNode(ctx context.Context, req *shoalpb.UpdateNodeRequest) (*shoalpb.UpdateNodeResponse, error) {
	spec := req.GetSpec()
	if spec == nil {
		return nil, status.Error(codes.InvalidArgument, "invalid spec: a node update needs a spec")
	}
	if err := validateLabels(spec.GetLabels()); err != nil {
		return nil, err
	}
	switch spec.GetAvailability() {
	case shoalpb.NodeAvailability_NODE_AVAILABILITY_UNSPECIFIED,
		shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
		shoalpb.NodeAvailability_NODE_AVAILABILITY_PAUSE,
		shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "invalid availability %d: expected active, pause or drain", spec.GetAvailability())
	}
	var id string
	err := s.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		cur, err := lookup("node", req.GetNode(), tx.ListNodes(), hostname)
		if err != nil {
			return err
		}
		id = cur.GetId()
		if v := cur.GetMeta().GetVersion(); req.GetVersion() != v {
			return status.Errorf(codes.FailedPrecondition,
				"node %s was updated since you read it (your version %d, current %d); read it again and retry", hostname(cur), req.GetVersion(), v)
		}
		if r := spec.GetDesiredRole(); r != shoalpb.NodeRole_NODE_ROLE_UNSPECIFIED && r != cur.GetSpec().GetDesiredRole() {
			return status.Errorf(codes.InvalidArgument, "invalid role change for node %s: use `shoal node promote` or `shoal node demote`", hostname(cur))
		}
		n := proto.Clone(cur).(*shoalpb.Node)
		if n.Spec == nil {
			n.Spec = &shoalpb.NodeSpec{}
		}
		if a := spec.GetAvailability(); a != shoalpb.NodeAvailability_NODE_AVAILABILITY_UNSPECIFIED {
			n.Spec.Availability = a
		}
		n.Spec.Labels = spec.GetLabels()
		b.UpdateNode(n)
		return nil
	})
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("update node %s", req.GetNode()), err)
	}
	var n *shoalpb.Node
	s.store.View(func(tx store.ReadTx) { n = tx.GetNode(id) })
	s.logger.Info("node updated", "node", id, "availability", n.GetSpec().GetAvailability())
	return &shoalpb.UpdateNodeResponse{Node: n}, nil
}

// RemoveNode deletes a node from the cluster. A node that is still up is
// refused unless forced: its agent would otherwise keep running tasks the
// managers no longer track. Managers must be demoted first, so that Raft
// membership never changes behind the operator's back.
func (s *Server) RemoveNode(ctx context.Context, req *shoalpb.RemoveNodeRequest) (*shoalpb.RemoveNodeResponse, error) {
	err := s.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		n, err := lookup("node", req.GetNode(), tx.ListNodes(), hostname)
		if err != nil {
			return err
		}
		if n.GetRole() == shoalpb.NodeRole_NODE_ROLE_MANAGER {
			return status.Errorf(codes.FailedPrecondition, "node %s is a manager: demote it first (`shoal node demote %s`)", hostname(n), hostname(n))
		}
		if n.GetStatus().GetState() == shoalpb.NodeState_NODE_STATE_READY && !req.GetForce() {
			return status.Errorf(codes.FailedPrecondition, "node %s is ready: stop shoald on it first, or remove it anyway with --force", hostname(n))
		}
		b.DeleteNode(n.GetId(), n.GetMeta().GetVersion())
		return nil
	})
	if errors.Is(err, store.ErrVersionMismatch) {
		return nil, status.Errorf(codes.Aborted, "node %s changed while being removed; try again", req.GetNode())
	}
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("remove node %s", req.GetNode()), err)
	}
	return &shoalpb.RemoveNodeResponse{}, nil
}

// validateLabels refuses label keys a constraint could not name.
func validateLabels(labels map[string]string) error {
	for k := range labels {
		if k == "" || strings.ContainsAny(k, "= \t\n") {
			return status.Errorf(codes.InvalidArgument, "invalid label key %q: expected a non-empty key without '=' or whitespace", k)
		}
	}
	return nil
}
