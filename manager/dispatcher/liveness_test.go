package dispatcher

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestSessionDown(t *testing.T) {
	const (
		period = time.Second
		grace  = HeartbeatGraceMultiplier * period
		window = period + period/2
	)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	tests := []struct {
		name       string
		now        time.Duration // since t0, the last heartbeat
		verdict    time.Duration // since t0; -1: no verdict
		wantSignal string        // "" for not down
	}{
		{name: "recent heartbeat, no verdict", now: period, verdict: -1},
		{name: "heartbeat grace ended", now: grace + time.Millisecond, verdict: -1, wantSignal: signalHeartbeat},
		{name: "exactly at the grace", now: grace, verdict: -1},
		{name: "verdict on a silent node", now: 2 * period, verdict: 2 * period, wantSignal: signalGossip},
		{name: "verdict contradicted by a recent heartbeat", now: period, verdict: period},
		{name: "verdict contradicted by a heartbeat just within the window", now: window, verdict: period / 2},
		{name: "contradicted verdict stands once the heartbeat is old", now: window + time.Millisecond, verdict: period / 2, wantSignal: signalGossip},
		{name: "verdict arrived after the grace ended, before the heartbeat check", now: grace + period/4, verdict: grace + period/4, wantSignal: signalGossip},
		{name: "pending verdict and grace ended", now: grace + period, verdict: period, wantSignal: signalGossip},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var verdict time.Time
			if tc.verdict >= 0 {
				verdict = at(tc.verdict)
			}
			signal, down := sessionDown(at(tc.now), t0, verdict, grace, window)
			if signal != tc.wantSignal || down != (tc.wantSignal != "") {
				t.Errorf("sessionDown = %q, %v; want %q", signal, down, tc.wantSignal)
			}
		})
	}
}

// livenessStep is one thing that happens to node "n1" in
// TestGossipVerdicts (the clock moves, then the events happen), and what
// its state must be afterwards. Steps are written so that Run's own checks,
// which may come at any time, decide the same.
type livenessStep struct {
	advance     time.Duration // the fake clock moves on first
	beat        bool          // the agent heartbeats
	unreachable bool          // gossip declares the node failed
	reachable   bool          // gossip sees it alive again
	newSession  bool          // the agent opens a new session
	want        shoalpb.NodeState
	wantMsg     string // checked when not empty
}

func TestGossipVerdicts(t *testing.T) {
	const p = testPeriod // window 1.5 p, grace 3 p
	tests := []struct {
		name  string
		steps []livenessStep
	}{
		{
			name: "silent node is down at once",
			steps: []livenessStep{
				{advance: 2 * p, want: nodeReady},
				{unreachable: true, want: nodeDown, wantMsg: msgGossipFailed},
			},
		},
		{
			name: "recent heartbeat makes the verdict wait, then it stands",
			steps: []livenessStep{
				{advance: p, beat: true, unreachable: true, want: nodeReady},
				{advance: p, want: nodeReady},
				{advance: p, want: nodeDown, wantMsg: msgGossipFailed},
			},
		},
		{
			name: "heartbeat after the verdict withdraws it",
			steps: []livenessStep{
				{unreachable: true, want: nodeReady},
				{advance: p, beat: true, want: nodeReady},
				{advance: 2 * p, want: nodeReady},
				{advance: 2 * p, want: nodeDown, wantMsg: msgHeartbeatExpired},
			},
		},
		{
			name: "gossip seeing the node alive withdraws it",
			steps: []livenessStep{
				{unreachable: true, want: nodeReady},
				{reachable: true, want: nodeReady},
				{advance: 2 * p, want: nodeReady},
			},
		},
		{
			name: "new session withdraws it",
			steps: []livenessStep{
				{unreachable: true, want: nodeReady},
				{newSession: true, want: nodeReady},
				{advance: 2 * p, want: nodeReady},
			},
		},
		{
			name: "heartbeat expiry first",
			steps: []livenessStep{
				{advance: 3*p + time.Millisecond, want: nodeDown, wantMsg: msgHeartbeatExpired},
				{unreachable: true, want: nodeDown, wantMsg: msgHeartbeatExpired},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, true, nil)
			sess := h.openSession("n1")
			for i, st := range tc.steps {
				h.clock.Advance(st.advance)
				if st.beat {
					if _, err := h.client.Heartbeat(context.Background(), &shoalpb.HeartbeatRequest{NodeId: "n1", SessionId: sess.id}); err != nil {
						t.Fatalf("step %d: heartbeat: %v", i, err)
					}
				}
				if st.newSession {
					sess = h.openSession("n1")
				}
				if st.unreachable {
					h.d.NodeUnreachable("n1")
				}
				if st.reachable {
					h.d.NodeReachable("n1")
				}
				// Run checks on its own too; checking here makes the
				// outcome of this step certain before the next.
				h.d.expire(context.Background())
				n := h.node("n1")
				if got := n.GetStatus().GetState(); got != st.want {
					t.Fatalf("step %d: node %v (%q), want %v", i, got, n.GetStatus().GetMessage(), st.want)
				}
				if got := n.GetStatus().GetMessage(); st.wantMsg != "" && got != st.wantMsg {
					t.Fatalf("step %d: message %q, want %q", i, got, st.wantMsg)
				}
			}
		})
	}
}

func TestGossipVerdictEndsSession(t *testing.T) {
	h := newHarness(t, true, nil)
	sess := h.openSession("n1")
	h.clock.Advance(2 * testPeriod)
	h.d.NodeUnreachable("n1")
	h.waitNodeState("n1", nodeDown)
	_, err := sess.stream.Recv()
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), msgGossipFailed) {
		t.Errorf("session stream ended with %v, want NotFound saying %q", err, msgGossipFailed)
	}
}

func TestGossipVerdictOnNodesWithoutSession(t *testing.T) {
	tests := []struct {
		name    string
		preload *shoalpb.Node
		want    shoalpb.NodeState
		wantMsg string
	}{
		{
			// READY when this leader took over, no session yet: nothing
			// contradicts gossip.
			name:    "unconfirmed after a leader change",
			preload: &shoalpb.Node{Id: "n1", Status: &shoalpb.NodeStatus{State: nodeReady}},
			want:    nodeDown, wantMsg: msgGossipFailed,
		},
		{
			// Its agent closed the session: the daemon stopped or crashed,
			// its containers may still run.
			name:    "disconnected",
			preload: &shoalpb.Node{Id: "n1", Status: &shoalpb.NodeStatus{State: nodeDisconnected, Message: "session closed"}},
			want:    nodeDisconnected, wantMsg: "session closed",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, true, func(b *store.Batch) { b.CreateNode(tc.preload) })
			h.openSession("other") // Run has started
			h.d.NodeUnreachable("n1")
			h.d.expire(context.Background())
			n := h.node("n1")
			if n.GetStatus().GetState() != tc.want || n.GetStatus().GetMessage() != tc.wantMsg {
				t.Errorf("node %v %q, want %v %q", n.GetStatus().GetState(), n.GetStatus().GetMessage(), tc.want, tc.wantMsg)
			}
		})
	}
}

func TestGossipVerdictIgnoredWhenNotLeader(t *testing.T) {
	h := newHarness(t, false, func(b *store.Batch) {
		b.CreateNode(&shoalpb.Node{Id: "n1", Status: &shoalpb.NodeStatus{State: nodeReady}})
	})
	h.d.NodeUnreachable("n1")
	h.d.mu.Lock()
	n := len(h.d.verdicts)
	h.d.mu.Unlock()
	if n != 0 {
		t.Errorf("a dispatcher not running kept %d verdicts", n)
	}
}
