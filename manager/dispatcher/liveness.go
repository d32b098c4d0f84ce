package dispatcher

import "time"

// Two signals mark a node DOWN, whichever fires first:
//
//   - heartbeats: the node's session has had no heartbeat for
//     HeartbeatGraceMultiplier periods ("heartbeat expired");
//   - gossip: the hosts' membership layer (SWIM) declared the node failed,
//     and the node's heartbeats do not contradict it ("gossip: node
//     unreachable").
//
// Gossip's verdict stands unless the node heartbeated within the last
// gossipWindow (one and a half periods: agents heartbeat every period plus
// a round trip, so a working session is never older than that by more than
// a late packet). A verdict that a recent heartbeat contradicts is not
// dropped but waits: the node goes DOWN once its last heartbeat is
// gossipWindow old (at the next check: Run checks every half period),
// unless the verdict is withdrawn first, by
//
//   - a heartbeat received after the verdict (the node answers on its
//     session: gossip alone is broken, e.g. UDP filtered, and the session
//     keeps working),
//   - a new session of the node, or
//   - gossip seeing the node alive again.
//
// So a flap of gossip alone never ends a working session (one is seen
// when a partition heals: the host that was cut off spreads its stale
// verdicts on the others until they refute them, within a gossip round or
// two), and a node that
// went silent goes DOWN about when gossip says so (or gossipWindow after its
// last heartbeat, if gossip was quicker than that) instead of waiting for
// the heartbeat grace.
//
// A node gossip declares failed that this leader has no session of but
// that was READY when it took over (unconfirmed) goes DOWN at once: nothing
// contradicts the verdict. Other nodes without a session (DISCONNECTED:
// their agent closed its session, so the daemon stopped or crashed while
// its containers may still run; or already DOWN) are left as they are.
//
// Only the leader acts: verdicts are taken only while Run runs and are
// forgotten when it stops, so a new leader never acts on verdicts it heard
// as a follower (which may predate a healed partition; its own
// unconfirmed grace covers the nodes lost meanwhile).

// Signals that mark a node DOWN, as logged and in NodeStatus.Message.
const (
	signalHeartbeat    = "heartbeat"
	signalGossip       = "gossip"
	signalLeaderChange = "leader change"

	msgHeartbeatExpired = "heartbeat expired"
	msgGossipFailed     = "gossip: node unreachable"
	msgNoSession        = "no session since the leader changed"
)

// gossipWindow is how recent a heartbeat must be to contradict gossip's
// verdict: one period plus half a period of slack for a late heartbeat.
func (d *Dispatcher) gossipWindow() time.Duration { return d.period + d.period/2 }

// NodeUnreachable records gossip's verdict that the node cannot be
// reached; the node goes DOWN as the rule above says. It never blocks: the
// dispatcher's Run acts on it. A dispatcher that is not running (not the
// leader) ignores it.
func (d *Dispatcher) NodeUnreachable(nodeID string) {
	d.mu.Lock()
	if d.runCtx == nil {
		d.mu.Unlock()
		return
	}
	d.verdicts[nodeID] = d.now()
	d.mu.Unlock()
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// NodeReachable withdraws gossip's verdict on the node, if any: gossip
// sees it alive again. Its session, not gossip, makes it READY.
func (d *Dispatcher) NodeReachable(nodeID string) {
	d.mu.Lock()
	delete(d.verdicts, nodeID)
	d.mu.Unlock()
}

// sessionDown decides whether a node with a session is DOWN at now, and by
// which signal: lastBeat is its last heartbeat (or the session's start),
// verdict when gossip declared it unreachable (zero for no verdict).
//
// When a check finds both signals fired, gossip is named: the heartbeat
// grace ran out since the last periodic check, and the verdict's arrival
// triggered this one, before the heartbeat check would have come.
func sessionDown(now, lastBeat, verdict time.Time, grace, window time.Duration) (signal string, down bool) {
	silent := now.Sub(lastBeat)
	switch {
	case !verdict.IsZero() && silent > window:
		return signalGossip, true
	case silent > grace:
		return signalHeartbeat, true
	}
	return "", false
}
