package raft

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	etcdraft "go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Member is one member of the group as of the applied configuration.
type Member struct {
	ID    uint64
	Addr  string // as recorded by the conf change that added it; "" if none was given
	Voter bool   // false: a learner (receives the log, does not vote)
}

// confContext is the Context of every conf change this package proposes:
// the added member's address (so every member learns every address from
// the log) and the request id of the proposer waiting for it to apply.
type confContext struct {
	Req  uint64 `json:"req,omitempty"`
	Addr string `json:"addr,omitempty"`
}

// Snapshot data envelope: the address book travels with the state
// machine's data, so a member restored from a snapshot (at Open or from
// the leader) knows every address although the conf change entries that
// carried them were compacted away. Data without the magic prefix is the
// state machine's alone (written before the envelope existed).
const snapEnvelopeMagic = "shoalmb1"

// wrapSnapshotData prefixes the state machine's data with the address book.
func wrapSnapshotData(addrs map[uint64]string, data []byte) ([]byte, error) {
	book, err := json.Marshal(addrs)
	if err != nil {
		return nil, fmt.Errorf("encode address book: %w", err)
	}
	out := make([]byte, 0, len(snapEnvelopeMagic)+4+len(book)+len(data))
	out = append(out, snapEnvelopeMagic...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(book)))
	out = append(out, book...)
	return append(out, data...), nil
}

// unwrapSnapshotData splits snapshot data into the address book (nil for
// data without an envelope) and the state machine's data.
func unwrapSnapshotData(data []byte) (map[uint64]string, []byte, error) {
	if !bytes.HasPrefix(data, []byte(snapEnvelopeMagic)) {
		return nil, data, nil
	}
	rest := data[len(snapEnvelopeMagic):]
	if len(rest) < 4 {
		return nil, nil, errors.New("snapshot envelope: truncated address book length")
	}
	n := binary.LittleEndian.Uint32(rest)
	rest = rest[4:]
	if uint64(n) > uint64(len(rest)) {
		return nil, nil, fmt.Errorf("snapshot envelope: address book of %d bytes, only %d present", n, len(rest))
	}
	addrs := map[uint64]string{}
	if err := json.Unmarshal(rest[:n], &addrs); err != nil {
		return nil, nil, fmt.Errorf("snapshot envelope: decode address book: %w", err)
	}
	return addrs, rest[n:], nil
}

// restoreSnapshot gives the state machine its part of a snapshot and
// installs the address book; it runs in the loop (or in Open).
func (n *Node) restoreSnapshot(snap *raftpb.Snapshot) error {
	addrs, data, err := unwrapSnapshotData(snap.GetData())
	if err != nil {
		return err
	}
	if err := n.sm.Restore(data); err != nil {
		return err
	}
	n.confState = proto.Clone(raftpb.EnsureConfState(snap.GetMetadata().GetConfState())).(*raftpb.ConfState)
	if addrs == nil {
		addrs = map[uint64]string{}
	}
	n.mu.Lock()
	n.addrs = addrs
	n.publishMembersLocked()
	n.mu.Unlock()
	return nil
}

// applyConfChange applies a committed conf change entry: to raft, to the
// address book, and to the proposer waiting for it.
func (n *Node) applyConfChange(e *raftpb.Entry) error {
	var cc raftpb.ConfChangeI
	var ctxData []byte
	switch e.GetType() {
	case raftpb.EntryConfChange:
		c := &raftpb.ConfChange{}
		if err := proto.Unmarshal(e.GetData(), c); err != nil {
			return fmt.Errorf("decode conf change at index %d: %w", e.GetIndex(), err)
		}
		cc, ctxData = c, c.GetContext()
	default:
		c := &raftpb.ConfChangeV2{}
		if err := proto.Unmarshal(e.GetData(), c); err != nil {
			return fmt.Errorf("decode conf change v2 at index %d: %w", e.GetIndex(), err)
		}
		cc, ctxData = c, c.GetContext()
	}
	var cctx confContext
	if len(ctxData) > 0 {
		if err := json.Unmarshal(ctxData, &cctx); err != nil {
			// Every member skips the same context: address books agree.
			n.log.Warn("ignoring undecodable conf change context", "index", e.GetIndex(), "err", err)
			cctx = confContext{}
		}
	}
	n.confState = n.rn.ApplyConfChange(cc)
	n.mu.Lock()
	for _, c := range cc.AsV2().GetChanges() {
		id := c.GetNodeId()
		switch c.GetType() {
		case raftpb.ConfChangeRemoveNode:
			delete(n.addrs, id)
		case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
			if cctx.Addr != "" {
				n.addrs[id] = cctx.Addr
			}
		}
	}
	n.publishMembersLocked()
	ch, ok := n.waiters[cctx.Req]
	if ok && cctx.Req != 0 {
		delete(n.waiters, cctx.Req)
	}
	n.mu.Unlock()
	if ok && cctx.Req != 0 {
		ch <- nil
	}
	n.log.Info("applied conf change", "index", e.GetIndex(), "change", etcdraft.DescribeConfChange(cc),
		"voters", n.confState.GetVoters(), "learners", n.confState.GetLearners())
	return nil
}

