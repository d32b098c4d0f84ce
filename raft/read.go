package raft

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	etcdraft "go.etcd.io/raft/v3"
)

// errNoQuorumLost fails proposals pending on a leader that stepped down for
// lack of a quorum: both ErrNoQuorum and ErrLeadershipLost (outcome
// unknown), so callers checking either see it.
var errNoQuorumLost = fmt.Errorf("%w (%w)", ErrNoQuorum, ErrLeadershipLost)

// pendingRead is a read state whose index is not applied yet.
type pendingRead struct {
	index uint64
	ch    chan uint64
}

// ReadIndex makes the next read of the state machine linearizable: it
// returns once this node has applied everything the leader had committed
// when the call was made, as confirmed by a quorum (raft's ReadIndex, so a
// deposed leader cannot answer from stale state). It works on followers
// too. Without a reachable quorum (or leader) it fails with ErrNoQuorum
// after about noQuorumElections election timeouts; else with ctx.Err() or
// ErrStopped.
func (n *Node) ReadIndex(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	id := n.reqBase + n.reqSeq.Add(1)
	ch := make(chan uint64, 1)
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return ErrStopped
	}
	n.reads[id] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.reads, id)
		n.mu.Unlock()
	}()

	rctx := binary.LittleEndian.AppendUint64(nil, id)
	timeout := time.NewTimer(noQuorumElections * time.Duration(n.cfg.ElectionTicks) * n.cfg.TickInterval)
	defer timeout.Stop()
	if err := n.do(ctx, func() {
		// raft drops the request when no leader is known; the timeout
		// below then reports it.
		n.rn.ReadIndex(rctx)
	}); err != nil {
		return err
	}
	select {
	case <-ch:
		return nil // the loop sends only once the index is applied
	case <-timeout.C:
		return fmt.Errorf("read index: no answer from a leader with a quorum: %w", ErrNoQuorum)
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrStopped
	}
}

// noteReadStates runs in the loop after the Ready's entries are applied:
// it answers the ReadIndex callers whose read index is applied and keeps
// the others for later.
func (n *Node) noteReadStates(rss []etcdraft.ReadState) {
	for _, rs := range rss {
		if len(rs.RequestCtx) != 8 {
			continue
		}
		id := binary.LittleEndian.Uint64(rs.RequestCtx)
		n.mu.Lock()
		ch, ok := n.reads[id]
		delete(n.reads, id)
		n.mu.Unlock()
		if ok {
			n.pendingReads = append(n.pendingReads, pendingRead{index: rs.Index, ch: ch})
		}
	}
	applied := n.applied.Load()
	kept := n.pendingReads[:0]
	for _, pr := range n.pendingReads {
		if pr.index <= applied {
			pr.ch <- pr.index // buffered, one value per request
			continue
		}
		kept = append(kept, pr)
	}
	clear(n.pendingReads[len(kept):])
	n.pendingReads = kept
}
