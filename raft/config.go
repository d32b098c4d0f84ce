package raft

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// Defaults, from DESIGN.md's timings (Raft tick 100 ms, election 1 s: ten
// times faster than Swarm's) and etcd's experience for the rest.
const (
	// DefaultTickInterval is one logical raft tick.
	DefaultTickInterval = 100 * time.Millisecond
	// DefaultElectionTicks makes the election timeout 1 s with the default
	// tick: fast failover while a leader on a busy 2-core host still gets
	// ten heartbeats in before followers give up on it.
	DefaultElectionTicks = 10
	// DefaultHeartbeatTicks sends a heartbeat every tick, the ratio of 10
	// to the election timeout raft's documentation recommends.
	DefaultHeartbeatTicks = 1
	// DefaultSnapshotInterval bounds the log replayed at start to 10,000
	// entries (a few MB for a manager store) without snapshotting the whole
	// state often.
	DefaultSnapshotInterval = 10000
)

// Internal tuning. Not configurable until someone needs it.
const (
	// snapshotCatchUpEntries stay in MemoryStorage below a new snapshot so
	// that a slightly lagging follower catches up from the log instead of
	// being sent the whole snapshot (etcd uses 5,000 for a larger store).
	snapshotCatchUpEntries = 1000
	// snapshotsKept: the newest snapshot, which Open uses, and the one
	// before, kept for an operator's manual recovery.
	snapshotsKept = 2
	// segmentMaxBytes starts a new WAL segment even between snapshots, so
	// no segment grows without bound when commands are large.
	segmentMaxBytes = 64 << 20
	// maxSizePerMsg caps one append message to a follower (etcd's 1 MB):
	// big enough to batch, small enough that a rejected probe is cheap.
	maxSizePerMsg = 1 << 20
	// maxInflightMsgs bounds append messages in flight to one follower
	// (etcd's default); the transport buffers about as many.
	maxInflightMsgs = 256
	// noQuorumElections: how many election timeouts a ReadIndex waits for
	// the leader's answer before failing with ErrNoQuorum. A leader that
	// lost its quorum steps down within two (CheckQuorum marks followers
	// inactive once per election timeout and checks at the next one).
	noQuorumElections = 2
	// learnerReadyPercent: a learner is promoted only once its log has
	// reached this share of the leader's (etcd's rule), so the new voter
	// does not hold up commits while it catches up.
	learnerReadyPercent = 90
	// requestIDLen bytes prefix every proposal's data so the node can hand
	// Apply's result to the proposer waiting for it.
	requestIDLen = 8
)

// MaxProposalSize is the largest command Propose accepts. Every command is
// one WAL record, and a record's length is checked against a fixed maximum
// on read, so a damaged length cannot make Open allocate gigabytes.
const MaxProposalSize = maxRecordLen - 1024 // room for the entry's framing

// StateMachine is what the node replicates. Apply must be deterministic.
// The node calls its methods from one goroutine at a time (Open's, then
// Run's), never concurrently.
type StateMachine interface {
	// Apply applies one committed command at the given log index. A non-nil
	// error means the command was refused deterministically (no state
	// change); it is returned to the proposer waiting on that command on
	// this node. data belongs to the raft log: Apply must not modify it.
	Apply(index uint64, data []byte) error
	// Snapshot returns the full state as of the last applied index.
	Snapshot() ([]byte, error)
	// Restore replaces the whole state with a snapshot's data.
	Restore(data []byte) error
}

// Transport sends raft messages to other members (GRPCTransport does it
// over gRPC). Send is called from the node's loop: it must not
// block for long (queue per peer and drop when full: raft retransmits), and
// must not modify the messages, which may share entries with the log.
type Transport interface {
	Send(ctx context.Context, msgs []*raftpb.Message)
}

// Config configures a Node. Zero durations and counts take the defaults
// above.
type Config struct {
	ID               uint64        // this member's raft id, non-zero
	DataDir          string        // WAL and snapshots live here (created 0700)
	TickInterval     time.Duration // default DefaultTickInterval
	ElectionTicks    int           // default DefaultElectionTicks
	HeartbeatTicks   int           // default DefaultHeartbeatTicks
	SnapshotInterval uint64        // applied entries between snapshots; default DefaultSnapshotInterval
	Logger           *slog.Logger  // nil: discard
	Transport        Transport     // nil: single member, messages to others are dropped

	// Addr is this member's address as other members dial it. Bootstrap
	// records it in the first log entry so that every member learns it
	// (see Members); it is informational otherwise.
	Addr string
	// Join makes Open of a directory without raft state create an empty
	// log and start as a joining member instead of failing with
	// ErrNoState: the node has no configuration, never campaigns, and
	// waits for the leader (which must have added it with AddMember) to
	// send it the log or a snapshot. Ignored when the directory already
	// holds state, so a restarted member simply reopens its log.
	Join bool

	// catchUpEntries overrides snapshotCatchUpEntries (tests: make a new
	// member need a snapshot without writing thousands of entries).
	catchUpEntries uint64
}

// withDefaults fills in defaults and checks what cannot be defaulted.
func (c Config) withDefaults() (Config, error) {
	if c.ID == 0 {
		return c, errors.New("raft config: ID must be non-zero")
	}
	if c.DataDir == "" {
		return c, errors.New("raft config: DataDir is empty")
	}
	if c.TickInterval <= 0 {
		c.TickInterval = DefaultTickInterval
	}
	if c.ElectionTicks <= 0 {
		c.ElectionTicks = DefaultElectionTicks
	}
	if c.HeartbeatTicks <= 0 {
		c.HeartbeatTicks = DefaultHeartbeatTicks
	}
	if c.ElectionTicks <= c.HeartbeatTicks {
		return c, errors.New("raft config: ElectionTicks must be greater than HeartbeatTicks")
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = DefaultSnapshotInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.catchUpEntries == 0 {
		c.catchUpEntries = snapshotCatchUpEntries
	}
	return c, nil
}
