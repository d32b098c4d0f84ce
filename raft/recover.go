package raft

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"go.etcd.io/raft/v3/raftpb"
)

// ForceNewCluster rewrites the durable state of a stopped member so that
// cfg.ID is the group's only voter: the recovery of a lone surviving manager
// after the others are lost for good. The directory's lock makes it fail
// with ErrLocked while a Node (in any process) uses cfg.DataDir.
//
// The state is loaded as Open loads it, replaying every committed entry
// into sm (which must be fresh, as for Open). Then, in this order:
//
//  1. The log is cut back to the last committed index c with one fsync'd
//     write: an empty entry at c+1 in term t+1 (t: the stored term), which
//     replaces every uncommitted entry, and HardState{Term: t+1, Commit: c}
//     with no vote. Entries after c are discarded, as etcd's
//     --force-new-cluster does: this member never saw them committed, so
//     their proposers were not acknowledged by it (a proposal returns only
//     once its entry is committed and applied), and keeping them would let
//     the lone member commit, say, a membership change the lost group never
//     agreed on. (If the lost leader committed some of them without this
//     member learning it, they are lost with the leader: force the member
//     with the longest committed log.)
//  2. A new snapshot at index c is written from sm.Snapshot(), with a
//     ConfState whose only voter is cfg.ID (learners are dropped too) and
//     an address book holding only this member: cfg.Addr when set, else
//     the address the group knew it by.
//  3. A fresh WAL segment starts, recording that snapshot and hard state,
//     and the segments the snapshot covers are deleted.
//
// Each step leaves a directory Open accepts; if the process dies in
// between, run ForceNewCluster again (it is idempotent in effect: the
// committed state is unchanged, only the term grows). Afterwards a plain
// Open and Run elects the member alone. It fails with an error wrapping
// ErrUnknownMember if the log does not hold cfg.ID as a voter or learner
// (a removed member, or one that never received anything, has no state
// worth forcing).
func ForceNewCluster(cfg Config, sm StateMachine) error {
	// Nothing may be sent while the state is rewritten, and a Join
	// directory without state must not be created here.
	cfg.Transport, cfg.Join = nil, false
	n, err := Open(cfg, sm)
	if err != nil {
		return fmt.Errorf("force new cluster: %w", err)
	}
	defer func() { _ = n.lock.Close() }()
	err = n.forceNewCluster()
	if cerr := n.wal.close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("force new cluster in %s: %w", n.cfg.DataDir, err)
	}
	return nil
}

// forceNewCluster does ForceNewCluster's rewrite on a loaded, not running
// node (see there for the order and why).
func (n *Node) forceNewCluster() error {
	id := n.cfg.ID
	if !slices.Contains(n.confState.GetVoters(), id) && !slices.Contains(n.confState.GetLearners(), id) {
		return fmt.Errorf("member %d is not in the stored configuration (voters %v, learners %v): %w",
			id, n.confState.GetVoters(), n.confState.GetLearners(), ErrUnknownMember)
	}
	st := n.rn.BasicStatus()
	commit, term := st.HardState.GetCommit(), st.HardState.GetTerm()
	if applied := n.applied.Load(); applied != commit {
		return fmt.Errorf("replay applied index %d, expected the commit index %d", applied, commit)
	}
	commitTerm, err := n.storage.Term(commit)
	if err != nil {
		return fmt.Errorf("term of committed index %d: %w", commit, err)
	}
	last, _ := n.storage.LastIndex() // MemoryStorage never fails

	// 1. Discard the uncommitted suffix, durably, before anything refers
	// to the new configuration.
	newTerm := term + 1
	hs := &raftpb.HardState{Term: new(newTerm), Commit: new(commit)}
	cut := &raftpb.Entry{Term: new(newTerm), Index: new(commit + 1), Type: raftpb.EntryNormal.Enum()}
	if err := n.wal.save(hs, []*raftpb.Entry{cut}, nil, true); err != nil {
		return fmt.Errorf("discard uncommitted entries %d..%d: %w", commit+1, last, err)
	}

	// 2. The snapshot of the new one-member configuration.
	addr := n.cfg.Addr
	if addr == "" {
		addr = n.addrs[id]
	}
	book := map[uint64]string{}
	if addr != "" {
		book[id] = addr
	}
	data, err := n.sm.Snapshot()
	if err != nil {
		return fmt.Errorf("snapshot state machine at index %d: %w", commit, err)
	}
	if data, err = wrapSnapshotData(book, data); err != nil {
		return err
	}
	md := &raftpb.SnapshotMetadata{
		Index:     new(commit),
		Term:      new(commitTerm),
		ConfState: &raftpb.ConfState{Voters: []uint64{id}},
	}
	if err := saveSnapshot(n.cfg.DataDir, &raftpb.Snapshot{Data: data, Metadata: md}); err != nil {
		return err
	}

	// 3. A fresh segment that records both; its first index must not go
	// below its predecessor's (which uncommitted entries may have pushed
	// past commit+2).
	n.wal.snap = md
	next := max(commit+2, n.wal.segs[len(n.wal.segs)-1].first)
	if err := n.wal.cut(next); err != nil {
		return err
	}
	if err := n.wal.releaseTo(commit); err != nil {
		return err
	}
	if err := purgeSnapshots(n.cfg.DataDir, snapshotsKept, n.log); err != nil {
		n.log.Warn("delete old snapshots", "err", err)
	}
	n.log.Warn("forced a new one-member cluster from this member's state",
		"id", id, "addr", addr, "commit", commit, "term", newTerm,
		"discarded_uncommitted", last-commit, "old_voters", n.confState.GetVoters())
	return nil
}

