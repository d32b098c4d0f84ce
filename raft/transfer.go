package raft

import (
	"context"
	"errors"
	"fmt"
	"time"

	etcdraft "go.etcd.io/raft/v3"
)

// ErrNoTransferTarget: leadership cannot be handed over because no other
// voter was recently active.
var ErrNoTransferTarget = errors.New("raft: no other voter is reachable to take over leadership")

// transferPoll is how often TransferLeadership looks whether the target has
// taken over: a few ticks, small next to the election timeout it waits for.
const transferPoll = 20 * time.Millisecond

// TransferLeadership hands leadership from this node (the leader) to the
// voter with the most log among those recently active, and waits until
// that voter leads. The caller learns the new leader's id. Raft gives the
// transfer one election timeout; after that (or when ctx ends first) the
// transfer failed and this node may still lead.
func (n *Node) TransferLeadership(ctx context.Context) (uint64, error) {
	type pick struct {
		id  uint64
		err error
	}
	picked := make(chan pick, 1)
	err := n.do(ctx, func() {
		if n.raftState != etcdraft.StateLeader {
			picked <- pick{err: ErrNotLeader}
			return
		}
		st := n.rn.Status()
		var target, match uint64
		for _, v := range n.confState.GetVoters() {
			pr, ok := st.Progress[v]
			if v == n.cfg.ID || !ok || !pr.RecentActive {
				continue
			}
			if target == 0 || pr.Match > match || (pr.Match == match && v < target) {
				target, match = v, pr.Match
			}
		}
		if target == 0 {
			picked <- pick{err: ErrNoTransferTarget}
			return
		}
		n.rn.TransferLeader(target)
		picked <- pick{id: target}
	})
	if err != nil {
		return 0, err
	}
	var p pick
	select {
	case p = <-picked:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if p.err != nil {
		return 0, p.err
	}
	// Raft aborts a transfer after an election timeout; wait a little
	// longer so a transfer that just made it is seen.
	deadline := time.NewTimer(2 * time.Duration(n.cfg.ElectionTicks) * n.cfg.TickInterval)
	defer deadline.Stop()
	tick := time.NewTicker(transferPoll)
	defer tick.Stop()
	for {
		if l := n.Leader(); l != 0 && l != n.cfg.ID {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-deadline.C:
			return 0, fmt.Errorf("transfer leadership to %x: it did not take over within two election timeouts", p.id)
		case <-tick.C:
		}
	}
}
