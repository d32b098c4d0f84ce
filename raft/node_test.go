package raft

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

func TestProposeAppliesInOrder(t *testing.T) {
	tests := []struct {
		name string
		cmds []string
	}{
		{"forty commands", seq("c", 40)},
		{"a refused command in the middle", []string{"a", "b", "bad", "c", "bad", "d"}},
		{"empty command", []string{"", "x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := testConfig(t)
			r := start(t, cfg)
			var want []string
			for _, c := range tc.cmds {
				err := r.n.Propose(context.Background(), []byte(c))
				if c == "bad" {
					if !errors.Is(err, errRefused) {
						t.Fatalf("propose refused command: %v, want the state machine's error", err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("propose %q: %v", c, err)
				}
				want = append(want, c)
			}
			if got := r.sm.list(); !slices.Equal(got, want) {
				t.Errorf("applied %q, want %q", got, want)
			}
			r.sm.mu.Lock()
			idx := slices.Clone(r.sm.indexes)
			r.sm.mu.Unlock()
			for i := 1; i < len(idx); i++ {
				if idx[i] <= idx[i-1] {
					t.Errorf("apply indexes not increasing: %v", idx)
				}
			}
			if last := idx[len(idx)-1]; r.n.AppliedIndex() < last {
				t.Errorf("AppliedIndex %d, below the last applied command's index %d", r.n.AppliedIndex(), last)
			}
		})
	}
}

func TestBootstrapHasStateAndOpen(t *testing.T) {
	cfg, _ := testConfig(t)
	empty := Config{ID: 1, DataDir: t.TempDir()}
	missing := Config{ID: 1, DataDir: empty.DataDir + "/missing"}

	for _, tc := range []struct {
		name string
		dir  string
		want bool
	}{
		{"bootstrapped", cfg.DataDir, true},
		{"empty", empty.DataDir, false},
		{"missing", missing.DataDir, false},
	} {
		got, err := HasState(tc.dir)
		if err != nil || got != tc.want {
			t.Errorf("HasState(%s dir) = %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
	if err := Bootstrap(cfg); !errors.Is(err, ErrExists) {
		t.Errorf("second Bootstrap: %v, want ErrExists", err)
	}
	for _, c := range []Config{empty, missing} {
		if _, err := Open(c, &listSM{}); !errors.Is(err, ErrNoState) {
			t.Errorf("Open(%s): %v, want ErrNoState", c.DataDir, err)
		}
	}

	n, _ := open(t, cfg)
	if _, err := Open(cfg, &listSM{}); !errors.Is(err, ErrLocked) {
		t.Errorf("Open while another node has the dir: %v, want ErrLocked", err)
	}
	// Run with a cancelled context releases a node that is not needed.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.Run(ctx); err != nil {
		t.Fatalf("Run with a cancelled context: %v", err)
	}
	n2, _ := open(t, cfg)
	if err := n2.Run(ctx); err != nil {
		t.Fatalf("Run with a cancelled context: %v", err)
	}
}

// TestOnlyVoterLeadsWithoutElectionTimeout uses an hour-long tick: raft's
// own election timer never fires, so only the immediate campaign of a
// sole voter can make the node leader.
func TestOnlyVoterLeadsWithoutElectionTimeout(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.TickInterval = time.Hour
	n, sm := open(t, cfg)
	ch, cancelSub := n.Leadership()
	defer cancelSub()
	r := run(t, n, sm)
	select {
	case v := <-ch:
		if !v {
			t.Fatalf("first leadership value %v, want true", v)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no leadership after 10s although the node is the only voter")
	}
	if !n.IsLeader() || n.Leader() != cfg.ID {
		t.Errorf("IsLeader %v, Leader %d; want true, %d", n.IsLeader(), n.Leader(), cfg.ID)
	}
	propose(t, n, "x")

	// A second subscriber of a leader starts with true.
	ch2, cancel2 := n.Leadership()
	if v := <-ch2; !v {
		t.Errorf("subscribing to a leader: got %v, want true", v)
	}
	r.stop(t)
	// Stopping ends leadership; ch2's unread values collapse to the latest.
	for _, c := range []<-chan bool{ch, ch2} {
		select {
		case v := <-c:
			if v {
				t.Errorf("after stop: got true, want false")
			}
		default:
			t.Errorf("after stop: no value, want false")
		}
	}
	if n.IsLeader() || n.Leader() != 0 {
		t.Errorf("after stop: IsLeader %v, Leader %d; want false, 0", n.IsLeader(), n.Leader())
	}
	cancel2()
	if _, ok := <-ch2; ok {
		t.Error("channel still open after its cancel func")
	}
}

func TestLeadershipKeepsOnlyLatestValue(t *testing.T) {
	cfg, _ := testConfig(t)
	n, sm := open(t, cfg)
	ch, cancel := n.Leadership()
	defer cancel()
	r := run(t, n, sm)
	waitLeader(t, n) // true is now waiting, unread
	r.stop(t)        // false replaces it
	if v := <-ch; v {
		t.Fatal("read true after the node stopped; want the latest value, false")
	}
	select {
	case v := <-ch:
		t.Errorf("a second value %v was kept; want only the latest", v)
	default:
	}
}

func TestRestartRebuildsState(t *testing.T) {
	tests := []struct {
		name      string
		interval  uint64
		cmds      int
		snapshots bool
	}{
		{"log only", 1000, 20, false},
		{"across snapshots", 7, 52, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _ := testConfig(t)
			cfg.SnapshotInterval = tc.interval
			want := seq("x", tc.cmds)
			r := start(t, cfg)
			propose(t, r.n, want...)
			applied := r.n.AppliedIndex()
			r.stop(t)

			segs, snaps := files(t, cfg.DataDir, "wal-"), files(t, cfg.DataDir, "snap-")
			if tc.snapshots {
				if slices.Contains(segs, segmentName(0, 1)) || len(segs) > 2 {
					t.Errorf("WAL segments %v: the bootstrap segment should be deleted once a snapshot covers it", segs)
				}
				if len(snaps) == 0 || len(snaps) > snapshotsKept {
					t.Errorf("snapshots %v: want 1 to %d", snaps, snapshotsKept)
				}
			} else if len(snaps) != 0 {
				t.Errorf("snapshots %v before SnapshotInterval entries", snaps)
			}

			for round, extra := range []string{"after1", "after2"} {
				n, sm := open(t, cfg)
				// Open alone rebuilds the state: snapshot plus committed log.
				if got := sm.list(); !slices.Equal(got, want) {
					t.Fatalf("restart %d: state after Open %q, want %q", round+1, got, want)
				}
				if n.AppliedIndex() < applied {
					t.Errorf("restart %d: AppliedIndex %d, want at least %d", round+1, n.AppliedIndex(), applied)
				}
				r := run(t, n, sm)
				waitLeader(t, n)
				propose(t, n, extra)
				want = append(want, extra)
				if got := sm.list(); !slices.Equal(got, want) {
					t.Errorf("restart %d: after a new proposal %q, want %q", round+1, got, want)
				}
				applied = n.AppliedIndex()
				r.stop(t)
			}
		})
	}
}

func TestProposeErrors(t *testing.T) {
	cfg, _ := testConfig(t)
	r := start(t, cfg)

	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.n.Propose(cancelled, []byte("never")); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v, want context.Canceled", err)
	}
	if err := r.n.Propose(context.Background(), make([]byte, MaxProposalSize+1)); !errors.Is(err, ErrProposalTooLarge) {
		t.Errorf("oversized command: %v, want ErrProposalTooLarge", err)
	}
	// A stale message from a stranger is taken and ignored.
	stale := &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: new(uint64(9)), To: new(uint64(1)), Term: new(uint64(1))}
	if err := r.n.Step(context.Background(), stale); err != nil {
		t.Errorf("Step: %v", err)
	}
	propose(t, r.n, "ok")
	if !r.n.IsLeader() {
		t.Error("a stale message cost the node its leadership")
	}
	if got := r.sm.list(); !slices.Equal(got, []string{"ok"}) {
		t.Errorf("state %q: a refused proposal was applied", got)
	}
	r.stop(t)
	if err := r.n.Propose(context.Background(), []byte("late")); !errors.Is(err, ErrStopped) {
		t.Errorf("after stop: %v, want ErrStopped", err)
	}
	if err := r.n.Step(context.Background(), &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: new(uint64(2)), To: new(uint64(1))}); !errors.Is(err, ErrStopped) {
		t.Errorf("Step after stop: %v, want ErrStopped", err)
	}

	// Member 2 is not a voter of member 1's group: it can never lead.
	other := cfg
	other.ID = 2
	n, sm := open(t, other)
	run(t, n, sm)
	ctx, cancelT := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelT()
	if err := n.Propose(ctx, []byte("x")); !errors.Is(err, ErrNotLeader) {
		t.Errorf("on a non-leader: %v, want ErrNotLeader", err)
	}
}

// failingFile fails every write and fsync once fail is set.
type failingFile struct {
	walFile
	fail *atomic.Bool
}

var errInjected = errors.New("injected disk failure")

func (f failingFile) Write(p []byte) (int, error) {
	if f.fail.Load() {
		return 0, errInjected
	}
	return f.walFile.Write(p)
}

func (f failingFile) Sync() error {
	if f.fail.Load() {
		return errInjected
	}
	return f.walFile.Sync()
}

func TestDiskFailureStopsNode(t *testing.T) {
	cfg, _ := testConfig(t)
	n, _ := open(t, cfg)
	fail := &atomic.Bool{}
	n.wal.f = failingFile{walFile: n.wal.f, fail: fail} // before Run: no race
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	waitLeader(t, n)
	propose(t, n, "durable")

	fail.Store(true)
	if err := n.Propose(context.Background(), []byte("lost")); !errors.Is(err, ErrStopped) {
		t.Errorf("propose during a disk failure: %v, want ErrStopped", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, errInjected) {
			t.Errorf("Run returned %v, want the disk error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run kept going after a failed write")
	}
	if n.IsLeader() {
		t.Error("still leader after a fatal error")
	}
	// The lock is released and only the durable command is there.
	n2, sm2 := open(t, cfg)
	if got := sm2.list(); !slices.Equal(got, []string{"durable"}) {
		t.Errorf("state after reopening %q, want [durable]", got)
	}
	_ = n2.Run(cancelledCtx()) // release the directory
}

func cancelledCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