// publishMembersLocked recomputes the Members view from the loop-owned
// ConfState and the address book.
func (n *Node) publishMembersLocked() {
	var ms []Member
	for _, id := range n.confState.GetVoters() {
		ms = append(ms, Member{ID: id, Addr: n.addrs[id], Voter: true})
	}
	for _, id := range n.confState.GetLearners() {
		ms = append(ms, Member{ID: id, Addr: n.addrs[id]})
	}
	// A learner being promoted in a joint configuration is listed once,
	// as the voter it becomes.
	for _, id := range n.confState.GetLearnersNext() {
		if !slices.ContainsFunc(ms, func(m Member) bool { return m.ID == id }) {
			ms = append(ms, Member{ID: id, Addr: n.addrs[id]})
		}
	}
	slices.SortFunc(ms, func(a, b Member) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	n.members = ms
}

// Members returns the group's members as of the configuration this node
// has applied, sorted by id, with the addresses the conf changes (or the
// snapshot) recorded.
func (n *Node) Members() []Member {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.members)
}

// memberAddr returns the recorded address of id, "" if none.
func (n *Node) memberAddr(id uint64) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addrs[id]
}

// AddMember adds id at addr as a voter (voter) or a learner, and blocks
// until the change is applied on this node. It must be called on the
// leader (else ErrNotLeader). Adding an existing member updates its
// address (and promotes a learner when voter is set); adding an existing
// voter as a learner demotes it, as DemoteMember does (with its check).
// A new member must be started with Config.Join. Only one membership
// change runs at a time per node; others wait for it.
func (n *Node) AddMember(ctx context.Context, id uint64, addr string, voter bool) error {
	if id == 0 {
		return errors.New("add raft member: id must be non-zero")
	}
	typ := raftpb.ConfChangeAddNode
	if !voter {
		typ = raftpb.ConfChangeAddLearnerNode
	}
	var check func() error
	if !voter {
		check = func() error {
			if slices.Contains(n.confState.GetVoters(), id) {
				return n.checkQuorumAfter(id) // a demotion
			}
			return nil
		}
	}
	if err := n.changeMembership(ctx, typ, id, addr, check); err != nil {
		return fmt.Errorf("add raft member %d at %s: %w", id, addr, err)
	}
	return nil
}

// RemoveMember removes id (a voter or a learner) and blocks until the
// change is applied on this node. Removing a voter is refused with
// ErrQuorumRisk when the voters left, counting only those the leader has
// recently heard from, would be fewer than a quorum of the new
// configuration (it rechecks for up to an election timeout first, since
// the leader's view of who is active is reset periodically). Removing
// the leader itself is allowed (it steps down once the change is
// applied). It must be called on the leader.
func (n *Node) RemoveMember(ctx context.Context, id uint64) error {
	if err := n.changeMembership(ctx, raftpb.ConfChangeRemoveNode, id, "", func() error { return n.checkQuorumAfter(id) }); err != nil {
		return fmt.Errorf("remove raft member %d: %w", id, err)
	}
	return nil
}

// PromoteMember turns the learner id into a voter, keeping its address.
// It fails with ErrLearnerNotReady while the learner's log is behind the
// leader's by more than a tenth (as etcd checks): a voter that is still
// catching up counts toward the quorum and could stall the group; retry
// later. It must be called on the leader.
func (n *Node) PromoteMember(ctx context.Context, id uint64) error {
	if err := n.changeMembership(ctx, raftpb.ConfChangeAddNode, id, "", func() error { return n.checkLearnerReady(id) }); err != nil {
		return fmt.Errorf("promote raft member %d: %w", id, err)
	}
	return nil
}

// DemoteMember turns the voter id into a learner, with RemoveMember's
// ErrQuorumRisk check. It must be called on the leader.
func (n *Node) DemoteMember(ctx context.Context, id uint64) error {
	if err := n.changeMembership(ctx, raftpb.ConfChangeAddLearnerNode, id, "", func() error { return n.checkQuorumAfter(id) }); err != nil {
		return fmt.Errorf("demote raft member %d: %w", id, err)
	}
	return nil
}

// checkMember runs in the loop: id must be a member.
func (n *Node) checkMember(id uint64) error {
	if !slices.Contains(n.confState.GetVoters(), id) && !slices.Contains(n.confState.GetLearners(), id) {
		return ErrUnknownMember
	}
	return nil
}