// BootstrapFromSnapshot creates a brand-new one-member group in an empty
// cfg.DataDir whose first snapshot (index 1) holds data as the state
// machine's data, so Open restores the state machine from it: a cluster
// restored from a backup. It fails with ErrExists if the directory holds
// raft state. See BootstrapFromSnapshotAt to choose the index.
func BootstrapFromSnapshot(cfg Config, data []byte) error {
	return BootstrapFromSnapshotAt(cfg, 1, data)
}

// BootstrapFromSnapshotAt is BootstrapFromSnapshot with the snapshot at
// log index index (at least 1), so the new log continues above it: a state
// machine that stamps objects with the log index (as the manager store
// does) keeps its indexes increasing across the restore.
//
// The snapshot file is written first and the WAL segment that refers to it
// last, so an interrupted call leaves either a usable directory or one
// with a snapshot and no segment, which Open and this function refuse
// (ErrCorrupt, ErrExists): remove the directory and run it again.
func BootstrapFromSnapshotAt(cfg Config, index uint64, data []byte) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if index == 0 {
		return errors.New("bootstrap raft from snapshot: index must be at least 1")
	}
	dir := cfg.DataDir
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return fmt.Errorf("bootstrap raft from snapshot in %s: %w", dir, err)
	}
	if err := syncDir(filepath.Dir(filepath.Clean(dir))); err != nil {
		return fmt.Errorf("bootstrap raft from snapshot in %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return fmt.Errorf("bootstrap raft from snapshot: %w", err)
	}
	defer lock.Close()
	st, err := scanDir(dir)
	if err != nil {
		return fmt.Errorf("bootstrap raft from snapshot: %w", err)
	}
	if len(st.segments) > 0 || len(st.snaps) > 0 {
		return fmt.Errorf("bootstrap raft from snapshot in %s: %w", dir, ErrExists)
	}
	removeTemps(dir, st.temps, cfg.Logger)

	book := map[uint64]string{}
	if cfg.Addr != "" {
		book[cfg.ID] = cfg.Addr
	}
	wrapped, err := wrapSnapshotData(book, data)
	if err != nil {
		return fmt.Errorf("bootstrap raft from snapshot: %w", err)
	}
	const term = 1 // a new group: nobody has voted in any term yet
	md := &raftpb.SnapshotMetadata{
		Index:     new(index),
		Term:      new(uint64(term)),
		ConfState: &raftpb.ConfState{Voters: []uint64{cfg.ID}},
	}
	if err := saveSnapshot(dir, &raftpb.Snapshot{Data: wrapped, Metadata: md}); err != nil {
		return fmt.Errorf("bootstrap raft from snapshot: %w", err)
	}
	var buf []byte
	if buf, err = appendProto(buf, recSnapshot, md); err != nil {
		return fmt.Errorf("bootstrap raft from snapshot: %w", err)
	}
	hs := &raftpb.HardState{Term: new(uint64(term)), Commit: new(index)}
	if buf, err = appendProto(buf, recHardState, hs); err != nil {
		return fmt.Errorf("bootstrap raft from snapshot: %w", err)
	}
	if err := writeFileAtomic(dir, segmentName(0, index+1), buf); err != nil {
		return fmt.Errorf("bootstrap raft from snapshot: %w", err)
	}
	cfg.Logger.Info("bootstrapped one-member raft group from a snapshot", "dir", dir, "id", cfg.ID,
		"index", index, "bytes", len(data))
	return nil
}
