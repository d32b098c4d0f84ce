package raft

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestClusterLeaderFailover(t *testing.T) {
	c := newCluster(t, 3, 1000, 0)
	c.writeAll(seq("before", 20)...)
	c.converge()

	old := c.leader()
	oldID := old.cfg.ID
	c.crash(oldID)
	newLeader := c.leader()
	if newLeader.cfg.ID == oldID {
		t.Fatalf("crashed member %d still leads", oldID)
	}
	c.writeAll(seq("after", 20)...)
	c.converge()

	// The old leader restarts from its disk and catches up.
	c.start(oldID, false)
	c.writeAll("restarted")
	c.converge()
	if got := c.members[oldID].sm.list(); len(got) != 41 {
		t.Errorf("restarted member applied %d commands, want 41", len(got))
	}
}

func TestClusterPartitionedMinority(t *testing.T) {
	tests := []struct {
		name          string
		isolateLeader bool
		wantPropose   error // from Propose on the isolated member
	}{
		// A leader that loses its quorum fails what is pending on it with
		// ErrNoQuorum once CheckQuorum notices, well before ctx ends.
		{"isolated leader", true, ErrNoQuorum},
		// A follower proposes nothing; its reads find no leader.
		{"isolated follower", false, ErrNotLeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 3, 1000, 0)
			c.writeAll(seq("a", 10)...)
			c.converge()

			cut := c.leader()
			if !tc.isolateLeader {
				for _, r := range c.members {
					if r.n != cut {
						cut = r.n
						break
					}
				}
			}
			c.net.(*memNet).partition(cut.cfg.ID)

			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			var wg sync.WaitGroup
			var propErr, readErr error
			wg.Add(2)
			go func() { defer wg.Done(); propErr = cut.Propose(ctx, []byte("lost")) }()
			go func() { defer wg.Done(); readErr = cut.ReadIndex(ctx) }()

			// Meanwhile the majority has (or elects) a leader and commits.
			var majority *Node
			eventually(t, "majority leader", func() bool {
				for id, r := range c.members {
					if id != cut.cfg.ID && r.n.IsLeader() {
						majority = r.n
						return true
					}
				}
				return false
			})
			for _, cmd := range seq("b", 10) {
				if err := c.write(ctx, majority, cmd); err != nil {
					t.Fatalf("majority write %q: %v", cmd, err)
				}
			}
			wg.Wait()
			if !errors.Is(propErr, tc.wantPropose) {
				t.Errorf("propose on the isolated member: %v, want %v", propErr, tc.wantPropose)
			}
			if !errors.Is(readErr, ErrNoQuorum) {
				t.Errorf("read index on the isolated member: %v, want ErrNoQuorum", readErr)
			}
			if slices.Contains(c.members[cut.cfg.ID].sm.list(), "b0") {
				t.Error("isolated member applied a majority write while partitioned")
			}

			// A linearizable read on a majority follower sees the last write.
			for id, r := range c.members {
				if id == cut.cfg.ID || r.n == majority {
					continue
				}
				if err := r.n.ReadIndex(ctx); err != nil {
					t.Fatalf("read index on majority follower %d: %v", id, err)
				}
				if got := r.sm.list(); !slices.Contains(got, "b9") {
					t.Errorf("follower %d after ReadIndex lacks the last acknowledged write: %q", id, got)
				}
			}

			c.net.(*memNet).heal()
			c.converge()
			if got := c.members[cut.cfg.ID].sm.list(); !slices.Contains(got, "b9") {
				t.Errorf("healed member did not catch up: %q", got)
			}
		})
	}
}

func TestClusterNewMemberCatchesUpBySnapshot(t *testing.T) {
	c := newCluster(t, 3, 10, 5)
	c.writeAll(seq("s", 60)...)
	c.converge()

	c.add(4, false) // a learner first, as an operator should
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("member 4 logs:\n%s", c.logs[4].String())
		}
	})
	c.retry("promote 4", func(l *Node, ctx context.Context) error { return l.PromoteMember(ctx, 4) })
	c.writeAll("after-join")
	c.converge()
	if !strings.Contains(c.logs[4].String(), "installed snapshot from leader") {
		t.Error("member 4 caught up without a snapshot; the test no longer covers snapshot catch-up")
	}
	want := []Member{{1, "addr-1", true}, {2, "addr-2", true}, {3, "addr-3", true}, {4, "addr-4", true}}
	if got := c.members[4].n.Members(); !slices.Equal(got, want) {
		t.Errorf("new member's Members() = %+v, want %+v (addresses from the snapshot)", got, want)
	}

	// Restart it from disk: membership and state come back.
	c.crash(4)
	r := c.start(4, false)
	if got := r.n.Members(); !slices.Equal(got, want) {
		t.Errorf("Members() after restart = %+v, want %+v", got, want)
	}
	c.writeAll("after-restart")
	c.converge()
}

