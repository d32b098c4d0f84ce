package manager

import (
	"context"
	"errors"
	"fmt"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/shoal-project/shoal/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// ErrLeadershipMoved is returned by a call this manager could not finish
// because it handed leadership over to let the call proceed (demoting the
// leader): the caller sends it again to the new leader.
var ErrLeadershipMoved = errors.New("leadership moved to another manager: send the call to the new leader")

// SetNodeRole promotes or demotes a node; it runs on the leader.
//
// A promotion only records the desired role: the node learns it on its
// session, gets a manager certificate and joins Raft itself. A demotion
// removes the node from the Raft group first (refused when the remaining
// managers would lack a quorum; when the node is this leader, leadership is
// handed to another manager first and ErrLeadershipMoved returned), then records it as a worker; the node
// learns it on its session and turns into a worker.
func (m *Manager) SetNodeRole(ctx context.Context, req *shoalpb.SetNodeRoleRequest) (*shoalpb.SetNodeRoleResponse, error) {
	resp, err := m.control.GetNode(ctx, &shoalpb.GetNodeRequest{Node: req.GetNode()})
	if err != nil {
		return nil, err
	}
	n := resp.GetNode()
	name := n.GetDescription().GetHostname()
	switch req.GetRole() {
	case shoalpb.NodeRole_NODE_ROLE_MANAGER:
		if n.GetRole() == shoalpb.NodeRole_NODE_ROLE_MANAGER {
			return nil, status.Errorf(codes.FailedPrecondition, "node %s is already a manager", name)
		}
	case shoalpb.NodeRole_NODE_ROLE_WORKER:
		if n.GetRole() != shoalpb.NodeRole_NODE_ROLE_MANAGER {
			return nil, status.Errorf(codes.FailedPrecondition, "node %s is not a manager", name)
		}
		raftID := n.GetManagerStatus().GetRaftId()
		if voters, alive := m.remainingManagers(n.GetId()); alive < voters/2+1 {
			return nil, status.Errorf(codes.FailedPrecondition, "demoting %s would leave the managers without a quorum: %d of the %d remaining managers are up, %d needed; bring the others back first", name, alive, voters, voters/2+1)
		}
		if raftID == m.cfg.RaftID {
			// The leader cannot remove itself and keep serving: hand
			// leadership over first; the daemon then sends the call on
			// to the new leader, which removes this manager.
			to, err := m.node.TransferLeadership(ctx)
			if err != nil {
				return nil, status.Errorf(codes.Unavailable, "demote %s, the leader: hand leadership to another manager: %v", name, err)
			}
			m.logger.Info("leadership handed over for a demotion", "node", n.GetId(), "to", fmt.Sprintf("%x", to))
			return nil, ErrLeadershipMoved
		}
		if err := m.node.RemoveMember(ctx, raftID); err != nil {
			if errors.Is(err, raft.ErrQuorumRisk) {
				return nil, status.Errorf(codes.FailedPrecondition, "demoting %s would leave the managers without a quorum: bring the unreachable managers back first", name)
			}
			if !errors.Is(err, raft.ErrUnknownMember) {
				return nil, status.Errorf(codes.Unavailable, "remove %s from the managers: %v", name, err)
			}
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "invalid role %v: expected worker or manager", req.GetRole())
	}
	err = m.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		cur := tx.GetNode(n.GetId())
		if cur == nil {
			return status.Errorf(codes.NotFound, "node %s is gone", name)
		}
		cur = proto.Clone(cur).(*shoalpb.Node)
		if cur.Spec == nil {
			cur.Spec = &shoalpb.NodeSpec{}
		}
		cur.Spec.DesiredRole = req.GetRole()
		if req.GetRole() == shoalpb.NodeRole_NODE_ROLE_WORKER {
			cur.Role = shoalpb.NodeRole_NODE_ROLE_WORKER
			cur.ManagerStatus = nil
		}
		b.UpdateNode(cur)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("record the role of %s: %w", name, err)
	}
	out, err := m.control.GetNode(ctx, &shoalpb.GetNodeRequest{Node: n.GetId()})
	if err != nil {
		return nil, err
	}
	m.logger.Info("node role changed", "node", n.GetId(), "role", req.GetRole())
	return &shoalpb.SetNodeRoleResponse{Node: out.GetNode()}, nil
}

// remainingManagers counts the managers left after removing one, and how
// many of them the cluster sees up (this one, and those with a live
// session). Raft's own check (RecentActive) lags a dead manager by up to an
// election timeout; a session ends the moment its daemon dies, so this
// catches a demotion right after a manager died.
func (m *Manager) remainingManagers(removed string) (voters, alive int) {
	m.store.View(func(tx store.ReadTx) {
		for _, n := range tx.ListNodes() {
			if n.GetRole() != shoalpb.NodeRole_NODE_ROLE_MANAGER || n.GetId() == removed {
				continue
			}
			voters++
			if n.GetId() == m.cfg.NodeID || n.GetStatus().GetState() == shoalpb.NodeState_NODE_STATE_READY {
				alive++
			}
		}
	})
	return voters, alive
}
