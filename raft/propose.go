package raft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	etcdraft "go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// proposal is a command on its way to the loop; errc gets whether raft
// took it.
type proposal struct {
	data []byte // request id + command
	errc chan error
}

func requestID(data []byte) uint64 { return binary.LittleEndian.Uint64(data[:requestIDLen]) }

// Propose replicates data and blocks until it is applied on this node,
// returning StateMachine.Apply's error for it. Errors: ErrNotLeader (this
// node is not the leader; nothing was proposed), ErrLeadershipLost (the
// outcome is unknown), ErrStopped, ErrProposalTooLarge, ctx.Err() (the
// command may still be applied). Before Run starts, Propose waits for it.
func (n *Node) Propose(ctx context.Context, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(data) > MaxProposalSize {
		return fmt.Errorf("propose %d bytes (max %d): %w", len(data), MaxProposalSize, ErrProposalTooLarge)
	}
	id := n.reqBase + n.reqSeq.Add(1)
	buf := make([]byte, requestIDLen+len(data))
	binary.LittleEndian.PutUint64(buf, id)
	copy(buf[requestIDLen:], data)

	// Registered before raft sees the proposal, so the result cannot be
	// applied before anyone waits for it.
	result := make(chan error, 1)
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return ErrStopped
	}
	n.waiters[id] = result
	n.mu.Unlock()

	p := proposal{data: buf, errc: make(chan error, 1)}
	select {
	case n.propc <- p:
	case <-ctx.Done():
		n.forget(id)
		return ctx.Err()
	case <-n.done:
		return ErrStopped
	}
	if err := <-p.errc; err != nil { // the loop always answers
		n.forget(id)
		return err
	}
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		n.forget(id)
		return ctx.Err()
	}
}

// propose runs in the loop.
func (n *Node) propose(data []byte) error {
	if n.raftState != etcdraft.StateLeader {
		return ErrNotLeader
	}
	if err := n.rn.Propose(data); err != nil {
		// Dropped while a leadership transfer is under way.
		return fmt.Errorf("%w: raft dropped the proposal: %v", ErrNotLeader, err)
	}
	return nil
}

func (n *Node) forget(id uint64) {
	n.mu.Lock()
	delete(n.waiters, id)
	n.mu.Unlock()
}

// failWaitersLocked fails every waiting proposer with err.
func (n *Node) failWaitersLocked(err error) {
	for id, ch := range n.waiters {
		ch <- err // buffered, and each waiter gets at most one value
		delete(n.waiters, id)
	}
}

// Step hands a message from another member to the node (for the
// transport). It returns once the message is queued for the node's loop
// (in order), or with ctx.Err() or ErrStopped. Messages raft refuses (e.g.
// from an unknown member) are dropped and logged at debug level; a message
// queued while the node stops is dropped, as the network may drop any.
func (n *Node) Step(ctx context.Context, m *raftpb.Message) error {
	if m == nil {
		return errors.New("raft: step a nil message")
	}
	select {
	case <-n.done:
		return ErrStopped
	default:
	}
	select {
	case n.stepc <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrStopped
	}
}

// leaderSub is one Leadership subscription.
type leaderSub struct {
	ch   chan bool
	once sync.Once
}

// Leadership returns a channel that receives true when this node becomes
// leader (as IsLeader reports it: elected and caught up) and false when it
// stops being leader, including when Run returns. Only the latest value is
// kept: the channel has a buffer of 1 and a new value replaces an unread
// one. If the node is leader already, true is waiting in the channel. The
// cancel func ends the subscription and closes the channel; call it when
// done.
func (n *Node) Leadership() (<-chan bool, func()) {
	s := &leaderSub{ch: make(chan bool, 1)}
	n.mu.Lock()
	if n.isLeader.Load() {
		s.ch <- true
	}
	n.subs[s] = struct{}{}
	n.mu.Unlock()
	cancel := func() {
		n.mu.Lock()
		delete(n.subs, s)
		n.mu.Unlock()
		s.once.Do(func() { close(s.ch) })
	}
	return s.ch, cancel
}

// publishLocked gives every subscriber v, replacing an unread value. Only
// publishLocked sends, under mu, so after draining there is room.
func (n *Node) publishLocked(v bool) {
	for s := range n.subs {
		select {
		case <-s.ch:
		default:
		}
		select {
		case s.ch <- v:
		default:
		}
	}
}
