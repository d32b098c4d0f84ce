package raft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	etcdraft "go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Run drives the node until ctx is cancelled, then stops cleanly: pending
// proposals fail with ErrStopped, Leadership subscribers receive false, and
// the log and the directory lock are released. It returns nil on ctx
// cancellation, else the fatal error (a failed disk write or fsync: the node
// never continues after one; Open the directory again to recover). Run may
// be called only once per Node.
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return errors.New("raft: Run called more than once")
	}
	err := n.loop(ctx)
	if err != nil {
		n.log.Error("raft node stopped on a fatal error", "err", err)
	}
	n.shutdown()
	return err
}

// loop is the node's single goroutine: everything touching the RawNode,
// the storage and the state machine happens here.
func (n *Node) loop(ctx context.Context) error {
	if ctx.Err() != nil {
		return nil
	}
	ticker := time.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
	for {
		for n.rn.HasReady() {
			if err := n.handleReady(ctx); err != nil {
				return err
			}
		}
		if n.maybeCampaign() {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			n.rn.Tick()
		case p := <-n.propc:
			p.errc <- n.propose(p.data)
			n.drainProposals()
		case f := <-n.ctlc:
			f()
		case m := <-n.stepc:
			n.step(m)
			n.drainSteps()
		}
	}
}

// maxProposalBatch bounds how many queued proposals are taken before the
// next Ready. Under load, proposals that arrive while a Ready is written
// then share one WAL fsync and one append message to the followers instead
// of paying for one each; the bound keeps one Ready's entries small.
const maxProposalBatch = 256

// drainProposals takes the proposals already waiting, without blocking.
func (n *Node) drainProposals() {
	for range maxProposalBatch {
		select {
		case p := <-n.propc:
			p.errc <- n.propose(p.data)
		default:
			return
		}
	}
}

func (n *Node) step(m *raftpb.Message) {
	if err := n.rn.Step(m); err != nil {
		n.log.Debug("dropped raft message", "type", m.GetType().String(), "from", m.GetFrom(), "err", err)
	}
}

// drainSteps takes the messages from other members already waiting, so
// that a follower receiving a burst of appends writes them with one fsync,
// as drainProposals does for the leader's proposals.
func (n *Node) drainSteps() {
	for range maxProposalBatch {
		select {
		case m := <-n.stepc:
			n.step(m)
		default:
			return
		}
	}
}

// shutdown releases the disk and fails everyone still waiting.
func (n *Node) shutdown() {
	if err := n.wal.close(); err != nil {
		n.log.Error("close wal", "err", err)
	}
	if err := n.lock.Close(); err != nil {
		n.log.Error("release raft dir lock", "err", err)
	}
	n.leader.Store(0)
	n.mu.Lock()
	n.stopped = true
	n.failWaitersLocked(ErrStopped)
	if n.isLeader.Load() {
		n.isLeader.Store(false)
		n.publishLocked(false)
	}
	n.mu.Unlock()
	close(n.done)
}

// handleReady handles one Ready in etcd raftexample's order: snapshot, WAL
// (fsync'd), MemoryStorage, send, apply, snapshot/compact, Advance.
func (n *Node) handleReady(ctx context.Context) error {
	rd := n.rn.Ready()
	var snapMeta *raftpb.SnapshotMetadata
	if !etcdraft.IsEmptySnap(rd.Snapshot) {
		// A snapshot from the leader: durable before the log refers to it.
		if err := saveSnapshot(n.cfg.DataDir, rd.Snapshot); err != nil {
			return err
		}
		snapMeta = rd.Snapshot.GetMetadata()
	}
	if err := n.wal.save(rd.HardState, rd.Entries, snapMeta, rd.MustSync); err != nil {
		return err
	}
	if snapMeta != nil {
		idx := snapMeta.GetIndex()
		if err := n.storage.ApplySnapshot(rd.Snapshot); err != nil {
			return fmt.Errorf("apply received snapshot at index %d: %w", idx, err)
		}
		if err := n.restoreSnapshot(rd.Snapshot); err != nil {
			return fmt.Errorf("restore state machine from received snapshot at index %d: %w", idx, err)
		}
		n.applied.Store(idx)
		n.log.Info("installed snapshot from leader", "index", idx, "term", snapMeta.GetTerm())
	}
	if !etcdraft.IsEmptyHardState(rd.HardState) {
		if err := n.storage.SetHardState(rd.HardState); err != nil {
			return fmt.Errorf("store hard state: %w", err)
		}
	}
	if err := n.storage.Append(rd.Entries); err != nil {
		return fmt.Errorf("store %d entries: %w", len(rd.Entries), err)
	}
	if rd.SoftState != nil {
		n.noteSoftState(rd.SoftState)
	}
	n.send(ctx, rd.Messages)
	if err := n.applyEntries(rd.CommittedEntries); err != nil {
		return err
	}
	n.noteReadStates(rd.ReadStates)
	n.updateLeadership()
	if snapMeta != nil {
		if err := n.compact(snapMeta); err != nil {
			return err
		}
	} else if err := n.maybeSnapshot(); err != nil {
		return err
	}
	if n.wal.size >= segmentMaxBytes {
		last, _ := n.storage.LastIndex() // MemoryStorage never fails
		if err := n.wal.cut(last + 1); err != nil {
			return err
		}
	}
	n.rn.Advance(rd)
	return nil
}

