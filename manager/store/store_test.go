package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// fakeClock is a settable clock for Meta timestamps.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestStore(t *testing.T) (*Store, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	s := NewWithClock(clock.now)
	s.SetProposer(NewLocalProposer(s))
	return s, clock
}

func service(id, name string) *shoalpb.Service {
	return &shoalpb.Service{Id: id, Spec: &shoalpb.ServiceSpec{
		Name:      name,
		Container: &shoalpb.ContainerSpec{Image: "busybox"},
	}}
}

func task(id, serviceID, nodeID string) *shoalpb.Task {
	return &shoalpb.Task{Id: id, ServiceId: serviceID, NodeId: nodeID, DesiredState: shoalpb.TaskState_TASK_STATE_RUNNING}
}

// mustUpdate runs one Update that must succeed.
func mustUpdate(t *testing.T, s *Store, fn func(tx ReadTx, b *Batch)) {
	t.Helper()
	err := s.Update(context.Background(), func(tx ReadTx, b *Batch) error {
		fn(tx, b)
		return nil
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func index(s *Store) (i uint64) {
	s.View(func(tx ReadTx) { i = tx.Index() })
	return i
}

func ids[T interface{ GetId() string }](objs []T) []string {
	out := make([]string, 0, len(objs))
	for _, o := range objs {
		out = append(out, o.GetId())
	}
	return out
}

func TestCreateUpdateDelete(t *testing.T) {
	s, clock := newTestStore(t)
	created := clock.t
	mustUpdate(t, s, func(_ ReadTx, b *Batch) {
		b.CreateNode(&shoalpb.Node{Id: "n1"})
		b.CreateNode(&shoalpb.Node{Id: "n2"})
		b.CreateService(service("s1", "web"))
		b.CreateTask(task("t1", "s1", "n1"))
		b.CreateTask(task("t2", "s1", "n1"))
		b.CreateCluster(&shoalpb.Cluster{Id: "c1", Spec: &shoalpb.ClusterSpec{Name: "prod"}})
	})
	first := index(s)
	s.View(func(tx ReadTx) {
		svc := tx.GetService("s1")
		if svc == nil {
			t.Fatal("service s1 missing after create")
		}
		if v := svc.GetMeta().GetVersion(); v != first {
			t.Errorf("created service version = %d, want the entry index %d", v, first)
		}
		if got := svc.GetMeta().GetCreatedAt().AsTime(); !got.Equal(created) {
			t.Errorf("CreatedAt = %v, want the proposer's clock %v", got, created)
		}
		if tx.ServiceByName("web").GetId() != "s1" {
			t.Errorf("ServiceByName(web) = %v, want s1", tx.ServiceByName("web"))
		}
		if got := ids(tx.TasksByNode("n1")); fmt.Sprint(got) != "[t1 t2]" {
			t.Errorf("TasksByNode(n1) = %v, want [t1 t2]", got)
		}
		if tx.GetCluster().GetSpec().GetName() != "prod" {
			t.Errorf("GetCluster() = %v, want cluster prod", tx.GetCluster())
		}
	})

	clock.t = clock.t.Add(time.Minute)
	mustUpdate(t, s, func(tx ReadTx, b *Batch) {
		moved := proto.Clone(tx.GetTask("t2")).(*shoalpb.Task)
		moved.NodeId = "n2"
		b.UpdateTask(moved)
		svc := proto.Clone(tx.GetService("s1")).(*shoalpb.Service)
		svc.Spec.Name = "web2"
		svc.Meta.CreatedAt = nil // the store keeps its own creation time
		b.UpdateService(svc)
	})
	second := index(s)
	s.View(func(tx ReadTx) {
		if got := ids(tx.TasksByNode("n1")); fmt.Sprint(got) != "[t1]" {
			t.Errorf("after move, TasksByNode(n1) = %v, want [t1]", got)
		}
		if got := ids(tx.TasksByNode("n2")); fmt.Sprint(got) != "[t2]" {
			t.Errorf("after move, TasksByNode(n2) = %v, want [t2]", got)
		}
		if v := tx.GetTask("t2").GetMeta().GetVersion(); v != second {
			t.Errorf("updated task version = %d, want %d", v, second)
		}
		if v := tx.GetTask("t1").GetMeta().GetVersion(); v != first {
			t.Errorf("untouched task version = %d, want %d", v, first)
		}
		svc := tx.GetService("s1")
		if tx.ServiceByName("web") != nil || tx.ServiceByName("web2").GetId() != "s1" {
			t.Errorf("rename not reflected in the name index: web=%v web2=%v", tx.ServiceByName("web"), tx.ServiceByName("web2"))
		}
		if got := svc.GetMeta().GetCreatedAt().AsTime(); !got.Equal(created) {
			t.Errorf("CreatedAt after update = %v, want %v", got, created)
		}
		if got := svc.GetMeta().GetUpdatedAt().AsTime(); !got.Equal(clock.t) {
			t.Errorf("UpdatedAt after update = %v, want %v", got, clock.t)
		}
	})

	mustUpdate(t, s, func(tx ReadTx, b *Batch) {
		b.DeleteTask("t1", tx.GetTask("t1").GetMeta().GetVersion())
		b.DeleteService("s1", 0)
		b.DeleteNode("n1", 0)
	})
	s.View(func(tx ReadTx) {
		if tx.GetTask("t1") != nil || tx.GetService("s1") != nil || tx.GetNode("n1") != nil {
			t.Errorf("objects still present after delete")
		}
		if got := ids(tx.TasksByService("s1")); fmt.Sprint(got) != "[t2]" {
			t.Errorf("TasksByService(s1) = %v, want [t2] (tasks are not deleted with their service)", got)
		}
		if tx.ServiceByName("web2") != nil {
			t.Errorf("deleted service still found by name")
		}
	})
}

func TestRefusedBatchRollsBack(t *testing.T) {
	tests := []struct {
		name  string
		write func(tx ReadTx, b *Batch)
		want  error
	}{
		{
			name: "stale version",
			write: func(tx ReadTx, b *Batch) {
				stale := proto.Clone(tx.GetTask("t1")).(*shoalpb.Task)
				stale.Meta.Version--
				b.UpdateTask(stale)
			},
			want: ErrVersionMismatch,
		},
		{
			name:  "delete with stale version",
			write: func(tx ReadTx, b *Batch) { b.DeleteTask("t1", 1) },
			want:  ErrVersionMismatch,
		},
		{
			name:  "update missing",
			write: func(tx ReadTx, b *Batch) { b.UpdateNode(&shoalpb.Node{Id: "nope"}) },
			want:  ErrNotFound,
		},
		{
			name:  "delete missing",
			write: func(tx ReadTx, b *Batch) { b.DeleteService("nope", 0) },
			want:  ErrNotFound,
		},
		{
			name:  "create existing",
			write: func(tx ReadTx, b *Batch) { b.CreateTask(task("t1", "s1", "")) },
			want:  ErrExists,
		},
		{
			name:  "second cluster",
			write: func(tx ReadTx, b *Batch) { b.CreateCluster(&shoalpb.Cluster{Id: "c2"}) },
			want:  ErrExists,
		},
		{
			name:  "create name conflict",
			write: func(tx ReadTx, b *Batch) { b.CreateService(service("s3", "web")) },
			want:  ErrNameConflict,
		},
		{
			name: "rename onto another service",
			write: func(tx ReadTx, b *Batch) {
				svc := proto.Clone(tx.GetService("s2")).(*shoalpb.Service)
				svc.Spec.Name = "web"
				b.UpdateService(svc)
			},
			want: ErrNameConflict,
		},
		{
			name:  "no id",
			write: func(tx ReadTx, b *Batch) { b.CreateNode(&shoalpb.Node{}) },
			want:  ErrInvalid,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestStore(t)
			mustUpdate(t, s, func(_ ReadTx, b *Batch) {
				b.CreateService(service("s1", "web"))
				b.CreateService(service("s2", "db"))
				b.CreateTask(task("t1", "s1", ""))
				b.CreateCluster(&shoalpb.Cluster{Id: "c1"})
			})
			mustUpdate(t, s, func(tx ReadTx, b *Batch) { // t1 now at a later version than s1
				b.UpdateTask(proto.Clone(tx.GetTask("t1")).(*shoalpb.Task))
			})
			before, err := s.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			beforeIndex := index(s)
			watch := s.Watch(t.Context())

			err = s.Update(context.Background(), func(tx ReadTx, b *Batch) error {
				// A valid write first: it must be rolled back too.
				b.CreateNode(&shoalpb.Node{Id: "n-new"})
				b.UpdateCluster(&shoalpb.Cluster{Id: "c1", Spec: &shoalpb.ClusterSpec{Name: "renamed"}})
				tc.write(tx, b)
				return nil
			})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Update error = %v, want %v", err, tc.want)
			}
			after, _ := s.Snapshot()
			if !bytes.Equal(before, after) {
				t.Errorf("refused batch changed the store")
			}
			if got := index(s); got != beforeIndex {
				t.Errorf("Index = %d after a refused batch, want %d", got, beforeIndex)
			}
			select {
			case ev := <-watch:
				t.Errorf("refused batch produced event %v %T", ev.Kind, ev.Object)
			default:
			}
		})
	}
}

func TestUpdate(t *testing.T) {
	t.Run("callback error returned unchanged, nothing written", func(t *testing.T) {
		s, _ := newTestStore(t)
		sentinel := errors.New("refused by caller")
		err := s.Update(context.Background(), func(_ ReadTx, b *Batch) error {
			b.CreateNode(&shoalpb.Node{Id: "n1"})
			return sentinel
		})
		if err != sentinel {
			t.Errorf("Update error = %v, want the callback's error itself", err)
		}
		s.View(func(tx ReadTx) {
			if tx.GetNode("n1") != nil {
				t.Errorf("batch of a failed callback was applied")
			}
		})
	})
	t.Run("empty batch proposes nothing", func(t *testing.T) {
		s, _ := newTestStore(t)
		p := &countingProposer{next: NewLocalProposer(s)}
		s.SetProposer(p)
		if err := s.Update(context.Background(), func(ReadTx, *Batch) error { return nil }); err != nil {
			t.Fatal(err)
		}
		if p.n != 0 {
			t.Errorf("empty batch was proposed %d times", p.n)
		}
	})
	t.Run("batch objects are copies", func(t *testing.T) {
		s, _ := newTestStore(t)
		n := &shoalpb.Node{Id: "n1", Spec: &shoalpb.NodeSpec{Labels: map[string]string{"a": "1"}}}
		mustUpdate(t, s, func(_ ReadTx, b *Batch) {
			b.CreateNode(n)
			n.Spec.Labels["a"] = "changed after adding"
		})
		s.View(func(tx ReadTx) {
			if got := tx.GetNode("n1").GetSpec().GetLabels()["a"]; got != "1" {
				t.Errorf("stored label = %q, want the value at the time of CreateNode", got)
			}
		})
	})
	t.Run("no proposer", func(t *testing.T) {
		s := New()
		err := s.Update(context.Background(), func(_ ReadTx, b *Batch) error {
			b.CreateNode(&shoalpb.Node{Id: "n1"})
			return nil
		})
		if !errors.Is(err, ErrNoProposer) {
			t.Errorf("Update without proposer = %v, want ErrNoProposer", err)
		}
	})
	t.Run("proposer error returned", func(t *testing.T) {
		s, _ := newTestStore(t)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := s.Update(ctx, func(_ ReadTx, b *Batch) error {
			b.CreateNode(&shoalpb.Node{Id: "n1"})
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Update with cancelled ctx = %v, want context.Canceled", err)
		}
	})
}

type countingProposer struct {
	n    int
	next Proposer
}

func (p *countingProposer) Propose(ctx context.Context, data []byte) error {
	p.n++
	return p.next.Propose(ctx, data)
}

func TestApplyGarbage(t *testing.T) {
	s, _ := newTestStore(t)
	if err := s.Apply(1, []byte{0xff, 0xff, 0xff}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Apply(garbage) = %v, want ErrInvalid", err)
	}
}

func TestSnapshotRestore(t *testing.T) {
	s, clock := newTestStore(t)
	mustUpdate(t, s, func(_ ReadTx, b *Batch) {
		b.CreateCluster(&shoalpb.Cluster{Id: "c1", Spec: &shoalpb.ClusterSpec{Name: "prod", TaskHistoryLimit: 5}})
		b.CreateNode(&shoalpb.Node{Id: "n1", Description: &shoalpb.NodeDescription{Hostname: "h1"}})
		b.CreateService(service("s1", "web"))
		b.CreateService(service("s2", "db"))
		b.CreateNetwork(&shoalpb.Network{Id: "net1", Spec: &shoalpb.NetworkSpec{Name: "backend"}, Vni: 4096, Subnet: "10.10.0.0/24"})
	})
	clock.t = clock.t.Add(time.Hour)
	mustUpdate(t, s, func(_ ReadTx, b *Batch) {
		b.CreateTask(task("t1", "s1", "n1"))
		b.CreateTask(task("t2", "s2", "n1"))
		b.CreateTask(task("t3", "s2", ""))
	})
	mustUpdate(t, s, func(_ ReadTx, b *Batch) { b.DeleteTask("t3", 0) })

	data, err := s.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	r := New()
	watch := r.Watch(t.Context())
	if err := r.Restore(data); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if _, ok := <-watch; ok {
		t.Errorf("watch channel still open after Restore; watchers must resync")
	}
	again, err := r.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, again) {
		t.Errorf("snapshot of the restored store differs from the original")
	}
	r.View(func(got ReadTx) {
		s.View(func(want ReadTx) {
			checks := []struct{ name, got, want string }{
				{"services", fmt.Sprint(ids(got.ListServices())), fmt.Sprint(ids(want.ListServices()))},
				{"tasks", fmt.Sprint(ids(got.ListTasks())), fmt.Sprint(ids(want.ListTasks()))},
				{"nodes", fmt.Sprint(ids(got.ListNodes())), fmt.Sprint(ids(want.ListNodes()))},
				{"networks", fmt.Sprint(ids(got.ListNetworks())), fmt.Sprint(ids(want.ListNetworks()))},
				{"network by name", got.NetworkByName("backend").GetId(), "net1"},
				{"by name", got.ServiceByName("db").GetId(), "s2"},
				{"by service", fmt.Sprint(ids(got.TasksByService("s2"))), "[t2]"},
				{"by node", fmt.Sprint(ids(got.TasksByNode("n1"))), "[t1 t2]"},
				{"cluster", got.GetCluster().GetSpec().GetName(), "prod"},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("restored %s = %s, want %s", c.name, c.got, c.want)
				}
			}
			if !proto.Equal(got.GetService("s1"), want.GetService("s1")) {
				t.Errorf("restored service s1 = %v, want %v", got.GetService("s1"), want.GetService("s1"))
			}
			// t3's deletion is the last write and leaves no version behind.
			if got.Index() != want.Index()-1 {
				t.Errorf("restored Index = %d, want highest object version %d", got.Index(), want.Index()-1)
			}
		})
	})

	// The restored store keeps working: writes continue after its index.
	r.SetProposer(NewLocalProposer(r))
	mustUpdate(t, r, func(_ ReadTx, b *Batch) { b.CreateService(service("s3", "cache")) })
	r.View(func(tx ReadTx) {
		if v := tx.GetService("s3").GetMeta().GetVersion(); v <= tx.GetService("s1").GetMeta().GetVersion() {
			t.Errorf("write after restore got version %d, not after the restored objects", v)
		}
	})
}

