// Package dispatcher is the managers' side of the agents' protocol
// (shoalpb.DispatcherServer): one session per agent, heartbeats that tell
// the managers which nodes are alive, the stream of tasks assigned to each
// node, and the task status reports that come back.
//
// Only the leader's dispatcher serves: every call is refused with
// codes.Unavailable unless Run is running, so agents move to the leader.
// Sessions live in memory; a new leader starts with none and gives every
// node that was READY a heartbeat grace period to reconnect before marking
// it DOWN.
//
// Besides heartbeats, the leader takes the gossip layer's verdicts on
// nodes (NodeUnreachable, NodeReachable): a second, independent liveness
// signal, usually the faster one. liveness.go states how the two combine.
package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const (
	// DefaultHeartbeatPeriod is how often agents are told to heartbeat.
	// Swarm uses 5 s; Shoal targets a node marked down in at most 5 s
	// (DESIGN.md), so 1 s periods with HeartbeatGraceMultiplier 3.
	DefaultHeartbeatPeriod = time.Second
	// HeartbeatGraceMultiplier is how many periods without a heartbeat make
	// a node DOWN: one lost or late heartbeat is not a dead node.
	HeartbeatGraceMultiplier = 3
	// AssignmentsBatchDelay coalesces the changes of a burst (a service
	// scaled, a node drained) into one assignments message per node.
	AssignmentsBatchDelay = 50 * time.Millisecond
	// nodeWriteTimeout bounds the store write that records a closed
	// session: the stream's own context has ended by then.
	nodeWriteTimeout = 5 * time.Second
	// maxConflictRetries is how often a write is re-read and retried after
	// a conflict (another component wrote the same object).
	maxConflictRetries = 5
)

// Config configures a Dispatcher.
type Config struct {
	// HeartbeatPeriod is how often agents heartbeat; 0 means
	// DefaultHeartbeatPeriod.
	HeartbeatPeriod time.Duration
	// Clock returns the current time; nil means time.Now. Heartbeat
	// deadlines are measured with it.
	Clock func() time.Time
	// Logger receives the dispatcher's logs; nil discards them.
	Logger *slog.Logger
}

// Dispatcher implements shoalpb.DispatcherServer over a store. Create it
// with New, register it on a gRPC server, and call Run on the leader.
type Dispatcher struct {
	shoalpb.UnimplementedDispatcherServer

	store  *store.Store
	period time.Duration
	now    func() time.Time
	logger *slog.Logger

	// mu guards the fields below. It is never held while calling the
	// store: store.Update callbacks take it (addNodeState).
	mu sync.Mutex // guards following
	// runCtx is Run's context while Run runs, nil otherwise; sessions
	// derive from it so they end with Run.
	runCtx   context.Context
	sessions map[string]*session // by node id: the node's current session
	// unconfirmed holds nodes READY in the store when Run started, with
	// that time, until they open a session or their grace ends.
	unconfirmed map[string]time.Time
	// verdicts holds, while Run runs, gossip's verdicts that a node is
	// unreachable, with the time each arrived, until acted upon or
	// withdrawn (liveness.go).
	verdicts map[string]time.Time

	// kick asks Run to check the nodes now (a verdict arrived).
	kick chan struct{}
}

// session is one agent connection.
type session struct {
	id     string
	nodeID string
	// ctx ends when the session does: replaced, expired, or Run ended.
	ctx    context.Context
	cancel context.CancelCauseFunc

	lastBeat time.Time // guarded by Dispatcher.mu
}

// Reasons a session ends, returned to the agent's streams.
var (
	errReplaced = errors.New("session replaced by a newer one")
	errExpired  = errors.New(msgHeartbeatExpired)
	errGossip   = errors.New(msgGossipFailed)
	errStopped  = errors.New("dispatcher stopped")
)

// New returns a dispatcher over s.
func New(s *store.Store, cfg Config) *Dispatcher {
	d := &Dispatcher{
		store:       s,
		period:      cfg.HeartbeatPeriod,
		now:         cfg.Clock,
		logger:      cfg.Logger,
		sessions:    make(map[string]*session),
		unconfirmed: make(map[string]time.Time),
		verdicts:    make(map[string]time.Time),
		kick:        make(chan struct{}, 1),
	}
	if d.period <= 0 {
		d.period = DefaultHeartbeatPeriod
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.logger == nil {
		d.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return d
}

// Run serves sessions and marks DOWN the nodes whose heartbeats stop, until
// ctx ends; it then ends every session and returns nil. Run it on the
// leader only, once at a time.
func (d *Dispatcher) Run(ctx context.Context) error {
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(errStopped)

	// Nodes READY now were seen by a previous leader: they get one grace
	// period to open a session here. (Read before taking d.mu: store
	// callbacks take d.mu, so d.mu is never held around store calls.)
	var ready []string
	d.store.View(func(tx store.ReadTx) {
		for _, n := range tx.ListNodes() {
			if n.GetStatus().GetState() == shoalpb.NodeState_NODE_STATE_READY {
				ready = append(ready, n.GetId())
			}
		}
	})
	d.mu.Lock()
	if d.runCtx != nil {
		d.mu.Unlock()
		return errors.New("dispatcher already running")
	}
	d.runCtx = runCtx
	start := d.now()
	for _, id := range ready {
		if d.sessions[id] == nil {
			d.unconfirmed[id] = start
		}
	}
	d.mu.Unlock()

	defer func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, s := range d.sessions {
			s.cancel(errStopped)
		}
		d.sessions = make(map[string]*session)
		d.unconfirmed = make(map[string]time.Time)
		d.verdicts = make(map[string]time.Time)
		d.runCtx = nil
	}()

	// Checking twice a period keeps detection within half a period of
	// the grace (3.5 s with the defaults); a gossip verdict is checked as
	// soon as it arrives.
	tick := time.NewTicker(d.period / 2)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			d.expire(ctx)
		case <-d.kick:
			d.expire(ctx)
		}
	}
}