// send hands messages for other members to the transport; without one
// (single member) there is nobody to send to.
func (n *Node) send(ctx context.Context, msgs []*raftpb.Message) {
	if len(msgs) == 0 {
		return
	}
	if n.cfg.Transport == nil {
		n.log.Debug("no transport: dropping raft messages", "count", len(msgs))
		return
	}
	copied := false
	for i, m := range msgs {
		if m.GetType() != raftpb.MsgSnap {
			continue
		}
		fresh, err := n.freshSnapshotMessage(m)
		if err != nil {
			// Sent as raft made it: a member added after it cannot use it
			// and the leader will try again.
			n.log.Warn("make a current snapshot for a follower", "to", m.GetTo(), "err", err)
			continue
		}
		if !copied { // the slice belongs to raft
			msgs, copied = slices.Clone(msgs), true
		}
		msgs[i] = fresh
	}
	n.cfg.Transport.Send(ctx, msgs)
}

// freshSnapshotMessage replaces the snapshot in m, the newest one raft
// stored, by one of the current applied state, as etcd's server does: a
// member added after the stored snapshot is not in its ConfState and
// would ignore it forever. Runs in the loop, before this Ready's entries
// are applied, so every applied entry is in storage.
func (n *Node) freshSnapshotMessage(m *raftpb.Message) (*raftpb.Message, error) {
	applied := n.applied.Load()
	if applied <= m.GetSnapshot().GetMetadata().GetIndex() {
		return m, nil
	}
	term, err := n.storage.Term(applied)
	if err != nil {
		return nil, fmt.Errorf("term of applied index %d: %w", applied, err)
	}
	data, err := n.sm.Snapshot()
	if err != nil {
		return nil, fmt.Errorf("snapshot state machine: %w", err)
	}
	n.mu.Lock()
	data, err = wrapSnapshotData(n.addrs, data)
	n.mu.Unlock()
	if err != nil {
		return nil, err
	}
	fresh := proto.Clone(m).(*raftpb.Message)
	fresh.Snapshot = &raftpb.Snapshot{
		Data: data,
		Metadata: &raftpb.SnapshotMetadata{
			Index:     new(applied),
			Term:      new(term),
			ConfState: proto.Clone(n.confState).(*raftpb.ConfState),
		},
	}
	n.log.Info("sending a current snapshot", "to", m.GetTo(), "index", applied, "stored_index", m.GetSnapshot().GetMetadata().GetIndex())
	return fresh, nil
}

// applyEntries applies committed entries in order. Empty entries (appended
// by each new leader) only advance the applied index; conf changes go to
// raft and their result is kept for snapshots.
func (n *Node) applyEntries(ents []*raftpb.Entry) error {
	for _, e := range ents {
		switch e.GetType() {
		case raftpb.EntryNormal:
			n.applyCommand(e)
		case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
			if err := n.applyConfChange(e); err != nil {
				return err
			}
		default:
			return fmt.Errorf("apply entry %d: unknown entry type %v", e.GetIndex(), e.GetType())
		}
		n.applied.Store(e.GetIndex())
	}
	return nil
}

// applyCommand applies one proposal and hands the result to its proposer
// if it is waiting on this node.
func (n *Node) applyCommand(e *raftpb.Entry) {
	data := e.GetData()
	if len(data) == 0 {
		return // a new leader's empty entry
	}
	if len(data) < requestIDLen {
		// Every proposal carries a request id; all members skip the same
		// malformed entry, so state machines stay identical.
		n.log.Warn("skipping committed entry without a request id", "index", e.GetIndex(), "bytes", len(data))
		return
	}
	id := requestID(data)
	res := n.sm.Apply(e.GetIndex(), data[requestIDLen:])
	// Visible before the proposer returns: AppliedIndex covers its command.
	n.applied.Store(e.GetIndex())
	n.mu.Lock()
	ch, ok := n.waiters[id]
	delete(n.waiters, id)
	n.mu.Unlock()
	if ok {
		ch <- res // buffered: never blocks
	}
}