func TestWatch(t *testing.T) {
	t.Run("events in order", func(t *testing.T) {
		s, _ := newTestStore(t)
		mustUpdate(t, s, func(_ ReadTx, b *Batch) { b.CreateNode(&shoalpb.Node{Id: "before-watch"}) })
		events := s.Watch(t.Context())
		mustUpdate(t, s, func(_ ReadTx, b *Batch) {
			b.CreateService(service("s1", "web"))
			b.CreateTask(task("t1", "s1", ""))
		})
		mustUpdate(t, s, func(tx ReadTx, b *Batch) {
			tk := proto.Clone(tx.GetTask("t1")).(*shoalpb.Task)
			tk.NodeId = "n1"
			b.UpdateTask(tk)
		})
		mustUpdate(t, s, func(_ ReadTx, b *Batch) { b.DeleteTask("t1", 0) })

		want := []string{"create service s1", "create task t1", "update task t1 n1", "delete task t1 n1"}
		var lastIndex uint64
		for i, w := range want {
			ev := <-events
			got := fmt.Sprintf("%s %s %s", ev.Kind, kinds[tableOf(ev.Object)], objectID(ev.Object))
			if tk, ok := ev.Object.(*shoalpb.Task); ok && tk.GetNodeId() != "" {
				got += " " + tk.GetNodeId()
			}
			if got != w {
				t.Errorf("event %d = %q, want %q", i, got, w)
			}
			if ev.Index < lastIndex || ev.Index == 0 {
				t.Errorf("event %d index %d after %d: not in order", i, ev.Index, lastIndex)
			}
			if v := objectMeta(ev.Object).GetVersion(); ev.Kind != EventDelete && v != ev.Index {
				t.Errorf("event %d object version %d, want the event index %d", i, v, ev.Index)
			}
			lastIndex = ev.Index
		}
		select {
		case ev := <-events:
			t.Errorf("unexpected extra event %v %T", ev.Kind, ev.Object)
		default:
		}
	})
	t.Run("closed when ctx ends", func(t *testing.T) {
		s, _ := newTestStore(t)
		ctx, cancel := context.WithCancel(context.Background())
		events := s.Watch(ctx)
		cancel()
		select {
		case _, ok := <-events:
			if ok {
				t.Errorf("received an event, want the channel closed")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("channel not closed 10s after ctx was cancelled")
		}
	})
	t.Run("closed on overflow", func(t *testing.T) {
		s, _ := newTestStore(t)
		slow := s.Watch(t.Context())
		fast := s.Watch(t.Context())
		mustUpdate(t, s, func(_ ReadTx, b *Batch) {
			for i := range WatchBuffer {
				b.CreateTask(task(fmt.Sprintf("t%05d", i), "", ""))
			}
		})
		for range WatchBuffer {
			<-fast
		}
		mustUpdate(t, s, func(_ ReadTx, b *Batch) { b.CreateTask(task("overflow", "", "")) })

		n := 0
		for range slow {
			n++
		}
		if n != WatchBuffer {
			t.Errorf("slow watcher got %d events before closing, want the %d that fit", n, WatchBuffer)
		}
		select {
		case ev, ok := <-fast:
			if !ok || objectID(ev.Object) != "overflow" {
				t.Errorf("watcher that kept up: got %v (open %v), want the overflow task", ev.Object, ok)
			}
		default:
			t.Errorf("watcher that kept up missed the last event")
		}
	})
}

func TestNewID(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-z]{25}$`)
	seen := make(map[string]bool)
	for range 1000 {
		id := NewID()
		if !re.MatchString(id) {
			t.Fatalf("NewID() = %q, want 25 lowercase base36 characters", id)
		}
		if seen[id] {
			t.Fatalf("NewID() repeated %q", id)
		}
		seen[id] = true
	}
}

func TestNetworkNamesAreUnique(t *testing.T) {
	s, _ := newTestStore(t)
	mustUpdate(t, s, func(_ ReadTx, b *Batch) {
		b.CreateNetwork(&shoalpb.Network{Id: "n1", Spec: &shoalpb.NetworkSpec{Name: "front"}})
		// A service may share a network's name: they are different kinds.
		b.CreateService(service("s1", "front"))
	})
	err := s.Update(t.Context(), func(_ ReadTx, b *Batch) error {
		b.CreateNetwork(&shoalpb.Network{Id: "n2", Spec: &shoalpb.NetworkSpec{Name: "front"}})
		return nil
	})
	if !errors.Is(err, ErrNameConflict) || !strings.Contains(err.Error(), "network n1") {
		t.Fatalf("second network named front: %v, want a name conflict naming network n1", err)
	}
}
