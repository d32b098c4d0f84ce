// Package backup takes consistent online backups of the managers' store and
// restores a cluster from one (`shoal cluster backup FILE` and restore).
//
// A backup file is
//
//	"SHOALBAK1\n"
//	header: one line of JSON (Meta's fields plus "size", the snapshot's
//	        length in bytes), ended by '\n'
//	snapshot: size bytes, a proto-marshalled shoalpb.StoreSnapshot as
//	          store.Snapshot produces it
//	trailer: the 32-byte SHA-256 of header line (with its '\n') and
//	         snapshot
//
// The length in the header makes a truncated file detectable before the
// checksum is even computed, and the checksum catches any altered byte;
// Read refuses both with an error wrapping ErrCorrupt that says what is
// wrong. A backup holds the cluster's CA key and join tokens: whoever
// stores it must protect it like the managers' data directories.
package backup

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/protobuf/proto"

	shoalpb "github.com/shoal-project/shoal/proto"

	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/raft"
)

// Magic opens every backup file; the digit is the format's version.
const Magic = "SHOALBAK1\n"

const (
	// maxHeaderLen bounds the JSON header line: a few short fields need
	// well under 1 KiB, so a longer "line" is a file of another kind.
	maxHeaderLen = 64 << 10
	// maxSnapshotLen bounds the declared snapshot size, so a damaged
	// header cannot make Read allocate without bound. The store lives in
	// every manager's memory; 4 GiB is far beyond any real one.
	maxSnapshotLen = 4 << 30
	// takeAttempts: how often Take re-reads the store when a write is
	// applied between reading its index and its snapshot. Writes arrive
	// at most a few hundred times a second, so a second try almost always
	// sees none.
	takeAttempts = 5
)

// ErrCorrupt: the backup file is truncated, altered or not a backup. The
// error says what is wrong and where.
var ErrCorrupt = errors.New("backup: corrupt backup file")

// Meta describes a backup.
type Meta struct {
	ClusterID    string    `json:"cluster_id"`    // the cluster object's id, "" if the store had none
	Index        uint64    `json:"index"`         // the store's index: every write up to it is in the backup
	TakenAt      time.Time `json:"taken_at"`      // when Take read the store (UTC)
	ShoalVersion string    `json:"shoal_version"` // the version of the shoal that took it (set by the caller)
}

// header is the JSON line of the file.
type header struct {
	Meta
	Size int64 `json:"size"` // snapshot bytes that follow the header line
}

// Write writes a backup of snap (a store snapshot) described by meta to w.
func Write(w io.Writer, snap []byte, meta Meta) error {
	line, err := json.Marshal(header{Meta: meta, Size: int64(len(snap))})
	if err != nil {
		return fmt.Errorf("write backup: encode header: %w", err)
	}
	line = append(line, '\n')
	sum := sha256.New()
	sum.Write(line)
	sum.Write(snap)
	bw := bufio.NewWriter(w)
	bw.WriteString(Magic)
	bw.Write(line)
	bw.Write(snap)
	bw.Write(sum.Sum(nil))
	if err := bw.Flush(); err != nil { // bufio keeps the first write error
		return fmt.Errorf("write backup: %w", err)
	}
	return nil
}

// Read reads and verifies a backup written by Write. A file that is cut
// short, has bytes after its trailer, fails its checksum or does not
// decode is refused with an error wrapping ErrCorrupt; errors of r itself
// are returned wrapped as they are.
func Read(r io.Reader) (snap []byte, meta Meta, err error) {
	br := bufio.NewReader(r)
	magic := make([]byte, len(Magic))
	if n, err := io.ReadFull(br, magic); err != nil {
		return nil, Meta{}, readErr(err, "file ends after %d bytes, inside the %d-byte magic %q", n, len(Magic), Magic)
	}
	if string(magic) != Magic {
		return nil, Meta{}, fmt.Errorf("%w: bad magic %q at byte 0; expected %q (not a shoal backup, or another format version)", ErrCorrupt, magic, Magic)
	}
	line, err := readLine(br)
	if err != nil {
		return nil, Meta{}, err
	}
	var h header
	if err := json.Unmarshal(line[:len(line)-1], &h); err != nil {
		return nil, Meta{}, fmt.Errorf("%w: header line at byte %d does not decode: %v", ErrCorrupt, len(Magic), err)
	}
	if h.Size < 0 || h.Size > maxSnapshotLen {
		return nil, Meta{}, fmt.Errorf("%w: header declares a %d-byte snapshot; expected 0 to %d", ErrCorrupt, h.Size, int64(maxSnapshotLen))
	}
	// Read through a limit rather than allocating h.Size up front: a
	// damaged size on a short file must not allocate gigabytes.
	var data bytes.Buffer
	n, err := io.Copy(&data, io.LimitReader(br, h.Size))
	if err != nil {
		return nil, Meta{}, fmt.Errorf("read backup snapshot: %w", err)
	}
	if n < h.Size {
		return nil, Meta{}, fmt.Errorf("%w: truncated: the file ends after %d of the %d snapshot bytes its header declares", ErrCorrupt, n, h.Size)
	}
	trailer := make([]byte, sha256.Size)
	if k, err := io.ReadFull(br, trailer); err != nil {
		return nil, Meta{}, readErr(err, "truncated: the file ends %d bytes into the %d-byte sha256 trailer", k, sha256.Size)
	}
	if k, err := io.Copy(io.Discard, br); err != nil {
		return nil, Meta{}, fmt.Errorf("read backup: %w", err)
	} else if k > 0 {
		return nil, Meta{}, fmt.Errorf("%w: %d unexpected bytes after the sha256 trailer", ErrCorrupt, k)
	}
	sum := sha256.New()
	sum.Write(line)
	sum.Write(data.Bytes())
	if got := sum.Sum(nil); !bytes.Equal(got, trailer) {
		return nil, Meta{}, fmt.Errorf("%w: sha256 mismatch: the trailer says %x, the header and snapshot hash to %x (the file was altered)", ErrCorrupt, trailer, got)
	}
	if err := proto.Unmarshal(data.Bytes(), &shoalpb.StoreSnapshot{}); err != nil {
		return nil, Meta{}, fmt.Errorf("%w: the snapshot does not decode as a store snapshot: %v", ErrCorrupt, err)
	}
	return data.Bytes(), h.Meta, nil
}