// noteSoftState tracks raft's role and leader; called after the Ready's
// entries are in storage, so a new leader's empty entry is the last index.
func (n *Node) noteSoftState(ss *etcdraft.SoftState) {
	n.leader.Store(ss.Lead)
	was := n.raftState == etcdraft.StateLeader
	now := ss.RaftState == etcdraft.StateLeader
	n.raftState = ss.RaftState
	switch {
	case now && !was:
		// Announce leadership only once everything committed before this
		// term (up to and including the new term's empty entry) is
		// applied: leader-only components read the state machine.
		n.catchUp, _ = n.storage.LastIndex()
		n.log.Info("elected raft leader", "id", n.cfg.ID, "catch_up_index", n.catchUp)
	case was && !now:
		n.log.Info("lost raft leadership", "id", n.cfg.ID, "state", ss.RaftState.String(), "leader", ss.Lead)
		err := ErrLeadershipLost
		if ss.Lead == etcdraft.None && slices.Contains(n.confState.GetVoters(), n.cfg.ID) {
			// Stepped down without a successor while still a voter (not
			// removed): CheckQuorum found no quorum (a higher-term vote
			// would need a quorum too, which PreVote keeps a partitioned
			// minority from starting).
			err = errNoQuorumLost
		}
		n.mu.Lock()
		n.failWaitersLocked(err)
		n.mu.Unlock()
	}
}

// updateLeadership tells subscribers when IsLeader's answer changes.
func (n *Node) updateLeadership() {
	want := n.raftState == etcdraft.StateLeader && n.applied.Load() >= n.catchUp
	if want == n.isLeader.Load() {
		return
	}
	n.mu.Lock()
	n.isLeader.Store(want)
	n.publishLocked(want)
	n.mu.Unlock()
}

// maybeCampaign starts an election at once when this node is the only
// voter, instead of waiting out the election timeout (which exists to wait
// for other members' heartbeats). It reports whether it campaigned.
func (n *Node) maybeCampaign() bool {
	if n.raftState != etcdraft.StateFollower {
		return false
	}
	voters := n.confState.GetVoters()
	if len(voters) != 1 || voters[0] != n.cfg.ID || len(n.confState.GetVotersOutgoing()) != 0 {
		return false
	}
	term := n.rn.BasicStatus().HardState.GetTerm()
	if n.campaigned && n.campaignTerm == term {
		return false // tried in this term already: leave it to raft's timer
	}
	n.campaigned, n.campaignTerm = true, term
	if err := n.rn.Campaign(); err != nil {
		n.log.Warn("campaign as the only voter", "err", err)
		return false
	}
	return true
}

// maybeSnapshot snapshots the state machine every SnapshotInterval applied
// entries. A failing state machine snapshot is logged and retried after
// another interval: the log just grows meanwhile.
func (n *Node) maybeSnapshot() error {
	applied := n.applied.Load()
	if applied < max(n.snapIndex, n.snapFailed)+n.cfg.SnapshotInterval {
		return nil
	}
	data, err := n.sm.Snapshot()
	if err == nil {
		n.mu.Lock()
		data, err = wrapSnapshotData(n.addrs, data)
		n.mu.Unlock()
	}
	if err != nil {
		n.snapFailed = applied
		n.log.Error("state machine snapshot failed; retrying later", "applied", applied, "err", err)
		return nil
	}
	snap, err := n.storage.CreateSnapshot(applied, n.confState, data)
	if err != nil {
		return fmt.Errorf("create snapshot at index %d: %w", applied, err)
	}
	if err := saveSnapshot(n.cfg.DataDir, snap); err != nil {
		return err
	}
	return n.compact(snap.GetMetadata())
}

// compact runs after the snapshot md is durable: start a WAL segment that
// records it, trim MemoryStorage (keeping a margin for lagging followers),
// and delete log segments and snapshots it makes unnecessary.
func (n *Node) compact(md *raftpb.SnapshotMetadata) error {
	idx := md.GetIndex()
	n.wal.snap = md
	last, _ := n.storage.LastIndex() // MemoryStorage never fails
	if err := n.wal.cut(last + 1); err != nil {
		return err
	}
	n.snapIndex = idx
	if keep := n.cfg.catchUpEntries; idx > keep {
		if err := n.storage.Compact(idx - keep); err != nil && !errors.Is(err, etcdraft.ErrCompacted) {
			return fmt.Errorf("compact in-memory log to %d: %w", idx-keep, err)
		}
	}
	if err := n.wal.releaseTo(idx); err != nil {
		return err
	}
	if err := purgeSnapshots(n.cfg.DataDir, snapshotsKept, n.log); err != nil {
		n.log.Warn("delete old snapshots", "err", err)
	}
	n.log.Info("snapshot saved", "index", idx, "term", md.GetTerm(), "wal_segments", len(n.wal.segs))
	return nil
}
