package raft

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestSingleMemberMembershipAndReads(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.Addr = "ignored-after-bootstrap"
	r := start(t, cfg)
	propose(t, r.n, "a", "b")

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"bootstrapped member listed without an address", func(t *testing.T) {
			// testConfig bootstrapped without Addr: none was recorded.
			want := []Member{{ID: 1, Voter: true}}
			if got := r.n.Members(); !slices.Equal(got, want) {
				t.Errorf("Members() = %+v, want %+v", got, want)
			}
		}},
		{"read index on the only member", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			if err := r.n.ReadIndex(ctx); err != nil {
				t.Fatalf("ReadIndex: %v", err)
			}
			if got := r.sm.list(); !slices.Equal(got, []string{"a", "b"}) {
				t.Errorf("after ReadIndex the state is %q", got)
			}
		}},
		{"removing the only voter is a quorum risk", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			if err := r.n.RemoveMember(ctx, 1); !errors.Is(err, ErrQuorumRisk) {
				t.Errorf("RemoveMember(self): %v, want ErrQuorumRisk", err)
			}
		}},
		{"promoting a non-member", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			if err := r.n.PromoteMember(ctx, 7); !errors.Is(err, ErrUnknownMember) {
				t.Errorf("PromoteMember(7): %v, want ErrUnknownMember", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.check)
	}

	r.stop(t)
	if err := r.n.ReadIndex(context.Background()); !errors.Is(err, ErrStopped) {
		t.Errorf("ReadIndex after stop: %v, want ErrStopped", err)
	}
}

func TestBootstrapRecordsAddress(t *testing.T) {
	cfg := Config{ID: 3, DataDir: filepath.Join(t.TempDir(), "raft"), TickInterval: 10 * time.Millisecond, Addr: "10.0.0.3:4242"}
	if err := Bootstrap(cfg); err != nil {
		t.Fatal(err)
	}
	r := start(t, cfg)
	want := []Member{{ID: 3, Addr: "10.0.0.3:4242", Voter: true}}
	if got := r.n.Members(); !slices.Equal(got, want) {
		t.Errorf("Members() = %+v, want %+v", got, want)
	}
}

func TestJoinOpensEmptyLog(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "raft")
	cfg := Config{ID: 2, DataDir: dir, TickInterval: 10 * time.Millisecond}
	if _, err := Open(cfg, &listSM{}); !errors.Is(err, ErrNoState) {
		t.Fatalf("Open without Join of an empty dir: %v, want ErrNoState", err)
	}
	cfg.Join = true
	n, sm := open(t, cfg)
	r := run(t, n, sm)
	if has, err := HasState(dir); err != nil || !has {
		t.Errorf("HasState after a joining Open = %v, %v; want true", has, err)
	}
	// Alone and without a configuration it must not elect itself.
	time.Sleep(3 * DefaultElectionTicks * cfg.TickInterval)
	if n.IsLeader() || n.Leader() != 0 {
		t.Errorf("a joining member with no configuration leads or knows a leader (%d)", n.Leader())
	}
	if got := n.Members(); len(got) != 0 {
		t.Errorf("joining member's Members() = %+v, want none", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := n.Propose(ctx, []byte("x")); !errors.Is(err, ErrNotLeader) {
		t.Errorf("Propose on a joining member: %v, want ErrNotLeader", err)
	}
	if err := n.ReadIndex(ctx); !errors.Is(err, ErrNoQuorum) {
		t.Errorf("ReadIndex on a joining member: %v, want ErrNoQuorum", err)
	}
	r.stop(t)
	// Reopened without Join: the empty log is its state now.
	n2, sm2 := open(t, Config{ID: 2, DataDir: dir})
	run(t, n2, sm2)
}
