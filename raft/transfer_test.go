package raft

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestTransferLeadership(t *testing.T) {
	c := newCluster(t, 3, 1000, 0)
	c.writeAll(seq("before", 10)...)
	old := c.leader()

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	to, err := old.TransferLeadership(ctx)
	if err != nil {
		t.Fatalf("transfer leadership: %v", err)
	}
	if to == old.cfg.ID {
		t.Fatalf("leadership stayed with %d", to)
	}
	if l := c.leader(); l.cfg.ID != to {
		t.Fatalf("leader is %d, transfer said %d", l.cfg.ID, to)
	}
	if _, err := old.TransferLeadership(ctx); !errors.Is(err, ErrNotLeader) {
		t.Errorf("transfer from a follower: got %v, want ErrNotLeader", err)
	}
	// Nothing acknowledged before the transfer is lost, and the new leader
	// takes writes.
	c.writeAll(seq("after", 10)...)
	c.converge()
	if got := c.members[old.cfg.ID].sm.list(); len(got) != 20 {
		t.Errorf("old leader applied %d commands, want 20", len(got))
	}
}

func TestTransferLeadershipWithoutTarget(t *testing.T) {
	c := newCluster(t, 3, 1000, 0)
	c.writeAll("x")
	l := c.leader()
	for id := range c.members {
		if id != l.cfg.ID {
			c.crash(id)
		}
	}
	// Let the leader notice its followers are inactive.
	time.Sleep(3 * time.Duration(DefaultElectionTicks) * 20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if _, err := l.TransferLeadership(ctx); err == nil {
		t.Fatal("transfer with every follower down succeeded")
	}
}