func TestClusterMembershipChangeDuringProposals(t *testing.T) {
	c := newCluster(t, 3, 50, 20)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			l := c.findLeader()
			if l == nil {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			// Errors are fine here (leadership moves); only acknowledged
			// writes are checked.
			_ = c.write(wctx, l, fmt.Sprintf("w%d", i))
			wcancel()
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	c.add(4, false)
	c.retry("promote 4", func(l *Node, ctx context.Context) error { return l.PromoteMember(ctx, 4) })
	victim := uint64(3)
	if c.leader().cfg.ID == victim {
		victim = 2
	}
	c.retry(fmt.Sprintf("remove %d", victim), func(l *Node, ctx context.Context) error { return l.RemoveMember(ctx, victim) })
	c.crash(victim)
	c.add(5, true)
	// Writes go on under the final configuration too.
	ackedSoFar := func() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.acked) }
	base := ackedSoFar()
	eventually(t, "writes after the membership changes", func() bool { return ackedSoFar() >= base+10 })
	cancel()
	wg.Wait()

	c.converge()
	var ids []uint64
	for _, m := range c.leader().Members() {
		ids = append(ids, m.ID)
		if !m.Voter {
			t.Errorf("member %d is a learner, want voter", m.ID)
		}
	}
	want := []uint64{1, 2, 3, 4, 5}
	want = slices.DeleteFunc(want, func(id uint64) bool { return id == victim })
	if !slices.Equal(ids, want) {
		t.Errorf("members %v, want %v", ids, want)
	}
	c.mu.Lock()
	n := len(c.acked)
	c.mu.Unlock()
	if n == 0 {
		t.Error("no write was acknowledged during the membership changes")
	}
}

func TestRemoveMemberQuorumRisk(t *testing.T) {
	c := newCluster(t, 3, 1000, 0)
	c.writeAll("x")
	l := c.leader()
	var live, down uint64
	for id := range c.members {
		if id == l.cfg.ID {
			continue
		}
		if down == 0 {
			down = id
		} else {
			live = id
		}
	}
	c.crash(down)
	// Let the leader's CheckQuorum notice the crashed member is inactive.
	time.Sleep(3 * time.Duration(DefaultElectionTicks) * 20 * time.Millisecond)

	tests := []struct {
		name   string
		change func(ctx context.Context) error
		want   error
	}{
		{"remove the live follower", func(ctx context.Context) error { return l.RemoveMember(ctx, live) }, ErrQuorumRisk},
		{"demote the live follower", func(ctx context.Context) error { return l.DemoteMember(ctx, live) }, ErrQuorumRisk},
		{"remove an unknown member", func(ctx context.Context) error { return l.RemoveMember(ctx, 99) }, ErrUnknownMember},
		{"remove the crashed follower", func(ctx context.Context) error { return l.RemoveMember(ctx, down) }, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			err := tc.change(ctx)
			if (tc.want == nil && err != nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	var ids []uint64
	for _, m := range l.Members() {
		ids = append(ids, m.ID)
	}
	if slices.Contains(ids, down) || !slices.Contains(ids, live) {
		t.Errorf("members %v: want %d removed and %d kept", ids, down, live)
	}
	c.writeAll("y")
	c.converge()
}

func TestPromoteWaitsForLearnerToCatchUp(t *testing.T) {
	c := newCluster(t, 3, 1000, 0)
	c.writeAll(seq("p", 20)...)
	c.start(4, true)
	c.net.(*memNet).partition(4) // it cannot receive the log yet

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	l := c.leader()
	if err := l.AddMember(ctx, 4, c.net.addr(4), false); err != nil {
		t.Fatalf("add unreachable learner: %v (a learner does not change the quorum)", err)
	}
	if err := l.PromoteMember(ctx, 4); !errors.Is(err, ErrLearnerNotReady) {
		t.Fatalf("promote a learner with an empty log: %v, want ErrLearnerNotReady", err)
	}
	c.net.(*memNet).heal()
	c.retry("promote 4", func(l *Node, ctx context.Context) error { return l.PromoteMember(ctx, 4) })
	c.writeAll("after-promote")
	c.converge()
	for _, m := range c.leader().Members() {
		if !m.Voter {
			t.Errorf("member %d still a learner", m.ID)
		}
	}
}
