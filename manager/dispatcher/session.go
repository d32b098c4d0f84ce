package dispatcher

import (
	"bytes"
	"context"
	"net"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Session registers the node (creating it as an active worker the first
// time), sends the session id, and stays open until the agent goes, a newer
// session of the same node replaces it, its heartbeats stop or the
// dispatcher stops. When the agent goes, the node becomes DISCONNECTED.
func (d *Dispatcher) Session(req *shoalpb.SessionRequest, stream grpc.ServerStreamingServer[shoalpb.SessionMessage]) error {
	nodeID := req.GetNodeId()
	if nodeID == "" {
		return status.Error(codes.InvalidArgument, "session: node_id is required")
	}
	runCtx, err := d.runContext()
	if err != nil {
		return err
	}
	ctx := stream.Context()

	// Register before writing the node, so a session closing or
	// expiring concurrently sees this one and leaves the node READY.
	s := d.register(runCtx, nodeID)
	defer d.endSession(s)

	addr := peerAddr(ctx)
	if addr == "" {
		addr = req.GetDescription().GetAddr()
	}
	node, err := d.registerNode(ctx, req, addr)
	if err != nil {
		return status.Errorf(codes.Unavailable, "session of node %s: record node: %v", nodeID, err)
	}
	d.logger.Info("session opened", "node", nodeID, "session", s.id, "addr", node.GetStatus().GetAddr())
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	events := d.store.Watch(wctx)
	if err := stream.Send(&shoalpb.SessionMessage{SessionId: s.id, Node: node, Managers: d.managerAddrs(), GossipKey: d.gossipKey()}); err != nil {
		return err
	}
	// The node learns of changes to its role (promotion, demotion) on its
	// session: it acts on them itself.
	role, desired := node.GetRole(), node.GetSpec().GetDesiredRole()
	key := d.gossipKey()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.ctx.Done():
			return sessionEnded(s)
		case ev, ok := <-events:
			if !ok {
				events = d.store.Watch(wctx) // fell behind: watch again
				continue
			}
			if c, ok := ev.Object.(*shoalpb.Cluster); ok {
				// A rotated gossip key goes to every agent at once.
				if k := c.GetSecurity().GetGossipKey(); !bytes.Equal(k, key) {
					key = k
					n := d.currentNode(nodeID)
					if n == nil {
						continue
					}
					if err := stream.Send(&shoalpb.SessionMessage{SessionId: s.id, Node: n, Managers: d.managerAddrs(), GossipKey: key}); err != nil {
						return err
					}
				}
				continue
			}
			n, isNode := ev.Object.(*shoalpb.Node)
			if !isNode || n.GetId() != nodeID || ev.Kind == store.EventDelete {
				continue
			}
			if n.GetRole() == role && n.GetSpec().GetDesiredRole() == desired {
				continue
			}
			role, desired = n.GetRole(), n.GetSpec().GetDesiredRole()
			if err := stream.Send(&shoalpb.SessionMessage{SessionId: s.id, Node: n, Managers: d.managerAddrs(), GossipKey: d.gossipKey()}); err != nil {
				return err
			}
		}
	}
}

// register makes a new session the node's current one, ending the
// previous one.
func (d *Dispatcher) register(runCtx context.Context, nodeID string) *session {
	ctx, cancel := context.WithCancelCause(runCtx)
	s := &session{id: store.NewID(), nodeID: nodeID, ctx: ctx, cancel: cancel}
	d.mu.Lock()
	defer d.mu.Unlock()
	s.lastBeat = d.now()
	if old := d.sessions[nodeID]; old != nil {
		old.cancel(errReplaced)
	}
	d.sessions[nodeID] = s
	delete(d.unconfirmed, nodeID)
	delete(d.verdicts, nodeID) // the node answers: gossip's verdict is stale
	return s
}

