package raft

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	etcdraft "go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Node is one member of a raft group: the etcd raft state machine, its
// durable log, and the replicated StateMachine. Create it with Open, then
// call Run once. Its other methods are safe for concurrent use.
type Node struct {
	cfg Config
	log *slog.Logger
	sm  StateMachine

	// Owned by the goroutine in Open, then by Run's; never shared.
	rn           *etcdraft.RawNode
	storage      *etcdraft.MemoryStorage
	wal          *walWriter
	lock         *os.File // flock on the data dir, released when Run returns
	confState    *raftpb.ConfState
	raftState    etcdraft.StateType
	catchUp      uint64 // leadership is announced once applied reaches this index
	snapIndex    uint64 // index of the newest durable snapshot
	snapFailed   uint64 // applied index of the last failed snapshot attempt
	campaigned   bool   // campaignTerm is valid
	campaignTerm uint64 // term in which this node last campaigned on its own

	propc   chan proposal
	stepc   chan *raftpb.Message
	ctlc    chan func()   // functions to run in the loop (membership, reads, reports)
	confSem chan struct{} // one membership change at a time
	// pendingReads (loop-owned) are read states whose index is not yet
	// applied.
	pendingReads []pendingRead
	done         chan struct{} // closed once Run has stopped everything
	running      atomic.Bool   // Run was called

	applied  atomic.Uint64
	leader   atomic.Uint64
	isLeader atomic.Bool // written only with mu held, with the subscribers told
	reqBase  uint64      // random per Open, so request ids differ across restarts
	reqSeq   atomic.Uint64

	mu      sync.Mutex // guards following
	stopped bool
	waiters map[uint64]chan error // request id -> proposer waiting for Apply's result
	subs    map[*leaderSub]struct{}
	addrs   map[uint64]string      // address book, changed only by the loop
	members []Member               // Members' answer, recomputed by the loop
	reads   map[uint64]chan uint64 // ReadIndex request id -> waiter for the read index
}

// Open loads the durable state in cfg.DataDir and returns a node ready to
// Run. The newest snapshot is given to sm.Restore, then every entry the
// durable log records as committed is applied to sm, so sm holds the
// replicated state when Open returns; entries whose commit was not yet
// durable are applied by Run. sm must be empty (fresh) when Open is called.
//
// A damaged log or snapshot makes Open fail with an error wrapping
// ErrCorrupt that names the file and byte offset and says what was
// expected; it never silently drops data. A torn final record (the file ends
// before the record's declared length: a crash in the middle of the last,
// never-acknowledged write) is truncated away with a warning. Open fails
// with ErrNoState when the directory holds no raft state (unless
// cfg.Join: then it creates an empty log for a joining member, see
// Config.Join) and ErrLocked when another Node uses it.
//
// The node holds the directory's lock and the open log until Run returns; a
// node that will not be run should be released by calling Run with a
// cancelled context.
func Open(cfg Config, sm StateMachine) (_ *Node, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if sm == nil {
		return nil, errors.New("open raft: nil state machine")
	}
	dir := cfg.DataDir
	if has, err := HasState(dir); err != nil {
		return nil, fmt.Errorf("open raft: %w", err)
	} else if !has && !cfg.Join {
		return nil, fmt.Errorf("open raft in %s: %w", dir, ErrNoState)
	} else if !has {
		if err := createJoinLog(cfg); err != nil {
			return nil, fmt.Errorf("open raft as a joining member: %w", err)
		}
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open raft: %w", err)
	}
	n := &Node{cfg: cfg, log: cfg.Logger, sm: sm, lock: lock}
	defer func() {
		if err != nil {
			if n.wal != nil {
				_ = n.wal.close()
			}
			_ = lock.Close()
		}
	}()
	if err := n.load(); err != nil {
		return nil, fmt.Errorf("open raft in %s: %w", dir, err)
	}
	return n, nil
}

