package raft

import (
	"errors"
	"fmt"
)

// Documented errors; check them with errors.Is.
var (
	// ErrNotLeader: this node is not the leader, so the proposal was not
	// made. Retrying on the leader is safe.
	ErrNotLeader = errors.New("raft: not the leader")
	// ErrLeadershipLost: this node lost leadership while the proposal was in
	// flight. The command may or may not be applied later; the caller must
	// find out (for instance by reading the state) before retrying.
	ErrLeadershipLost = errors.New("raft: leadership lost before the proposal was applied")
	// ErrStopped: the node is not running (Run returned).
	ErrStopped = errors.New("raft: node stopped")
	// ErrCorrupt: the log or a snapshot on disk is damaged. The error names
	// the file, the byte offset and what was expected.
	ErrCorrupt = errors.New("raft: corrupt state on disk")
	// ErrExists: Bootstrap found raft state already in the directory.
	ErrExists = errors.New("raft: state already exists")
	// ErrNoState: Open found no raft state in the directory.
	ErrNoState = errors.New("raft: no raft state")
	// ErrLocked: another Node (in this or another process) uses the
	// directory.
	ErrLocked = errors.New("raft: data directory in use")
	// ErrProposalTooLarge: the command exceeds MaxProposalSize.
	ErrProposalTooLarge = errors.New("raft: proposal too large")
)

// corruptf returns an error wrapping ErrCorrupt that names the file and the
// byte offset where the damage was found and says what was expected there.
func corruptf(file string, off int64, format string, args ...any) error {
	return fmt.Errorf("%w: %s at byte offset %d: %s", ErrCorrupt, file, off, fmt.Sprintf(format, args...))
}

// Errors of the multi-member API; check them with errors.Is.
var (
	// ErrNoQuorum: no quorum of voters is reachable. A proposal already
	// accepted by the leader when it found out fails with an error that is
	// both ErrNoQuorum and ErrLeadershipLost: its outcome is unknown (it
	// may still commit once the partition heals). A ReadIndex failing with
	// it read nothing.
	ErrNoQuorum = errors.New("raft: no quorum of voters reachable")
	// ErrQuorumRisk: the membership change was refused because afterwards
	// fewer voters would be reachable than a quorum needs.
	ErrQuorumRisk = errors.New("raft: membership change would leave too few reachable voters for a quorum")
	// ErrUnknownMember: the id is not a member (voter or learner).
	ErrUnknownMember = errors.New("raft: unknown member")
	// ErrLearnerNotReady: the learner has not caught up enough to be
	// promoted yet; retry later.
	ErrLearnerNotReady = errors.New("raft: learner not caught up")
)
