package raft

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	etcdraft "go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// walState is what replaying the WAL found.
type walState struct {
	hs      *raftpb.HardState        // newest hard state (nil: none)
	hsLoc   fileLoc                  // where hs was read
	snap    *raftpb.SnapshotMetadata // newest snapshot marker (nil: none)
	snapLoc fileLoc                  // where snap was read
	ents    []*raftpb.Entry          // the log as last written, contiguous
	locs    []fileLoc                // where each of ents was read
}

// fileLoc names a record for error messages.
type fileLoc struct {
	file string
	off  int64
}

// readWAL replays the segments in order. A torn tail of the final segment
// is truncated away (and logged); any other damage, a missing segment or a
// gap between entries is an error wrapping ErrCorrupt.
func readWAL(dir string, segs []segment, log *slog.Logger) (*walState, error) {
	ws := &walState{}
	var lastIdx uint64 // index of the newest entry (or snapshot) replayed
	haveLast := false
	for i, seg := range segs {
		path := filepath.Join(dir, seg.name)
		if i > 0 && seg.seq != segs[i-1].seq+1 {
			return nil, corruptf(path, 0, "segment %d follows segment %d; expected segment %d (missing)", seg.seq, segs[i-1].seq, segs[i-1].seq+1)
		}
		if i > 0 && seg.first < segs[i-1].first {
			return nil, corruptf(path, 0, "segment starts at index %d, before its predecessor's %d; expected non-decreasing first indexes", seg.first, segs[i-1].first)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read wal segment %s: %w", path, err)
		}
		recs, tornAt, err := decodeRecords(path, data, i == len(segs)-1)
		if err != nil {
			return nil, err
		}
		if tornAt >= 0 {
			log.Warn("truncating torn final wal record left by a crash during an unacknowledged write",
				"file", path, "offset", tornAt, "dropped_bytes", int64(len(data))-tornAt)
			if err := truncateFile(path, tornAt); err != nil {
				return nil, err
			}
		}
		for _, r := range recs {
			switch r.typ {
			case recEntry:
				e := &raftpb.Entry{}
				if err := proto.Unmarshal(r.payload, e); err != nil {
					return nil, corruptf(path, r.off, "entry record does not decode as raftpb.Entry: %v", err)
				}
				idx := e.GetIndex()
				if idx == 0 {
					return nil, corruptf(path, r.off, "entry has index 0; expected an index of at least 1")
				}
				if haveLast && idx > lastIdx+1 {
					return nil, corruptf(path, r.off, "entry index %d follows index %d; expected at most %d (a gap in the log)", idx, lastIdx, lastIdx+1)
				}
				// An index at or below the last one records raft replacing a
				// conflicting suffix of the log: drop the old suffix.
				for len(ws.ents) > 0 && ws.ents[len(ws.ents)-1].GetIndex() >= idx {
					ws.ents = ws.ents[:len(ws.ents)-1]
					ws.locs = ws.locs[:len(ws.locs)-1]
				}
				if n := len(ws.ents); n > 0 && e.GetTerm() < ws.ents[n-1].GetTerm() {
					return nil, corruptf(path, r.off, "entry %d has term %d; expected at least term %d of the entry before it", idx, e.GetTerm(), ws.ents[n-1].GetTerm())
				}
				ws.ents = append(ws.ents, e)
				ws.locs = append(ws.locs, fileLoc{path, r.off})
				lastIdx, haveLast = idx, true
			case recHardState:
				hs := &raftpb.HardState{}
				if err := proto.Unmarshal(r.payload, hs); err != nil {
					return nil, corruptf(path, r.off, "hard state record does not decode as raftpb.HardState: %v", err)
				}
				ws.hs, ws.hsLoc = hs, fileLoc{path, r.off}
			case recSnapshot:
				md := &raftpb.SnapshotMetadata{}
				if err := proto.Unmarshal(r.payload, md); err != nil {
					return nil, corruptf(path, r.off, "snapshot marker does not decode as raftpb.SnapshotMetadata: %v", err)
				}
				// A snapshot beyond the log (received from a leader) replaces
				// the whole log; the next entry follows it.
				if haveLast && md.GetIndex() > lastIdx {
					ws.ents, ws.locs = nil, nil
					lastIdx = md.GetIndex()
				}
				ws.snap, ws.snapLoc = md, fileLoc{path, r.off}
			}
		}
	}
	return ws, nil
}

func truncateFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("truncate %s: %w", path, err)
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("truncate %s to %d bytes: %w", path, size, err)
	}
	return nil
}

// walFile is the open tail segment; *os.File in production, a fault
// injecting wrapper in tests.
type walFile interface {
	Write(p []byte) (int, error)
	Sync() error
	Close() error
}

// walWriter appends to the tail segment. It is used by one goroutine at a
// time. After any write or fsync error it refuses all further writes: the
// file's state is unknown, and continuing after a failed fsync can lose
// acknowledged data (the kernel may have dropped the dirty pages).
type walWriter struct {
	dir    string
	f      walFile
	segs   []segment // live segments, oldest first; the last is f's
	size   int64     // bytes in the tail segment
	buf    []byte    // reused encoding buffer
	hs     *raftpb.HardState
	snap   *raftpb.SnapshotMetadata
	failed error
}