// load rebuilds the node from disk: snapshot, log, raft, state machine.
func (n *Node) load() error {
	dir := n.cfg.DataDir
	st, err := scanDir(dir)
	if err != nil {
		return err
	}
	removeTemps(dir, st.temps, n.log)
	if len(st.segments) == 0 {
		return fmt.Errorf("%w: %s: snapshots but no wal segment; expected at least one wal-*.log", ErrCorrupt, dir)
	}
	ws, err := readWAL(dir, st.segments, n.log)
	if err != nil {
		return err
	}
	snap, err := chooseSnapshot(dir, st.snaps, ws)
	if err != nil {
		return err
	}
	ents, hs, err := checkLog(ws, snap)
	if err != nil {
		return err
	}

	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return fmt.Errorf("seed request ids: %w", err)
	}
	n.reqBase = binary.LittleEndian.Uint64(seed[:])
	n.propc = make(chan proposal)
	// Buffered so that messages arriving while a Ready is written queue up
	// and are then stepped together (drainSteps): one fsync for the burst.
	n.stepc = make(chan *raftpb.Message, maxProposalBatch)
	n.ctlc = make(chan func())
	n.confSem = make(chan struct{}, 1)
	n.done = make(chan struct{})
	n.waiters = make(map[uint64]chan error)
	n.subs = make(map[*leaderSub]struct{})
	n.addrs = make(map[uint64]string)
	n.reads = make(map[uint64]chan uint64)

	n.storage = etcdraft.NewMemoryStorage()
	n.confState = &raftpb.ConfState{}
	if snap != nil {
		if err := n.storage.ApplySnapshot(snap); err != nil {
			return fmt.Errorf("load snapshot at index %d: %w", snap.GetMetadata().GetIndex(), err)
		}
		if err := n.restoreSnapshot(snap); err != nil {
			return fmt.Errorf("restore state machine from snapshot at index %d: %w", snap.GetMetadata().GetIndex(), err)
		}
		n.snapIndex = snap.GetMetadata().GetIndex()
		n.applied.Store(n.snapIndex)
	}
	if err := n.storage.SetHardState(hs); err != nil {
		return fmt.Errorf("load hard state: %w", err)
	}
	if err := n.storage.Append(ents); err != nil {
		return fmt.Errorf("load %d log entries: %w", len(ents), err)
	}

	n.rn, err = etcdraft.NewRawNode(&etcdraft.Config{
		ID:            n.cfg.ID,
		ElectionTick:  n.cfg.ElectionTicks,
		HeartbeatTick: n.cfg.HeartbeatTicks,
		Storage:       n.storage,
		// Committed entries after the snapshot are handed out again and
		// re-applied: the state machine is in memory, rebuilt at each Open.
		Applied:         n.snapIndex,
		MaxSizePerMsg:   maxSizePerMsg,
		MaxInflightMsgs: maxInflightMsgs,
		// Both as in Swarm and etcd: a partitioned leader steps down, and a
		// rejoining member cannot disrupt the group with a higher term.
		CheckQuorum:       true,
		PreVote:           true,
		StepDownOnRemoval: true,
		Logger:            raftLogger{n.log},
	})
	if err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	n.raftState = etcdraft.StateFollower
	n.wal, err = openWALWriter(dir, st.segments, hs, ws.snap)
	if err != nil {
		return err
	}
	// Replay: raft hands out the committed entries after the snapshot; the
	// same Ready handling as Run's applies them (nothing else is pending
	// for a follower that has just started, so nothing is written or sent).
	for n.rn.HasReady() {
		if err := n.handleReady(context.Background()); err != nil {
			return fmt.Errorf("replay log: %w", err)
		}
	}
	n.log.Info("raft state loaded", "dir", dir, "id", n.cfg.ID, "snapshot_index", n.snapIndex,
		"entries", len(ents), "term", hs.GetTerm(), "commit", hs.GetCommit(), "applied", n.applied.Load())
	return nil
}

