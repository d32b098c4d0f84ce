package backup

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	shoalpb "github.com/shoal-project/shoal/proto"

	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/raft"
)

func service(id, name string) *shoalpb.Service {
	return &shoalpb.Service{Id: id, Spec: &shoalpb.ServiceSpec{
		Name:      name,
		Container: &shoalpb.ContainerSpec{Image: "busybox"},
	}}
}

// newStore returns a store applying through a LocalProposer, holding a
// cluster object and the given services (each with one task).
func newStore(t *testing.T, services ...string) *store.Store {
	t.Helper()
	s := store.New()
	s.SetProposer(store.NewLocalProposer(s))
	update(t, s, func(b *store.Batch) {
		b.CreateCluster(&shoalpb.Cluster{Id: "cl-1", Spec: &shoalpb.ClusterSpec{Name: "prod"}})
	})
	for _, name := range services {
		update(t, s, func(b *store.Batch) {
			b.CreateService(service("svc-"+name, name))
			b.CreateTask(&shoalpb.Task{Id: "task-" + name, ServiceId: "svc-" + name, NodeId: "node-1",
				DesiredState: shoalpb.TaskState_TASK_STATE_RUNNING})
		})
	}
	return s
}

func update(t *testing.T, s *store.Store, fn func(b *store.Batch)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.Update(ctx, func(_ store.ReadTx, b *store.Batch) error { fn(b); return nil })
	if err != nil {
		t.Fatalf("store update: %v", err)
	}
}

func services(s *store.Store) []*shoalpb.Service {
	var out []*shoalpb.Service
	s.View(func(tx store.ReadTx) { out = tx.ListServices() })
	return out
}

func sameServices(t *testing.T, got, want []*shoalpb.Service) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d services, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("service %d is %v, want %v", i, got[i], want[i])
		}
	}
}

// fakeNode stands in for the raft node: its ReadIndex runs onRead (as if
// the read point waited for a write committed meanwhile).
type fakeNode struct {
	err    error
	onRead func()
	calls  int
}

func (f *fakeNode) ReadIndex(ctx context.Context) error {
	f.calls++
	if f.onRead != nil {
		f.onRead()
	}
	return f.err
}

var testMeta = Meta{ClusterID: "cl-1", Index: 42, TakenAt: time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC), ShoalVersion: "0.1.0-test"}

func TestRoundTrip(t *testing.T) {
	populated, err := newStore(t, "web", "db").Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		snap []byte
	}{
		{"empty store", nil},
		{"populated store", populated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := Write(&buf, tc.snap, testMeta); err != nil {
				t.Fatalf("Write: %v", err)
			}
			if !bytes.HasPrefix(buf.Bytes(), []byte(Magic)) {
				t.Errorf("file starts with %q, want the magic %q", buf.Bytes()[:min(buf.Len(), 10)], Magic)
			}
			snap, meta, err := Read(&buf)
			if err != nil {
				t.Fatalf("Read: %v", err)
			}
			if !bytes.Equal(snap, tc.snap) {
				t.Errorf("Read returned %d snapshot bytes, want the %d written", len(snap), len(tc.snap))
			}
			if meta.ClusterID != testMeta.ClusterID || meta.Index != testMeta.Index ||
				!meta.TakenAt.Equal(testMeta.TakenAt) || meta.ShoalVersion != testMeta.ShoalVersion {
				t.Errorf("Read meta %+v, want %+v", meta, testMeta)
			}
		})
	}
}

func TestReadRefusesDamagedFile(t *testing.T) {
	snap, err := newStore(t, "web", "db").Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, snap, testMeta); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	headerEnd := len(Magic) + bytes.IndexByte(good[len(Magic):], '\n') // the header line's '\n'
	dataStart := headerEnd + 1
	idInHeader := bytes.Index(good, []byte(`"cl-1"`)) + 1

	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0x01
		return b
	}
	tests := []struct {
		name string
		file []byte
		want string // in the error message
	}{
		{"empty file", nil, "inside the 10-byte magic"},
		{"truncated in magic", good[:4], "inside the 10-byte magic"},
		{"not a backup", []byte("SHOALXXX9\n{}\n"), "bad magic"},
		{"truncated in header", good[:headerEnd-3], "into the header line"},
		{"truncated in snapshot", good[:dataStart+len(snap)/2], "truncated: the file ends after"},
		{"truncated in trailer", good[:len(good)-5], "into the 32-byte sha256 trailer"},
		{"trailing bytes", append(bytes.Clone(good), "extra"...), "5 unexpected bytes after the sha256 trailer"},
		{"flipped byte in header", flip(idInHeader), "sha256 mismatch"},
		{"flipped byte in snapshot", flip(dataStart + len(snap)/2), "sha256 mismatch"},
		{"flipped byte in trailer", flip(len(good) - 1), "sha256 mismatch"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Read(bytes.NewReader(tc.file))
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Read: %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Read error %q does not say %q", err, tc.want)
			}
		})
	}
}