// endSession forgets s and, if it was still the node's current session
// (the agent went away), marks the node DISCONNECTED.
func (d *Dispatcher) endSession(s *session) {
	d.mu.Lock()
	current := d.sessions[s.nodeID] == s
	if current {
		delete(d.sessions, s.nodeID)
	}
	d.mu.Unlock()
	s.cancel(context.Canceled)
	if !current {
		return
	}
	d.logger.Info("session closed", "node", s.nodeID, "session", s.id)
	// The stream's context is over; the write still belongs to Run.
	runCtx, err := d.runContext()
	if err != nil {
		return // Run ended: the next leader decides about the node
	}
	ctx, cancel := context.WithTimeout(runCtx, nodeWriteTimeout)
	defer cancel()
	err = d.update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		d.addNodeState(tx, b, s.nodeID, shoalpb.NodeState_NODE_STATE_DISCONNECTED, "session closed")
		return nil
	})
	if err != nil && ctx.Err() == nil {
		d.logger.Warn("mark node disconnected", "node", s.nodeID, "err", err)
	}
}

// registerNode records the node as READY at addr with its description, and
// returns it as stored.
func (d *Dispatcher) registerNode(ctx context.Context, req *shoalpb.SessionRequest, addr string) (*shoalpb.Node, error) {
	nodeID := req.GetNodeId()
	err := d.update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		st := &shoalpb.NodeStatus{
			State:       shoalpb.NodeState_NODE_STATE_READY,
			Message:     "session opened",
			Addr:        addr,
			HeartbeatAt: timestamppb.New(d.now()),
		}
		n := tx.GetNode(nodeID)
		if n == nil {
			b.CreateNode(&shoalpb.Node{
				Id: nodeID,
				Spec: &shoalpb.NodeSpec{
					DesiredRole:  shoalpb.NodeRole_NODE_ROLE_WORKER,
					Availability: shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
				},
				Role:        shoalpb.NodeRole_NODE_ROLE_WORKER,
				Description: req.GetDescription(),
				Status:      st,
			})
			return nil
		}
		n = proto.Clone(n).(*shoalpb.Node)
		if req.GetDescription() != nil {
			n.Description = req.GetDescription()
		}
		n.Status = st
		b.UpdateNode(n)
		return nil
	})
	if err != nil {
		return nil, err
	}
	var node *shoalpb.Node
	d.store.View(func(tx store.ReadTx) { node = tx.GetNode(nodeID) })
	return node, nil
}

// peerAddr returns the host the call comes from ("" when unknown): the
// agent's source port is ephemeral and of no use to anyone.
func peerAddr(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil || p.Addr.Network() == "unix" {
		return ""
	}
	a := p.Addr.String()
	if host, _, err := net.SplitHostPort(a); err == nil {
		return host
	}
	return a
}

// Heartbeat keeps the session alive and tells the agent when to send the
// next one. An unknown or ended session is codes.NotFound: the agent must
// open a new one.
func (d *Dispatcher) Heartbeat(_ context.Context, req *shoalpb.HeartbeatRequest) (*shoalpb.HeartbeatResponse, error) {
	s, err := d.lookup(req.GetNodeId(), req.GetSessionId())
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	s.lastBeat = d.now()
	delete(d.verdicts, s.nodeID) // the node answers: gossip's verdict is stale
	d.mu.Unlock()
	return &shoalpb.HeartbeatResponse{Period: durationpb.New(d.period)}, nil
}

// managerAddrs lists the managers' addresses, for agents to fail over to.
func (d *Dispatcher) managerAddrs() []string {
	var addrs []string
	d.store.View(func(tx store.ReadTx) {
		for _, n := range tx.ListNodes() {
			if a := n.GetManagerStatus().GetAddr(); n.GetRole() == shoalpb.NodeRole_NODE_ROLE_MANAGER && a != "" {
				addrs = append(addrs, a)
			}
		}
	})
	return addrs
}

// gossipKey returns the cluster's gossip key, nil when it has none.
func (d *Dispatcher) gossipKey() []byte {
	var key []byte
	d.store.View(func(tx store.ReadTx) { key = tx.GetCluster().GetSecurity().GetGossipKey() })
	return key
}

// currentNode returns the stored node, nil when it is gone.
func (d *Dispatcher) currentNode(id string) *shoalpb.Node {
	var n *shoalpb.Node
	d.store.View(func(tx store.ReadTx) { n = tx.GetNode(id) })
	return n
}