// chooseSnapshot returns the newest snapshot, verified, or nil when there
// is none. It never falls back to an older one: the log may no longer reach
// back to it, and a silent fallback would hide the damage.
func chooseSnapshot(dir string, snaps []snapFile, ws *walState) (*raftpb.Snapshot, error) {
	var marker uint64
	if ws.snap != nil {
		marker = ws.snap.GetIndex()
	}
	if len(snaps) == 0 {
		if marker > 0 {
			return nil, corruptf(ws.snapLoc.file, ws.snapLoc.off, "the log records a snapshot at term %d index %d; expected file %s, which does not exist",
				ws.snap.GetTerm(), marker, snapName(ws.snap.GetTerm(), marker))
		}
		return nil, nil
	}
	newest := snaps[len(snaps)-1]
	if newest.index < marker {
		return nil, corruptf(ws.snapLoc.file, ws.snapLoc.off, "the log records a snapshot at term %d index %d; expected file %s, but the newest snapshot is %s",
			ws.snap.GetTerm(), marker, snapName(ws.snap.GetTerm(), marker), newest.name)
	}
	if newest.index == marker && newest.term != ws.snap.GetTerm() {
		return nil, corruptf(ws.snapLoc.file, ws.snapLoc.off, "the log records a snapshot at term %d index %d; the snapshot file at that index is %s",
			ws.snap.GetTerm(), marker, newest.name)
	}
	// A snapshot newer than the newest marker is one whose marker a crash
	// prevented: it is complete (written through rename) and covers only
	// committed entries, so it is valid.
	return loadSnapshot(dir, newest)
}

// checkLog returns the entries after snap and the hard state, after checking
// that the log continues the snapshot without a gap and agrees with it.
func checkLog(ws *walState, snap *raftpb.Snapshot) ([]*raftpb.Entry, *raftpb.HardState, error) {
	snapIndex, snapTerm := snap.GetMetadata().GetIndex(), snap.GetMetadata().GetTerm()
	ents, locs := ws.ents, ws.locs
	k := 0
	for k < len(ents) && ents[k].GetIndex() <= snapIndex {
		if ents[k].GetIndex() == snapIndex && ents[k].GetTerm() != snapTerm {
			return nil, nil, corruptf(locs[k].file, locs[k].off, "entry %d has term %d; expected term %d of the snapshot at that index", snapIndex, ents[k].GetTerm(), snapTerm)
		}
		k++
	}
	ents, locs = ents[k:], locs[k:]
	if len(ents) > 0 && ents[0].GetIndex() != snapIndex+1 {
		return nil, nil, corruptf(locs[0].file, locs[0].off, "first log entry after the snapshot at index %d has index %d; expected %d (the log does not reach back to the snapshot)",
			snapIndex, ents[0].GetIndex(), snapIndex+1)
	}
	last := snapIndex
	if len(ents) > 0 {
		last = ents[len(ents)-1].GetIndex()
	}
	hs := &raftpb.HardState{}
	if ws.hs != nil {
		hs = proto.Clone(ws.hs).(*raftpb.HardState)
	}
	if hs.GetCommit() > last {
		return nil, nil, corruptf(ws.hsLoc.file, ws.hsLoc.off, "the hard state commits index %d but the log ends at index %d; expected every committed entry on disk", hs.GetCommit(), last)
	}
	if hs.GetCommit() < snapIndex {
		// The snapshot holds only committed entries; a commit index that
		// was not yet fsync'd when it was taken is simply behind.
		hs.Commit = new(snapIndex)
	}
	return ents, hs, nil
}

// IsLeader reports whether this node is the leader and has applied every
// entry committed before its term, so its state machine is current.
func (n *Node) IsLeader() bool { return n.isLeader.Load() }

// Leader returns the current leader's id, 0 when unknown.
func (n *Node) Leader() uint64 { return n.leader.Load() }

// AppliedIndex returns the index of the last entry applied to the state
// machine.
func (n *Node) AppliedIndex() uint64 { return n.applied.Load() }