// checkLearnerReady runs in the loop on the leader: id is a member whose
// log has reached learnerReadyPercent of the leader's.
func (n *Node) checkLearnerReady(id uint64) error {
	if err := n.checkMember(id); err != nil {
		return err
	}
	if !slices.Contains(n.confState.GetLearners(), id) {
		return nil // a voter already: nothing to wait for
	}
	st := n.rn.Status()
	lead, learner := st.Progress[n.cfg.ID].Match, st.Progress[id].Match
	if learner*100 < lead*learnerReadyPercent {
		return fmt.Errorf("%w: learner at index %d, leader at %d", ErrLearnerNotReady, learner, lead)
	}
	return nil
}

// checkQuorumAfter runs in the loop on the leader: id stops voting (removed
// or demoted); the remaining voters the leader has recently heard from
// must still form a quorum of the remaining voters.
func (n *Node) checkQuorumAfter(id uint64) error {
	if err := n.checkMember(id); err != nil {
		return err
	}
	if !slices.Contains(n.confState.GetVoters(), id) {
		return nil // a learner: quorum does not change
	}
	st := n.rn.Status()
	var left, active int
	for _, v := range n.confState.GetVoters() {
		if v == id {
			continue
		}
		left++
		if pr, ok := st.Progress[v]; ok && (pr.RecentActive || v == n.cfg.ID) {
			active++
		}
	}
	if left == 0 || active < left/2+1 {
		return fmt.Errorf("%w: %d of the %d remaining voters recently active", ErrQuorumRisk, active, left)
	}
	return nil
}

// changeMembership proposes one conf change and waits until it is applied
// here. check runs in the loop right before proposing.
func (n *Node) changeMembership(ctx context.Context, typ raftpb.ConfChangeType, id uint64, addr string, check func() error) error {
	select {
	case n.confSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-n.confSem }()

	req := n.reqBase + n.reqSeq.Add(1)
	cctx, err := json.Marshal(confContext{Req: req, Addr: addr})
	if err != nil {
		return fmt.Errorf("encode conf change context: %w", err)
	}
	cc := &raftpb.ConfChangeV2{
		Changes: []*raftpb.ConfChangeSingle{{Type: typ.Enum(), NodeId: new(id)}},
		Context: cctx,
	}
	result := make(chan error, 1)
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return ErrStopped
	}
	n.waiters[req] = result
	n.mu.Unlock()

	propose := func() error {
		errc := make(chan error, 1)
		if err := n.do(ctx, func() { errc <- n.proposeConfChange(cc, check) }); err != nil {
			return err
		}
		return <-errc
	}
	err = propose()
	// A risk seen may be only CheckQuorum's periodic reset of RecentActive:
	// look again every tick for one election timeout, in which every live
	// voter answers heartbeats.
	for try := 0; errors.Is(err, ErrQuorumRisk) && try < n.cfg.ElectionTicks; try++ {
		select {
		case <-time.After(n.cfg.TickInterval):
			err = propose()
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		n.forget(req)
		return err
	}
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		n.forget(req)
		return ctx.Err()
	}
}

// proposeConfChange runs in the loop. It proposes only on a caught-up
// leader: raft silently turns a conf change into an empty entry while an
// earlier one is unapplied, and a caught-up leader has applied every
// earlier one (changes from this node are serialized by confSem).
func (n *Node) proposeConfChange(cc *raftpb.ConfChangeV2, check func() error) error {
	if n.raftState != etcdraft.StateLeader || !n.isLeader.Load() {
		return ErrNotLeader
	}
	if check != nil {
		if err := check(); err != nil {
			return err
		}
	}
	if err := n.rn.ProposeConfChange(cc); err != nil {
		return fmt.Errorf("%w: raft dropped the conf change: %v", ErrNotLeader, err)
	}
	return nil
}

// do runs f in the node's loop and returns once the loop has taken it (f
// may still be running), or with ctx.Err() or ErrStopped.
func (n *Node) do(ctx context.Context, f func()) error {
	select {
	case n.ctlc <- f:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.done:
		return ErrStopped
	}
}

// ReportUnreachable tells raft that the last messages to id were probably
// lost (for transports), so the leader probes it instead of streaming
// appends into the void. It returns once the loop has the report, or when
// ctx ends or the node stops.
func (n *Node) ReportUnreachable(ctx context.Context, id uint64) {
	_ = n.do(ctx, func() { n.rn.ReportUnreachable(id) })
}

// ReportSnapshot tells raft whether the snapshot sent to id arrived (for
// transports): after a failure the leader sends another one.
func (n *Node) ReportSnapshot(ctx context.Context, id uint64, ok bool) {
	status := etcdraft.SnapshotFinish
	if !ok {
		status = etcdraft.SnapshotFailure
	}
	_ = n.do(ctx, func() { n.rn.ReportSnapshot(id, status) })
}