// readLine reads the header line, '\n' included, refusing one longer than
// maxHeaderLen.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxHeaderLen {
			return nil, fmt.Errorf("%w: header line at byte %d is longer than %d bytes", ErrCorrupt, len(Magic), maxHeaderLen)
		}
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			return nil, fmt.Errorf("%w: truncated: the file ends %d bytes into the header line", ErrCorrupt, len(line))
		default:
			return nil, fmt.Errorf("read backup header: %w", err)
		}
	}
}

// readErr turns an io.ReadFull error into ErrCorrupt when the file was
// cut short, and keeps the reader's own errors.
func readErr(err error, format string, args ...any) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
	return fmt.Errorf("read backup: %w", err)
}

// ReadIndexer confirms a linearizable read point (raft.Node implements it).
type ReadIndexer interface {
	ReadIndex(ctx context.Context) error
}

// Take takes an online, consistent backup of s on a running manager: it
// first waits for n.ReadIndex (the store then holds every write committed
// before Take was called, even on a follower), then snapshots s. The
// snapshot is one consistent state of the store; Meta.Index is its index
// (every write up to it is included; should writes keep being applied
// between reading the index and the snapshot takeAttempts times in a row,
// the snapshot may hold a few more). Meta.ShoalVersion is left for the
// caller to fill in.
func Take(ctx context.Context, n ReadIndexer, s *store.Store) ([]byte, Meta, error) {
	if err := n.ReadIndex(ctx); err != nil {
		return nil, Meta{}, fmt.Errorf("take backup: confirm read index: %w", err)
	}
	var meta Meta
	var snap []byte
	for range takeAttempts {
		var before, after uint64
		var clusterID string
		s.View(func(tx store.ReadTx) {
			before = tx.Index()
			clusterID = tx.GetCluster().GetId()
		})
		data, err := s.Snapshot()
		if err != nil {
			return nil, Meta{}, fmt.Errorf("take backup: %w", err)
		}
		s.View(func(tx store.ReadTx) { after = tx.Index() })
		meta = Meta{ClusterID: clusterID, Index: before, TakenAt: time.Now().UTC()}
		snap = data
		if before == after {
			break
		}
	}
	return snap, meta, nil
}

// Restore creates the raft state of a new one-manager cluster in dataDir
// whose store starts as snap (a store snapshot, as Read returns it). The
// manager then starts on dataDir as usual (raft.Open with raftCfg) and
// leads alone; other managers join it afresh.
//
// raftCfg is the new manager's raft configuration (its ID and Addr are
// recorded as the only member); its DataDir is replaced by dataDir.
// Restore refuses, with an error wrapping raft.ErrExists, a dataDir that
// already holds raft state: restoring over a live manager's log would fork
// the cluster.
//
// Everything in the backup is kept as it is: services, tasks (with their
// observed states: the orchestrator reconciles them), nodes, and
// the cluster object with its CA and join tokens, so existing workers
// rejoin with the certificates they hold. Node objects of the old cluster's
// other managers stay too; the operator removes the ones that are gone.
// The new log continues above the highest object version in the backup,
// so versions keep increasing across the restore.
func Restore(dataDir string, raftCfg raft.Config, snap []byte) error {
	var ss shoalpb.StoreSnapshot
	if err := proto.Unmarshal(snap, &ss); err != nil {
		return fmt.Errorf("restore backup: decode store snapshot: %w", err)
	}
	has, err := raft.HasState(dataDir)
	if err != nil {
		return fmt.Errorf("restore backup: %w", err)
	}
	if has {
		return fmt.Errorf("restore backup into %s: %w", dataDir, raft.ErrExists)
	}
	raftCfg.DataDir = dataDir
	if err := raft.BootstrapFromSnapshotAt(raftCfg, max(maxVersion(&ss), 1), snap); err != nil {
		return fmt.Errorf("restore backup: %w", err)
	}
	return nil
}

// maxVersion is the highest object version in ss: the index Store.Restore
// gives the restored store.
func maxVersion(ss *shoalpb.StoreSnapshot) uint64 {
	var v uint64
	for _, o := range ss.GetNodes() {
		v = max(v, o.GetMeta().GetVersion())
	}
	for _, o := range ss.GetServices() {
		v = max(v, o.GetMeta().GetVersion())
	}
	for _, o := range ss.GetTasks() {
		v = max(v, o.GetMeta().GetVersion())
	}
	for _, o := range ss.GetClusters() {
		v = max(v, o.GetMeta().GetVersion())
	}
	return v
}
