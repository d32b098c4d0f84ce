package raft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

const (
	snapMagic     = "shoalsn1"
	snapHeaderLen = len(snapMagic) + 8 + 4 // magic, len u64, crc u32
)

// saveSnapshot writes snap durably as snap-<term>-<index>.snap in dir.
func saveSnapshot(dir string, snap *raftpb.Snapshot) error {
	md := snap.GetMetadata()
	payload, err := proto.Marshal(snap)
	if err != nil {
		return fmt.Errorf("encode snapshot at index %d: %w", md.GetIndex(), err)
	}
	buf := make([]byte, snapHeaderLen, snapHeaderLen+len(payload))
	copy(buf, snapMagic)
	binary.LittleEndian.PutUint64(buf[8:16], uint64(len(payload)))
	binary.LittleEndian.PutUint32(buf[16:20], crc32.Checksum(payload, crcTable))
	buf = append(buf, payload...)
	if err := writeFileAtomic(dir, snapName(md.GetTerm(), md.GetIndex()), buf); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	return nil
}

// loadSnapshot reads and verifies one snapshot file. Any damage is an error
// wrapping ErrCorrupt naming the file and offset.
func loadSnapshot(dir string, sf snapFile) (*raftpb.Snapshot, error) {
	path := filepath.Join(dir, sf.name)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	if len(data) < snapHeaderLen {
		return nil, corruptf(path, int64(len(data)), "file ends inside the %d-byte snapshot header", snapHeaderLen)
	}
	if string(data[:8]) != snapMagic {
		return nil, corruptf(path, 0, "bad magic %q; expected %q", data[:8], snapMagic)
	}
	n := binary.LittleEndian.Uint64(data[8:16])
	if have := uint64(len(data) - snapHeaderLen); n != have {
		return nil, corruptf(path, 8, "header declares %d payload bytes; the file holds %d", n, have)
	}
	payload := data[snapHeaderLen:]
	want := binary.LittleEndian.Uint32(data[16:20])
	if got := crc32.Checksum(payload, crcTable); got != want {
		return nil, corruptf(path, int64(snapHeaderLen), "snapshot checksum mismatch: header says crc32c %#08x, computed %#08x over %d payload bytes", want, got, n)
	}
	snap := &raftpb.Snapshot{}
	if err := proto.Unmarshal(payload, snap); err != nil {
		return nil, corruptf(path, int64(snapHeaderLen), "payload does not decode as raftpb.Snapshot: %v", err)
	}
	md := snap.GetMetadata()
	if md.GetIndex() != sf.index || md.GetTerm() != sf.term {
		return nil, corruptf(path, int64(snapHeaderLen), "snapshot metadata says term %d index %d; expected term %d index %d from the file name", md.GetTerm(), md.GetIndex(), sf.term, sf.index)
	}
	return snap, nil
}

// purgeSnapshots deletes all but the newest keep snapshot files. Failures
// are logged: an extra old file costs disk space, not correctness.
func purgeSnapshots(dir string, keep int, log *slog.Logger) error {
	st, err := scanDir(dir)
	if err != nil {
		return err
	}
	if len(st.snaps) <= keep {
		return nil
	}
	for _, sf := range st.snaps[:len(st.snaps)-keep] {
		path := filepath.Join(dir, sf.name)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("remove old snapshot", "file", path, "err", err)
		}
	}
	return syncDir(dir)
}
