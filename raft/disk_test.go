package raft

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"
)

// walRecords decodes the records of a WAL segment for a test to aim at.
func walRecords(t *testing.T, path string) ([]byte, []record) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs, torn, err := decodeRecords(path, data, true)
	if err != nil || torn >= 0 {
		t.Fatalf("decode %s before damaging it: torn at %d, %v", path, torn, err)
	}
	return data, recs
}

// middleEntry returns the entry record nearest the middle of the file.
func middleEntry(t *testing.T, recs []record) record {
	t.Helper()
	for i := len(recs) / 2; i < len(recs); i++ {
		if recs[i].typ == recEntry && len(recs[i].payload) > 4 {
			return recs[i]
		}
	}
	t.Fatal("no entry record in the second half of the segment")
	return record{}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, filePerm); err != nil {
		t.Fatal(err)
	}
}

func TestDamagedStateOnDisk(t *testing.T) {
	type result struct {
		corrupt  bool   // Open must fail with ErrCorrupt ...
		naming   string // ... naming this text (file, offset); "" is the newest WAL segment
		tornWarn bool   // Open must log a torn-write warning
		sizeBack bool   // the segment must be truncated back to its undamaged size
	}
	tests := []struct {
		name     string
		interval uint64
		damage   func(t *testing.T, dir string) string // returns the text the error must name
		want     result
	}{
		{"flipped byte in the middle of a WAL record", 1000, func(t *testing.T, dir string) string {
			path := newest(t, dir, "wal-")
			data, recs := walRecords(t, path)
			r := middleEntry(t, recs)
			data[r.off+recordHeaderLen+int64(len(r.payload)/2)] ^= 0x40
			writeFile(t, path, data)
			return fmt.Sprintf("%s at byte offset %d", path, r.off)
		}, result{corrupt: true}},
		{"damaged length in a record header", 1000, func(t *testing.T, dir string) string {
			// Points past the end of the file: without the header
			// checksum this would pass for a torn write and lose the
			// records after it.
			path := newest(t, dir, "wal-")
			data, recs := walRecords(t, path)
			r := middleEntry(t, recs)
			data[r.off+1] ^= 0x10
			writeFile(t, path, data)
			return fmt.Sprintf("%s at byte offset %d", path, r.off)
		}, result{corrupt: true}},
		{"last record cut half-way", 1000, func(t *testing.T, dir string) string {
			path := newest(t, dir, "wal-")
			data, recs := walRecords(t, path)
			last := recs[len(recs)-1]
			writeFile(t, path, data[:last.off+(recordHeaderLen+int64(len(last.payload)))/2])
			return ""
		}, result{tornWarn: true}},
		{"half-written unacknowledged entry appended", 1000, func(t *testing.T, dir string) string {
			path := newest(t, dir, "wal-")
			data, _ := walRecords(t, path)
			e, _ := proto.Marshal(&raftpb.Entry{Term: new(uint64(99)), Index: new(uint64(999)), Data: []byte("never acknowledged")})
			rec := appendRecord(nil, recEntry, e)
			writeFile(t, path, append(data, rec[:len(rec)-5]...))
			return ""
		}, result{tornWarn: true, sizeBack: true}},
		{"torn record header appended", 1000, func(t *testing.T, dir string) string {
			path := newest(t, dir, "wal-")
			data, _ := walRecords(t, path)
			writeFile(t, path, append(data, appendRecord(nil, recEntry, []byte("0123456789"))[:9]...))
			return ""
		}, result{tornWarn: true, sizeBack: true}},
		{"zero-filled tail", 1000, func(t *testing.T, dir string) string {
			path := newest(t, dir, "wal-")
			data, _ := walRecords(t, path)
			writeFile(t, path, append(data, make([]byte, 4096)...))
			return ""
		}, result{tornWarn: true, sizeBack: true}},
		{"damaged newest snapshot", 7, func(t *testing.T, dir string) string {
			if n := len(files(t, dir, "snap-")); n != snapshotsKept {
				t.Fatalf("%d snapshots; the test needs an older one Open could wrongly fall back to", n)
			}
			path := newest(t, dir, "snap-")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)/2] ^= 0x01
			writeFile(t, path, data)
			return path
		}, result{corrupt: true}},
		{"missing newest snapshot", 7, func(t *testing.T, dir string) string {
			path := newest(t, dir, "snap-")
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			return filepath.Base(path)
		}, result{corrupt: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, logs := testConfig(t)
			cfg.SnapshotInterval = tc.interval
			want := seq("y", 30)
			r := start(t, cfg)
			propose(t, r.n, want...)
			r.stop(t)
			segPath := newest(t, cfg.DataDir, "wal-")
			undamaged, err := os.Stat(segPath)
			if err != nil {
				t.Fatal(err)
			}

			naming := tc.damage(t, cfg.DataDir)
			n, err := Open(cfg, &listSM{})
			if tc.want.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open: %v, want ErrCorrupt", err)
				}
				if !strings.Contains(err.Error(), naming) {
					t.Errorf("error %q does not name %q", err, naming)
				}
				t.Logf("Open: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Open after a torn write: %v", err)
			}
			_ = n.Run(cancelledCtx())
			if tc.want.tornWarn && !strings.Contains(logs.String(), "torn") {
				t.Errorf("no warning about the torn record in the log:\n%s", logs)
			}
			if fi, err := os.Stat(segPath); err != nil || (tc.want.sizeBack && fi.Size() != undamaged.Size()) {
				t.Errorf("segment size after Open: %v, %v; want the undamaged %d bytes", fi.Size(), err, undamaged.Size())
			}
			// Every acknowledged command is there, and the group goes on.
			r2 := start(t, cfg)
			propose(t, r2.n, "after")
			if got := r2.sm.list(); !slices.Equal(got, append(want, "after")) {
				t.Errorf("after the torn write %q, want every acknowledged command and then \"after\"", got)
			}
		})
	}
}
