package gossip

import (
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultPort is the gossip port, TCP and UDP (DESIGN.md; Docker Swarm
// uses the same one).
const DefaultPort = 7946

// Failure detection: with these a member that stops answering is declared
// failed 1.5–2.5 s after it went silent on a LAN of up to 9 hosts (0.5–1 s
// until a probe of it fails, then 1 s of suspicion; the suspicion grows to
// 2 s at 100 hosts and 3 s at 1,000). That is under the dispatcher's
// heartbeat grace (3 s after the last heartbeat), so gossip is usually the
// faster of the two signals, and within DESIGN.md's "node marked down
// ≤ 5 s". memberlist's LAN defaults take 5–10 s.
const (
	// probeInterval is how often each member probes one other member
	// (round robin over a shuffled list): with N members, a dead one is
	// probed by somebody within about one interval. Half memberlist's 1 s
	// default, for a few more 100-byte packets per second per host.
	probeInterval = 500 * time.Millisecond
	// probeTimeout is how long a direct ping waits for its ack before
	// other members are asked to ping indirectly. LAN round trips are
	// well under a millisecond; 250 ms forgives a busy host (a GC pause,
	// CPU contention) and leaves the other half of the probe interval to
	// the indirect pings.
	probeTimeout = 250 * time.Millisecond
	// suspicionMult sets how long a suspected member has to refute before
	// it is declared failed: suspicionMult × max(1, log10 N) ×
	// probeInterval, 1 s below 10 members. The suspect hears of it by
	// gossip, ten gossip rounds in that time. With 2, Lifeguard waits for
	// no independent confirmation (it expects suspicionMult − 2), so the
	// timeout is never stretched towards SuspicionMaxTimeoutMult times
	// itself; a prober that is itself unhealthy still slows down through
	// the awareness multiplier (memberlist's default) instead of accusing
	// healthy members.
	suspicionMult = 2
	// gossipInterval is how often a member sends its queued broadcasts
	// (suspect, dead, alive) to gossipNodes random members: a verdict
	// reaches every member of a 100-host cluster within a few hundred ms.
	gossipInterval = 100 * time.Millisecond
	gossipNodes    = 3
	// pushPullInterval is how often a member exchanges its full state with
	// a random other (anti-entropy, repairing what gossip dropped);
	// memberlist stretches it with the cluster's size. Half the LAN
	// default: the state is small (the members, and the endpoint table at
	// about 50 bytes an endpoint), and a lost broadcast of the table not
	// caught by repairLoop waits for it.
	pushPullInterval = 15 * time.Second
	// tcpTimeout bounds joins and push/pull, which go over TCP. On a LAN a
	// connection that takes longer is to a dead host: the reconnect loop
	// must not wait memberlist's default 10 s on each unreachable seed.
	tcpTimeout = 2 * time.Second
)

// Lifecycle timings.
const (
	// reconnectInterval is how often the seeds not seen alive, and one
	// member seen failing, are joined again. memberlist never probes a
	// member it declared failed, so without this two sides of a healed
	// partition could stay apart until a push/pull happens to cross; with
	// it they merge within about this long of the network healing. A join
	// of a dead host costs one TCP connection attempt.
	reconnectInterval = 3 * time.Second
	// reconnectTimeout is how long a failed member is tried again before
	// it is forgotten (Serf's default). A host that comes back later
	// rejoins through its own seeds.
	reconnectTimeout = 24 * time.Hour
	// leaveTimeout bounds how long Run waits for its leave message to go
	// out when it stops: enough for a few gossip rounds; a member that
	// cannot send it is seen failed instead, which is also true.
	leaveTimeout = time.Second
)

// Endpoint table timings and sizes.
const (
	// goneGrace is how long a member keeps the endpoint state of a node
	// it no longer sees alive, failed or left alike, before it drops it
	// (and the data plane withdraws its neighbour entries, WireGuard peer,
	// DNS answers and backends). Twice the failure detection time:
	//   - A failed host's containers are gone from the cluster's point of
	//     view: the managers mark it down and start its tasks elsewhere
	//     (≤ 10 s, DESIGN.md). Its endpoints leave the load balancers
	//     about 7 s after it went silent (detection, then the grace),
	//     before their replacements are up.
	//   - A member wrongly declared failed (a burst of lost packets, a
	//     long pause) refutes as soon as it hears the verdict, within a few
	//     gossip rounds or at the latest at the next reconnect (3 s): the
	//     grace outlasts that, so a flapping host does not make every
	//     other host flush and reprogram its entries.
	//   - A member that left is not dropped at once: a daemon leaves when
	//     it stops, and its containers outlive it (DESIGN.md), so a
	//     restart must not cut their traffic. A restart longer than the
	//     grace costs the gap until its agent publishes again, as it does
	//     when it starts; the managers have by then marked the node down
	//     anyway (their heartbeat grace is 3 s).
	goneGrace = 5 * time.Second
	// expireInterval is how often a member looks for states to drop: the
	// precision of goneGrace.
	expireInterval = 250 * time.Millisecond
	// fragmentTimeout is how long a member keeps the fragments of an
	// incomplete state: it only bounds memory. The fragments of even the
	// largest state cross the cluster within seconds, and a set that
	// stalls is fetched whole after repairDelay.
	fragmentTimeout = 30 * time.Second
	// repairDelay is how long a member waits for the next fragment of a
	// state it is reassembling before it fetches the state from its owner
	// by push/pull instead, and repairInterval how often it looks. While
	// a state spreads, its fragments come in every few gossip intervals;
	// a second of silence means the spreading is over and missed one.
	// A fetch too early costs one push/pull (the whole table both ways,
	// over TCP), not a wrong table.
	repairDelay    = time.Second
	repairInterval = 250 * time.Millisecond
	// minBroadcastNodes: the table's broadcasts are sent as often as in a
	// cluster of at least 10 members, 8 times by each member that has
	// them, where memberlist's own messages are sent 4 times below 10
	// members. Each time goes to a random member: with 3 members, 4 picks
	// miss a given one 1 time in 16, for each fragment of a state. Above
	// 10 members the count is memberlist's (RetransmitMult × ceil(log10
	// (n+1))): every member passes on what it received, so each member
	// is sent about that many copies.
	minBroadcastNodes = 10
	// maxBroadcastSize bounds a broadcast fragment of a state, header
	// included. memberlist fills UDP packets of UDPBufferSize (1,400
	// bytes, under the Ethernet MTU); taking off its compound header (2),
	// encryption (up to 45), the entry's framing (2) and the user message
	// type (1) leaves 1,350 bytes for a packet that carries nothing else.
	// 1,200 leaves room for a few of memberlist's own messages (about 50
	// bytes each), which go first, so a fragment does not wait for a
	// packet of its own.
	maxBroadcastSize = 1200
)

// memberlistConfig is memberlist's LAN configuration with Shoal's timings.
// Transport, identity and delegates are set by New.
func memberlistConfig() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.ProbeInterval = probeInterval
	c.ProbeTimeout = probeTimeout
	c.SuspicionMult = suspicionMult
	c.GossipInterval = gossipInterval
	c.GossipNodes = gossipNodes
	c.PushPullInterval = pushPullInterval
	c.TCPTimeout = tcpTimeout
	return c
}