// openWALWriter opens the newest segment for appending. hs and snap are the
// newest hard state and snapshot marker, repeated at the head of every new
// segment.
func openWALWriter(dir string, segs []segment, hs *raftpb.HardState, snap *raftpb.SnapshotMetadata) (*walWriter, error) {
	if len(segs) == 0 {
		return nil, errors.New("open wal: no segment")
	}
	path := filepath.Join(dir, segs[len(segs)-1].name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, filePerm)
	if err != nil {
		return nil, fmt.Errorf("open wal segment %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("open wal segment %s: %w", path, err)
	}
	return &walWriter{dir: dir, f: f, segs: segs, size: fi.Size(), hs: hs, snap: snap}, nil
}

func (w *walWriter) tailPath() string { return filepath.Join(w.dir, w.segs[len(w.segs)-1].name) }

// save appends a snapshot marker (if snap is non-nil), the entries and the
// hard state (if not empty), in that order, in one write, and fsyncs when
// sync is set or a marker was written. It returns only once the records are
// durable (if sync) and is fatal on error.
func (w *walWriter) save(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.SnapshotMetadata, sync bool) error {
	if w.failed != nil {
		return w.failed
	}
	buf := w.buf[:0]
	var err error
	if snap != nil {
		if buf, err = appendProto(buf, recSnapshot, snap); err != nil {
			return err
		}
		sync = true
	}
	// Entries before the hard state: a torn write keeps a prefix, and a
	// commit index must never be durable without the entries it covers.
	for _, e := range ents {
		if buf, err = appendProto(buf, recEntry, e); err != nil {
			return err
		}
	}
	if !etcdraft.IsEmptyHardState(hs) {
		if buf, err = appendProto(buf, recHardState, hs); err != nil {
			return err
		}
	}
	w.buf = buf
	if len(buf) == 0 {
		return nil
	}
	if err := w.write(buf, sync); err != nil {
		return err
	}
	if snap != nil {
		w.snap = snap
	}
	if !etcdraft.IsEmptyHardState(hs) {
		w.hs = proto.Clone(hs).(*raftpb.HardState)
	}
	return nil
}

func (w *walWriter) write(buf []byte, sync bool) error {
	n, err := w.f.Write(buf)
	w.size += int64(n)
	if err != nil {
		w.failed = fmt.Errorf("append %d bytes to wal %s: %w", len(buf), w.tailPath(), err)
		return w.failed
	}
	if sync {
		if err := w.f.Sync(); err != nil {
			w.failed = fmt.Errorf("fsync wal %s: %w", w.tailPath(), err)
			return w.failed
		}
	}
	return nil
}

func appendProto(buf []byte, typ byte, m proto.Message) ([]byte, error) {
	payload, err := proto.Marshal(m)
	if err != nil {
		return buf, fmt.Errorf("encode wal %s record: %w", typeName(typ), err)
	}
	if len(payload) > maxRecordLen {
		return buf, fmt.Errorf("encode wal %s record: %d bytes exceed the maximum %d", typeName(typ), len(payload), maxRecordLen)
	}
	return appendRecord(buf, typ, payload), nil
}

// cut closes the tail segment and starts a new one for entries from index
// next on. The new segment begins with the newest snapshot marker and hard
// state, and is complete and durable before it is used.
func (w *walWriter) cut(next uint64) error {
	if w.failed != nil {
		return w.failed
	}
	if err := w.f.Sync(); err != nil {
		w.failed = fmt.Errorf("fsync wal %s: %w", w.tailPath(), err)
		return w.failed
	}
	if err := w.f.Close(); err != nil {
		w.failed = fmt.Errorf("close wal %s: %w", w.tailPath(), err)
		return w.failed
	}
	w.f = nil
	w.failed = errors.New("wal: segment cut did not complete") // until it does

	var buf []byte
	var err error
	if w.snap != nil {
		if buf, err = appendProto(buf, recSnapshot, w.snap); err != nil {
			return err
		}
	}
	if !etcdraft.IsEmptyHardState(w.hs) {
		if buf, err = appendProto(buf, recHardState, w.hs); err != nil {
			return err
		}
	}
	seg := segment{seq: w.segs[len(w.segs)-1].seq + 1, first: next}
	seg.name = segmentName(seg.seq, seg.first)
	if err := writeFileAtomic(w.dir, seg.name, buf); err != nil {
		w.failed = fmt.Errorf("start wal segment: %w", err)
		return w.failed
	}
	path := filepath.Join(w.dir, seg.name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, filePerm)
	if err != nil {
		w.failed = fmt.Errorf("open wal segment %s: %w", path, err)
		return w.failed
	}
	w.f, w.size, w.failed = f, int64(len(buf)), nil
	w.segs = append(w.segs, seg)
	return nil
}

// releaseTo deletes the oldest segments whose entries are all at or below
// snapIndex, a durable snapshot's index. Segment i holds only entries below
// segment i+1's first index, and segment i+1 repeats the hard state and
// snapshot marker, so nothing else is lost. The tail is never deleted.
func (w *walWriter) releaseTo(snapIndex uint64) error {
	n := 0
	for n < len(w.segs)-1 && w.segs[n+1].first-1 <= snapIndex {
		n++
	}
	if n == 0 {
		return nil
	}
	// Oldest first, each removal durable before the next, so a crash in
	// between leaves a gapless suffix of segments.
	for _, seg := range w.segs[:n] {
		path := filepath.Join(w.dir, seg.name)
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove wal segment %s: %w", path, err)
		}
		w.segs = w.segs[1:]
		if err := syncDir(w.dir); err != nil {
			return err
		}
	}
	return nil
}

// close fsyncs and closes the tail segment.
func (w *walWriter) close() error {
	if w.f == nil {
		return nil
	}
	var err error
	if w.failed == nil {
		err = w.f.Sync()
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	w.f = nil
	if err != nil {
		return fmt.Errorf("close wal %s: %w", w.tailPath(), err)
	}
	return nil
}