func TestTake(t *testing.T) {
	t.Run("read index before snapshot", func(t *testing.T) {
		s := newStore(t, "web")
		// A write committed before Take was called but applied here only
		// while ReadIndex waits: a consistent backup must hold it.
		n := &fakeNode{onRead: func() {
			update(t, s, func(b *store.Batch) { b.CreateService(service("svc-late", "late")) })
		}}
		snap, meta, err := Take(context.Background(), n, s)
		if err != nil {
			t.Fatalf("Take: %v", err)
		}
		if n.calls != 1 {
			t.Errorf("ReadIndex called %d times, want 1", n.calls)
		}
		restored := store.New()
		if err := restored.Restore(snap); err != nil {
			t.Fatalf("restore the backup's snapshot: %v", err)
		}
		sameServices(t, services(restored), services(s))
		var index uint64
		s.View(func(tx store.ReadTx) { index = tx.Index() })
		if meta.Index != index || meta.ClusterID != "cl-1" || meta.TakenAt.IsZero() {
			t.Errorf("meta %+v, want index %d, cluster cl-1 and a time", meta, index)
		}
	})
	t.Run("read index fails", func(t *testing.T) {
		s := newStore(t, "web")
		n := &fakeNode{err: raft.ErrNoQuorum}
		if _, _, err := Take(context.Background(), n, s); !errors.Is(err, raft.ErrNoQuorum) {
			t.Errorf("Take: %v, want the ReadIndex error ErrNoQuorum", err)
		}
	})
}

func TestRestore(t *testing.T) {
	src := newStore(t, "web", "db", "cache")
	snap, meta, err := Take(context.Background(), &fakeNode{}, src)
	if err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	if err := Write(&file, snap, meta); err != nil {
		t.Fatal(err)
	}
	snap, _, err = Read(&file)
	if err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "raft")
	cfg := raft.Config{ID: 1, Addr: "127.0.0.1:4242", TickInterval: 10 * time.Millisecond}
	if err := Restore(dir, cfg, snap); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if err := Restore(dir, cfg, snap); !errors.Is(err, raft.ErrExists) {
		t.Errorf("second Restore into the same dir: %v, want raft.ErrExists", err)
	}
	if err := Restore(filepath.Join(t.TempDir(), "raft"), cfg, []byte("not a snapshot")); err == nil {
		t.Error("Restore of bytes that are no store snapshot succeeded")
	}

	cfg.DataDir = dir
	s := store.New()
	n, err := raft.Open(cfg, s)
	if err != nil {
		t.Fatalf("open the restored raft state: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	sameServices(t, services(s), services(src))
	var cluster *shoalpb.Cluster
	s.View(func(tx store.ReadTx) { cluster = tx.GetCluster() })
	if cluster.GetId() != "cl-1" {
		t.Errorf("restored cluster object %v, want id cl-1", cluster)
	}

	// The restored manager leads alone and takes writes whose versions
	// continue above the backup's.
	s.SetProposer(n)
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	for !n.IsLeader() {
		select {
		case <-wctx.Done():
			t.Fatal("the restored manager never became leader")
		case <-time.After(5 * time.Millisecond):
		}
	}
	err = s.Update(wctx, func(_ store.ReadTx, b *store.Batch) error {
		b.CreateService(service("svc-new", "new"))
		return nil
	})
	if err != nil {
		t.Fatalf("write after restore: %v", err)
	}
	var created *shoalpb.Service
	s.View(func(tx store.ReadTx) { created = tx.GetService("svc-new") })
	if v := created.GetMeta().GetVersion(); v <= meta.Index {
		t.Errorf("new service has version %d, want above the backup's index %d", v, meta.Index)
	}
}
