// Package raft is Shoal's consensus node: go.etcd.io/raft/v3 driven by one
// goroutine, over a durable, fsync'd, checksummed write-ahead log (WAL) and
// snapshot files of its own.
//
// The library does consensus only; this package owns the disk and, through a
// Transport, the network. Every Ready is handled in etcd's raftexample order:
// save snapshot, append to the WAL (HardState, entries) and fsync, update
// MemoryStorage, send messages, apply committed entries, maybe snapshot and
// compact, Advance. Nothing is sent or applied before it is durable.
//
// # Why a WAL of our own
//
// etcd's server/wal package is the obvious candidate, but it lives in the
// etcd server module and pulls in the whole server (zap, its file utilities,
// the v2/v3 store types) for a few hundred lines of code. The format below is
// small, fully checked on read, and tested against torn writes and bit flips.
//
// # On-disk format
//
// All files live directly in Config.DataDir (created 0700, files 0600):
//
//   - LOCK: flock'd while a Node or Bootstrap uses the directory, so two
//     processes never write one log.
//   - wal-<seq>-<first>.log (16 hex digits each): WAL segments, numbered
//     without gaps. <first> is the index of the first entry the segment was
//     created to hold; every entry of a segment is below the <first> of the
//     next one. A new segment starts with the newest snapshot marker and the
//     current HardState, so older segments can be deleted without losing
//     either.
//   - snap-<term>-<index>.snap: snapshots (raftpb.Snapshot: metadata with the
//     ConfState, plus data: the address book envelope described under
//     Membership, then the state machine's data).
//   - *.tmp: files being written; they are complete only once renamed, and
//     left-over ones are removed by Open.
//
// A WAL segment is a sequence of records, integers little-endian:
//
//	[len u32][crc u32][type u8][hcrc u32][payload: len bytes]
//
// crc is CRC-32C over type and payload; hcrc is CRC-32C over the 9 header
// bytes before it. hcrc makes the length trustworthy: a record whose intact
// header declares more bytes than the file holds is a torn final write (a
// crash during a write that was never acknowledged) and is truncated away
// with a warning, while a damaged header or a complete record with a bad
// checksum is corruption and makes Open fail with ErrCorrupt. A tail of zero
// bytes (file size grown, data never written) also counts as torn. Record
// types: 1 entry (raftpb.Entry), 2 hard state (raftpb.HardState), 3 snapshot
// marker (raftpb.SnapshotMetadata).
//
// A snapshot file is
//
//	["shoalsn1"][len u64][crc u32][payload: len bytes of raftpb.Snapshot]
//
// with crc the CRC-32C of the payload. It is written to a temporary file,
// fsync'd, renamed and its directory fsync'd before anything relies on it.
//
// # Compaction
//
// Every Config.SnapshotInterval applied entries the state machine is
// snapshotted, MemoryStorage keeps the last snapshotCatchUpEntries entries
// before the snapshot for lagging followers, and a new WAL segment begins.
// A segment is deleted only when all its entries are at or below a durable
// snapshot; the newest snapshotsKept snapshots are kept. Open always uses
// the newest snapshot: a damaged one is reported, never silently replaced by
// an older one the remaining log may no longer extend.
//
// # Membership
//
// A group starts as one member (Bootstrap, recording Config.Addr). Other
// members start with Config.Join on an empty directory: Open creates an
// empty log and the node waits, without a configuration and never
// campaigning, for the leader to send it the log or a snapshot. The leader
// adds them with AddMember (as a learner first, then PromoteMember, is the
// safe order: a voter that is still catching up counts toward the quorum)
// and removes them with RemoveMember or DemoteMember, which refuse with
// ErrQuorumRisk a change after which the voters the leader recently heard
// from would not form a quorum. Each change is one ConfChangeV2 proposal
// whose Context (JSON {"req":..,"addr":..}) carries the member's address
// and the proposer's request id; the calls return once it is applied.
//
// Every member builds its address book from the conf changes it applies,
// so Members answers the same everywhere. Compaction drops those entries,
// so snapshot data carries the book: "shoalmb1", a u32 little-endian
// length, the book as JSON (id -> address), then the state machine's data.
// Data without the prefix (older snapshots) is the state machine's alone.
// A leader sending a snapshot to a follower replaces raft's stored one by
// one of its current applied state (as etcd's server does): a member added
// after the stored snapshot is not in its ConfState and could not use it.
//
// # Transport
//
// GRPCTransport implements Transport over the Raft service of
// proto/raft_transport.proto: one goroutine, bounded queue and long-lived
// stream per peer, messages chunked (1 MiB) and reassembled, snapshots on
// a stream of their own whose acknowledgement is reported to raft.
//
// # Reads and lost quorum
//
// ReadIndex implements linearizable reads with raft's ReadIndex (quorum
// confirmed, ReadOnlySafe). Without a quorum, CheckQuorum makes a leader
// step down within two election timeouts; the proposals pending on it then
// fail with ErrNoQuorum (also ErrLeadershipLost: outcome unknown), and a
// ReadIndex without an answer fails with ErrNoQuorum after as long.
package raft
