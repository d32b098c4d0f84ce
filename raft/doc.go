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
//     ConfState, plus the state machine's data).
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
package raft
