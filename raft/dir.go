package raft

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

const (
	lockFileName = "LOCK"
	tmpSuffix    = ".tmp"
	dirPerm      = 0o700 // raft state holds secrets (encrypted) and the CA: owner only
	filePerm     = 0o600
)

// segment is a WAL segment file.
type segment struct {
	seq   uint64 // position in the log, consecutive from the oldest kept
	first uint64 // index of the first entry it was created to hold
	name  string // base name
}

func segmentName(seq, first uint64) string { return fmt.Sprintf("wal-%016x-%016x.log", seq, first) }

// snapFile is a snapshot file.
type snapFile struct {
	term, index uint64
	name        string // base name
}

func snapName(term, index uint64) string { return fmt.Sprintf("snap-%016x-%016x.snap", term, index) }

// dirState is what a data directory holds, oldest first.
type dirState struct {
	segments []segment
	snaps    []snapFile
	temps    []string // base names of left-over temporary files
}

// scanDir lists the raft files in dir. A missing dir is an empty one.
func scanDir(dir string) (dirState, error) {
	var st dirState
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("list raft dir %s: %w", dir, err)
	}
	for _, de := range des {
		name := de.Name()
		var a, b uint64
		switch {
		case strings.HasSuffix(name, tmpSuffix):
			st.temps = append(st.temps, name)
		case strings.HasPrefix(name, "wal-"):
			if _, err := fmt.Sscanf(name, "wal-%016x-%016x.log", &a, &b); err != nil || name != segmentName(a, b) {
				return st, fmt.Errorf("%w: %s: unexpected file name; expected wal-<seq>-<first>.log with 16 hex digits each", ErrCorrupt, filepath.Join(dir, name))
			}
			st.segments = append(st.segments, segment{seq: a, first: b, name: name})
		case strings.HasPrefix(name, "snap-"):
			if _, err := fmt.Sscanf(name, "snap-%016x-%016x.snap", &a, &b); err != nil || name != snapName(a, b) {
				return st, fmt.Errorf("%w: %s: unexpected file name; expected snap-<term>-<index>.snap with 16 hex digits each", ErrCorrupt, filepath.Join(dir, name))
			}
			st.snaps = append(st.snaps, snapFile{term: a, index: b, name: name})
		}
	}
	sort.Slice(st.segments, func(i, j int) bool { return st.segments[i].seq < st.segments[j].seq })
	sort.Slice(st.snaps, func(i, j int) bool {
		if st.snaps[i].index != st.snaps[j].index {
			return st.snaps[i].index < st.snaps[j].index
		}
		return st.snaps[i].term < st.snaps[j].term
	})
	return st, nil
}

// HasState reports whether dataDir holds raft state (so the daemon knows
// whether to start a manager). A missing directory holds none.
func HasState(dataDir string) (bool, error) {
	st, err := scanDir(dataDir)
	if err != nil {
		return false, err
	}
	return len(st.segments) > 0 || len(st.snaps) > 0, nil
}

// lockDir takes an exclusive flock on dir's LOCK file. Closing the returned
// file releases it.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_CREATE|os.O_RDWR, filePerm)
	if err != nil {
		return nil, fmt.Errorf("lock raft dir %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock raft dir %s: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("lock raft dir %s: %w", dir, err)
	}
	return f, nil
}

// syncDir fsyncs a directory so that creates, renames and removes in it are
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

// writeFileAtomic writes data to dir/name through a temporary file that is
// fsync'd and renamed, then fsyncs dir: afterwards the file is either
// durable and complete or absent.
func writeFileAtomic(dir, name string, data []byte) error {
	path := filepath.Join(dir, name)
	tmp := path + tmpSuffix
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, filePerm)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

// Bootstrap creates a brand-new one-member group in cfg.DataDir: a first
// WAL segment whose only entry (index 1, term 1, committed) adds cfg.ID as
// the sole voter, as raft's own RawNode.Bootstrap would. No snapshot is
// written, so the state machine never has to Restore an empty state. It
// fails with ErrExists if DataDir already holds raft state.
func Bootstrap(cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	dir := cfg.DataDir
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return fmt.Errorf("bootstrap raft in %s: %w", dir, err)
	}
	// The parent's entry for dir must be durable too.
	if err := syncDir(filepath.Dir(filepath.Clean(dir))); err != nil {
		return fmt.Errorf("bootstrap raft in %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return fmt.Errorf("bootstrap raft: %w", err)
	}
	defer lock.Close()
	st, err := scanDir(dir)
	if err != nil {
		return fmt.Errorf("bootstrap raft: %w", err)
	}
	if len(st.segments) > 0 || len(st.snaps) > 0 {
		return fmt.Errorf("bootstrap raft in %s: %w", dir, ErrExists)
	}
	removeTemps(dir, st.temps, cfg.Logger)

	var cctx []byte
	if cfg.Addr != "" {
		if cctx, err = json.Marshal(confContext{Addr: cfg.Addr}); err != nil {
			return fmt.Errorf("bootstrap raft: encode conf change context: %w", err)
		}
	}
	cc, err := proto.Marshal(&raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(cfg.ID), Context: cctx})
	if err != nil {
		return fmt.Errorf("bootstrap raft: encode conf change: %w", err)
	}
	ent, err := proto.Marshal(&raftpb.Entry{Term: new(uint64(1)), Index: new(uint64(1)), Type: raftpb.EntryConfChange.Enum(), Data: cc})
	if err != nil {
		return fmt.Errorf("bootstrap raft: encode entry: %w", err)
	}
	hs, err := proto.Marshal(&raftpb.HardState{Term: new(uint64(1)), Commit: new(uint64(1))})
	if err != nil {
		return fmt.Errorf("bootstrap raft: encode hard state: %w", err)
	}
	var buf []byte
	buf = appendRecord(buf, recHardState, hs)
	buf = appendRecord(buf, recEntry, ent)
	if err := writeFileAtomic(dir, segmentName(0, 1), buf); err != nil {
		return fmt.Errorf("bootstrap raft: %w", err)
	}
	cfg.Logger.Info("bootstrapped one-member raft group", "dir", dir, "id", cfg.ID)
	return nil
}

// removeTemps deletes temporary files a crash left behind: they were never
// renamed into place, so nothing relies on them.
func removeTemps(dir string, temps []string, log *slog.Logger) {
	for _, name := range temps {
		path := filepath.Join(dir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("remove left-over temporary file", "file", path, "err", err)
			continue
		}
		log.Warn("removed left-over temporary file from an interrupted write", "file", path)
	}
}

// createJoinLog creates cfg.DataDir holding an empty first WAL segment:
// the state of a member that has not received anything yet (see
// Config.Join). The leader's appends (or snapshot) fill it.
func createJoinLog(cfg Config) error {
	dir := cfg.DataDir
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := syncDir(filepath.Dir(filepath.Clean(dir))); err != nil {
		return err
	}
	lock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer lock.Close()
	st, err := scanDir(dir)
	if err != nil {
		return err
	}
	if len(st.segments) > 0 || len(st.snaps) > 0 {
		return nil // created meanwhile: open it
	}
	removeTemps(dir, st.temps, cfg.Logger)
	if err := writeFileAtomic(dir, segmentName(0, 1), nil); err != nil {
		return err
	}
	cfg.Logger.Info("created empty raft log for a joining member", "dir", dir, "id", cfg.ID)
	return nil
}