// grace is how long a node may stay silent before it is DOWN.
func (d *Dispatcher) grace() time.Duration { return HeartbeatGraceMultiplier * d.period }

// expire ends the sessions of the nodes that are DOWN by either signal
// (liveness.go) and marks them, and the unconfirmed nodes that never came
// back, DOWN.
func (d *Dispatcher) expire(ctx context.Context) {
	now := d.now()
	type downNode struct {
		signal, msg string
		silent      time.Duration // since the last heartbeat, when it had a session
	}
	down := make(map[string]downNode) // by node id
	d.mu.Lock()
	for id, s := range d.sessions {
		signal, isDown := sessionDown(now, s.lastBeat, d.verdicts[id], d.grace(), d.gossipWindow())
		if !isDown {
			continue
		}
		delete(d.sessions, id)
		delete(d.verdicts, id)
		silent := now.Sub(s.lastBeat)
		if signal == signalGossip {
			s.cancel(errGossip)
			down[id] = downNode{signalGossip, msgGossipFailed, silent}
		} else {
			s.cancel(errExpired)
			down[id] = downNode{signalHeartbeat, msgHeartbeatExpired, silent}
		}
	}
	for id, since := range d.unconfirmed {
		_, failed := d.verdicts[id]
		switch {
		case failed:
			down[id] = downNode{signalGossip, msgGossipFailed, 0}
		case now.Sub(since) > d.grace():
			down[id] = downNode{signalLeaderChange, msgNoSession, 0}
		default:
			continue
		}
		delete(d.unconfirmed, id)
	}
	// What is left are verdicts on nodes with a session whose heartbeat
	// contradicts them (they wait), or on nodes this leader does not see
	// as up: nothing to do about those.
	for id := range d.verdicts {
		if d.sessions[id] == nil {
			delete(d.verdicts, id)
		}
	}
	d.mu.Unlock()
	if len(down) == 0 {
		return
	}
	ids := make([]string, 0, len(down))
	for id := range down {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		v := down[id]
		attrs := []any{"node", id, "signal", v.signal, "reason", v.msg}
		if v.silent > 0 {
			// Tells how far the other signal was: the heartbeat grace
			// ends HeartbeatGraceMultiplier periods after the last one.
			attrs = append(attrs, "last_heartbeat_ago", v.silent.Round(time.Millisecond))
		}
		d.logger.Info("node down", attrs...)
	}
	err := d.update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		for _, id := range ids {
			d.addNodeState(tx, b, id, shoalpb.NodeState_NODE_STATE_DOWN, down[id].msg)
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		d.logger.Warn("mark nodes down", "nodes", ids, "err", err)
	}
}

// addNodeState adds to b a status change of the node, unless the node
// is gone or has opened a new session meanwhile (it is READY then, and
// stays so). It takes d.mu itself. A session opened after the check writes
// the node READY, so this write's expected version is stale and refused.
func (d *Dispatcher) addNodeState(tx store.ReadTx, b *store.Batch, nodeID string, state shoalpb.NodeState, msg string) {
	d.mu.Lock()
	_, live := d.sessions[nodeID]
	d.mu.Unlock()
	n := tx.GetNode(nodeID)
	if live || n == nil || n.GetStatus().GetState() == state {
		return
	}
	n = proto.Clone(n).(*shoalpb.Node)
	if n.Status == nil {
		n.Status = &shoalpb.NodeStatus{}
	}
	n.Status.State = state
	n.Status.Message = msg
	b.UpdateNode(n)
}

// update is store.Update retried on conflicts (fn re-reads).
func (d *Dispatcher) update(ctx context.Context, fn func(tx store.ReadTx, b *store.Batch) error) error {
	var err error
	for range maxConflictRetries + 1 {
		err = d.store.Update(ctx, fn)
		if !conflict(err) {
			return err
		}
	}
	return err
}

// runContext returns Run's context, or an Unavailable error when Run is not
// running (this manager is not the leader).
func (d *Dispatcher) runContext() (context.Context, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.runCtx == nil {
		return nil, status.Error(codes.Unavailable, "dispatcher not running on this manager: connect to the leader")
	}
	return d.runCtx, nil
}

// lookup returns the node's current session if it has the given id.
func (d *Dispatcher) lookup(nodeID, sessionID string) (*session, error) {
	if _, err := d.runContext(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.sessions[nodeID]
	if s == nil || s.id != sessionID {
		return nil, status.Errorf(codes.NotFound, "session %s of node %s not found; open a new session", sessionID, nodeID)
	}
	return s, nil
}

// sessionEnded converts the end of a session into the error its streams
// return.
func sessionEnded(s *session) error {
	switch cause := context.Cause(s.ctx); {
	case errors.Is(cause, errStopped):
		return status.Error(codes.Unavailable, fmt.Sprintf("session %s: %v", s.id, cause))
	default:
		return status.Errorf(codes.NotFound, "session %s ended (%v); open a new session", s.id, cause)
	}
}

// conflict reports whether a write was refused because the store changed
// since the read it was computed from (an object updated or deleted
// meanwhile): re-reading and computing again resolves it.
func conflict(err error) bool {
	return errors.Is(err, store.ErrVersionMismatch) || errors.Is(err, store.ErrNotFound)
}
