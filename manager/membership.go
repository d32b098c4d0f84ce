package manager

import (
	"context"
	"errors"
	"time"

	"github.com/shoal-project/shoal/internal/ca"
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/shoal-project/shoal/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// promoteInterval is how often the leader looks for learners that have
// caught up: a new manager becomes a voter within about this long of
// catching up, and the check costs nothing when there is none.
const promoteInterval = 200 * time.Millisecond

// RegisterRaft registers the Raft transport and the membership service on
// s (the managers' network listener).
func (m *Manager) RegisterRaft(s grpc.ServiceRegistrar) {
	if m.transport != nil {
		m.transport.Register(s, m.node)
	}
	shoalpb.RegisterRaftMembershipServer(s, membershipServer{m: m})
}

// LeaderAddr returns the current leader's address, and whether this
// manager knows it (false also when this manager leads).
func (m *Manager) LeaderAddr() (string, bool) {
	lead := m.node.Leader()
	if lead == 0 || m.node.IsLeader() {
		return "", false
	}
	for _, mem := range m.node.Members() {
		if mem.ID == lead && mem.Addr != "" {
			return mem.Addr, true
		}
	}
	return "", false
}

type membershipServer struct {
	shoalpb.UnimplementedRaftMembershipServer
	m *Manager
}

// JoinRaft adds the calling manager as a learner; promoteLearners makes it
// a voter once it caught up, so a slow joiner never counts towards quorum
// before it can vote usefully.
func (s membershipServer) JoinRaft(ctx context.Context, req *shoalpb.JoinRaftRequest) (*shoalpb.JoinRaftResponse, error) {
	m := s.m
	id, ok := ca.IdentityFromContext(ctx)
	if !ok || id.Role != ca.RoleManager {
		return nil, status.Error(codes.PermissionDenied, "only a host with a manager certificate may join the managers")
	}
	if !m.node.IsLeader() {
		return nil, status.Error(codes.Unavailable, "this manager is not the leader")
	}
	raftID := RaftIDFor(id.NodeID)
	known := false
	for _, mem := range m.node.Members() {
		known = known || mem.ID == raftID
	}
	if !known {
		if err := m.node.AddMember(ctx, raftID, req.GetAddr(), false); err != nil {
			return nil, status.Errorf(codes.Unavailable, "add %s to the managers: %v", id.NodeID, err)
		}
	}
	err := m.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		n := tx.GetNode(id.NodeID)
		if n == nil {
			return status.Errorf(codes.NotFound, "node %s is not registered", id.NodeID)
		}
		n = proto.Clone(n).(*shoalpb.Node)
		n.Role = shoalpb.NodeRole_NODE_ROLE_MANAGER
		n.ManagerStatus = &shoalpb.ManagerStatus{RaftId: raftID, Addr: req.GetAddr(), Reachability: "reachable"}
		b.UpdateNode(n)
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.logger.Info("manager joined as a learner", "node", id.NodeID, "raft", raftID, "addr", req.GetAddr())
	resp := &shoalpb.JoinRaftResponse{RaftId: raftID}
	for _, mem := range m.node.Members() {
		if mem.ID != raftID && mem.Addr != "" {
			resp.Members = append(resp.Members, mem.Addr)
		}
	}
	return resp, nil
}

// promoteLearners runs on the leader: it promotes every learner that has
// caught up.
func (m *Manager) promoteLearners(ctx context.Context) error {
	t := time.NewTicker(promoteInterval)
	defer t.Stop()
	for {
		for _, mem := range m.node.Members() {
			if mem.Voter {
				continue
			}
			err := m.node.PromoteMember(ctx, mem.ID)
			switch {
			case err == nil:
				m.logger.Info("manager promoted to voter", "raft", mem.ID)
			case errors.Is(err, raft.ErrLearnerNotReady), ctx.Err() != nil:
			default:
				m.logger.Warn("promote manager", "raft", mem.ID, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
