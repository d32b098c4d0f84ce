package raft

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestForceNewCluster(t *testing.T) {
	tests := []struct {
		name     string
		interval uint64 // SnapshotInterval: 1000 keeps the whole log, 8 compacts it
		catchUp  uint64
		// uncommitted: the forced member first proposes, cut off from the
		// others, a command that is never committed.
		uncommitted bool
		follower    bool // force a follower instead of the leader
		twice       bool // run ForceNewCluster again, as after a crash in it
	}{
		{name: "whole log", interval: 1000},
		{name: "compacted log", interval: 8, catchUp: 4},
		{name: "follower survives", interval: 8, catchUp: 4, follower: true},
		{name: "run twice", interval: 1000, twice: true},
		{name: "uncommitted entry discarded", interval: 1000, uncommitted: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, 3, tc.interval, tc.catchUp)
			c.writeAll(seq("acked", 25)...)
			c.converge()
			acked := slices.Clone(c.acked)

			// The survivor: the leader (which can hold an uncommitted entry
			// in its log) unless the case says otherwise.
			survivor := c.leader().cfg.ID
			if tc.follower {
				survivor = survivor%3 + 1
			}
			if tc.uncommitted {
				c.net.(*memNet).partition(survivor)
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				err := c.members[survivor].n.Propose(ctx, []byte("never-committed"))
				cancel()
				if err == nil {
					t.Fatal("a proposal on a partitioned leader was acknowledged")
				}
			}
			for _, id := range []uint64{1, 2, 3} {
				c.crash(id)
			}

			cfg := c.config(survivor, false)
			cfg.Transport = nil // the others are gone for good
			if err := ForceNewCluster(cfg, &listSM{}); err != nil {
				t.Fatalf("ForceNewCluster: %v", err)
			}
			if tc.twice {
				if err := ForceNewCluster(cfg, &listSM{}); err != nil {
					t.Fatalf("second ForceNewCluster: %v", err)
				}
			}
			if tc.uncommitted && !strings.Contains(c.logs[survivor].String(), "discarded_uncommitted=1") {
				t.Errorf("ForceNewCluster did not report discarding the uncommitted entry; log:\n%s", tail(c.logs[survivor].String()))
			}

			r := start(t, cfg)
			if got := r.sm.list(); !slices.Equal(got, acked) {
				t.Fatalf("after recovery the state holds %d commands %v; want the %d acknowledged ones %v", len(got), got, len(acked), acked)
			}
			want := []Member{{ID: survivor, Addr: c.net.addr(survivor), Voter: true}}
			if got := r.n.Members(); !slices.Equal(got, want) {
				t.Errorf("Members() = %v, want %v", got, want)
			}
			propose(t, r.n, "after-recovery")
			r.stop(t)

			// The recovered group restarts alone as before, with the new
			// write.
			r = start(t, cfg)
			want2 := append(slices.Clone(acked), "after-recovery")
			if got := r.sm.list(); !slices.Equal(got, want2) {
				t.Errorf("after restart the state holds %v, want %v", got, want2)
			}
		})
	}
}

func TestForceNewClusterRefuses(t *testing.T) {
	t.Run("running node", func(t *testing.T) {
		cfg, _ := testConfig(t)
		start(t, cfg)
		if err := ForceNewCluster(cfg, &listSM{}); !errors.Is(err, ErrLocked) {
			t.Errorf("ForceNewCluster on a running node's dir: %v, want ErrLocked", err)
		}
	})
	t.Run("no state", func(t *testing.T) {
		cfg := Config{ID: 1, DataDir: t.TempDir()}
		if err := ForceNewCluster(cfg, &listSM{}); !errors.Is(err, ErrNoState) {
			t.Errorf("ForceNewCluster on an empty dir: %v, want ErrNoState", err)
		}
	})
	t.Run("not a member", func(t *testing.T) {
		cfg, _ := testConfig(t) // member 1's group
		cfg.ID = 7
		if err := ForceNewCluster(cfg, &listSM{}); !errors.Is(err, ErrUnknownMember) {
			t.Errorf("ForceNewCluster as a non-member: %v, want ErrUnknownMember", err)
		}
	})
}

func TestBootstrapFromSnapshot(t *testing.T) {
	tests := []struct {
		name  string
		index uint64 // 0: BootstrapFromSnapshot (index 1)
	}{
		{name: "index 1"},
		{name: "index 5000", index: 5000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A state taken from another group's state machine.
			src := &listSM{}
			for i, cmd := range seq("old", 5) {
				if err := src.Apply(uint64(i+2), []byte(cmd)); err != nil {
					t.Fatal(err)
				}
			}
			data, err := src.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			cfg, _ := testConfig(t)
			cfg.DataDir = t.TempDir() // fresh, without testConfig's bootstrap
			cfg.Addr = "10.0.0.1:4242"
			if tc.index == 0 {
				err = BootstrapFromSnapshot(cfg, data)
			} else {
				err = BootstrapFromSnapshotAt(cfg, tc.index, data)
			}
			if err != nil {
				t.Fatalf("bootstrap from snapshot: %v", err)
			}
			if err := BootstrapFromSnapshot(cfg, data); !errors.Is(err, ErrExists) {
				t.Errorf("second bootstrap: %v, want ErrExists", err)
			}

			r := start(t, cfg)
			if got, want := r.sm.list(), seq("old", 5); !slices.Equal(got, want) {
				t.Fatalf("restored state %v, want %v", got, want)
			}
			if got, want := r.n.Members(), []Member{{ID: 1, Addr: cfg.Addr, Voter: true}}; !slices.Equal(got, want) {
				t.Errorf("Members() = %v, want %v", got, want)
			}
			propose(t, r.n, "new")
			r.sm.mu.Lock()
			lastIndex := r.sm.indexes[len(r.sm.indexes)-1]
			r.sm.mu.Unlock()
			if lastIndex <= max(tc.index, 1) {
				t.Errorf("new write applied at index %d, want above the snapshot's %d", lastIndex, max(tc.index, 1))
			}
			r.stop(t)

			r = start(t, cfg)
			if got, want := r.sm.list(), append(seq("old", 5), "new"); !slices.Equal(got, want) {
				t.Errorf("after restart the state is %v, want %v", got, want)
			}
		})
	}
}
