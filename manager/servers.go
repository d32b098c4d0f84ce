package manager

import (
	"context"

	"github.com/shoal-project/shoal/manager/nodeca"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// Control returns the manager's Control API implementation, for a daemon
// that serves it behind its own socket.
func (m *Manager) Control() shoalpb.ControlServer { return m.control }

// Dispatcher returns the manager's Dispatcher implementation.
func (m *Manager) Dispatcher() shoalpb.DispatcherServer { return m.dispatcher }

// NodeCA returns the manager's certificate authority for nodes.
func (m *Manager) NodeCA() *nodeca.Server { return m.nodeCA }

// ReadIndex waits until this manager has applied everything committed
// before the call, as confirmed by a quorum: a read served after it is
// linearizable.
func (m *Manager) ReadIndex(ctx context.Context) error { return m.node.ReadIndex(ctx) }

// NodeUnreachable passes on the gossip layer's verdict that a node cannot
// be reached. On the leader the dispatcher marks the node DOWN unless its
// heartbeats contradict the verdict (manager/dispatcher/liveness.go);
// other managers ignore it. It never blocks.
func (m *Manager) NodeUnreachable(nodeID string) { m.dispatcher.NodeUnreachable(nodeID) }

// NodeReachable passes on that gossip sees the node alive again: a verdict
// on it not acted upon yet is withdrawn.
func (m *Manager) NodeReachable(nodeID string) { m.dispatcher.NodeReachable(nodeID) }
