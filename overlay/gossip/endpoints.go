package gossip

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/memberlist"
)

// How the endpoint table travels (see table for what a member keeps):
//
//   - SetLocal encodes the owner's whole state and cuts it into fragments
//     of at most maxBroadcastSize bytes (one, for a host with up to about
//     20 endpoints), queued on the member's TransmitLimitedQueue: memberlist
//     piggybacks them on its gossip packets. Every fragment carries the
//     node, the version and its place; a state is applied once all its
//     fragments arrived. Each set is a whole state, never a delta, so a
//     member needs nothing but the newest version: a newer version
//     invalidates the older one's fragments in every queue and
//     reassembly. (Splitting was chosen over "changed, version N"
//     notices followed by a fetch: memberlist can only fetch by a full
//     push/pull, which would send the whole cluster's table to and from
//     the owner once per member for every change. Here a fetch happens
//     only when fragments went missing, below.)
//   - A member that receives a fragment it did not have queues it again,
//     so a state spreads epidemically, as memberlist's own messages do,
//     instead of only from its owner's queue.
//   - Push/pull (LocalState, MergeRemoteState) carries every state a
//     member holds of a live node, its own included, over TCP: a joining
//     member gets the whole table at once, a healed partition merges, and
//     a state lost despite the retransmissions is repaired within
//     pushPullInterval.
//   - A state whose fragments stopped coming before the last one arrived
//     is fetched at once, by a push/pull with its owner (repairLoop):
//     every fragment is one more chance of loss, so a large state would
//     otherwise often wait for the periodic push/pull.
//
// Lock order: memberlist calls the event delegate with its node lock
// held, and the event delegate takes qmu, then, separately, tmu. Nothing
// calls into memberlist or the broadcast queue (whose NumNodes takes qmu)
// with tmu held.

// SetLocal publishes st as this host's whole state and returns its
// version. st.NodeID must be empty or the member's name; st.Version is
// ignored: the member assigns a version greater than every version of this
// node it issued or heard of (see versionClock). A state equal to the one
// published is not published again: its version is returned. st is copied.
func (m *Member) SetLocal(st NodeState) (uint64, error) {
	if st.NodeID != "" && st.NodeID != m.cfg.Name {
		return 0, fmt.Errorf("%w: node id %q, this member is %q", ErrInvalidState, st.NodeID, m.cfg.Name)
	}
	st = st.clone()
	st.NodeID = m.cfg.Name
	st.normalize()
	if err := st.validate(); err != nil {
		return 0, err
	}
	m.tmu.Lock()
	if l := m.tab.local; l != nil {
		st.Version = l.state.Version
		if bytes.Equal(encodeState(st), l.raw) {
			m.tmu.Unlock()
			return st.Version, nil
		}
	}
	msgs, err := m.setLocalLocked(st)
	m.tmu.Unlock()
	if err != nil {
		return 0, err
	}
	m.signalTable()
	m.broadcast(msgs)
	return msgs[0].version, nil
}

// Table returns a copy of the endpoint table: the newest state of every
// node heard of, this one's included, by node id. The states of nodes no
// longer seen alive stay in it for goneGrace.
func (m *Member) Table() map[string]NodeState {
	m.tmu.Lock()
	defer m.tmu.Unlock()
	return m.tab.snapshot()
}

// TableChanges receives a value after the table changed: a state added,
// replaced or dropped. Changes coalesce (the channel holds one value) and
// never wait for the reader, who reads Table after each. It is never
// closed.
func (m *Member) TableChanges() <-chan struct{} { return m.changes }

func (m *Member) signalTable() {
	select {
	case m.changes <- struct{}{}:
	default:
	}
}

// setLocalLocked gives the normalized, valid st a new version, stores it
// as this member's state and returns its broadcasts.
func (m *Member) setLocalLocked(st NodeState) ([]*stateBroadcast, error) {
	st.Version = m.clock.next(time.Now(), m.floor)
	raw := encodeState(st)
	if len(raw) > maxStateSize {
		return nil, fmt.Errorf("%w: %d endpoints encode to %d bytes, more than %d", ErrInvalidState, len(st.Endpoints), len(raw), maxStateSize)
	}
	m.tab.local = &entry{state: st, raw: raw}
	var bs []*stateBroadcast
	for i, msg := range splitState(st.NodeID, st.Version, raw) {
		bs = append(bs, &stateBroadcast{node: st.NodeID, version: st.Version, index: i, msg: msg})
	}
	return bs, nil
}

func (m *Member) broadcast(bs []*stateBroadcast) {
	for _, b := range bs {
		m.bcast.QueueBroadcast(b)
	}
}

// receive handles a broadcast fragment (NotifyMsg).
func (m *Member) receive(msg []byte) {
	f, err := decodeFragment(msg)
	if err != nil {
		m.log.Debug("gossip: endpoint table message ignored", "err", err)
		return
	}
	if f.node == m.cfg.Name {
		m.refute(f.version)
		return
	}
	now := time.Now()
	m.tmu.Lock()
	raw, fresh := m.tab.addFragment(f, now)
	changed := false
	if raw != nil {
		var st NodeState
		st, err = decodeState(raw)
		switch {
		case err != nil:
		case st.NodeID != f.node || st.Version != f.version:
			err = fmt.Errorf("fragments of node %s version %d hold node %s version %d", f.node, f.version, st.NodeID, st.Version)
		default:
			changed = m.tab.apply(st, raw, now)
		}
	}
	m.tmu.Unlock()
	if err != nil {
		m.log.Debug("gossip: endpoint state ignored", "node", f.node, "version", f.version, "err", err)
	}
	if fresh {
		// msg is memberlist's buffer, reused after NotifyMsg returns.
		m.bcast.QueueBroadcast(&stateBroadcast{node: f.node, version: f.version, index: f.index, msg: bytes.Clone(msg)})
	}
	if changed {
		m.signalTable()
	}
}

// localState is this member's push/pull state (LocalState).
func (m *Member) localState() []byte {
	m.tmu.Lock()
	defer m.tmu.Unlock()
	return encodeTable(m.tab.encoded())
}

// mergeRemote applies another member's push/pull state
// (MergeRemoteState): each state on its own, so one that does not decode
// costs only itself.
func (m *Member) mergeRemote(buf []byte) {
	raws, err := decodeTable(buf)
	if err != nil {
		m.log.Debug("gossip: endpoint table from push/pull ignored", "err", err)
		return
	}
	now := time.Now()
	var (
		own     uint64 // the highest version of this node's state in buf
		changed bool
		bad     []error
	)
	m.tmu.Lock()
	for _, raw := range raws {
		st, err := decodeState(raw)
		switch {
		case err != nil:
			bad = append(bad, err)
		case st.NodeID == m.cfg.Name:
			own = max(own, st.Version)
		default:
			if m.tab.apply(st, bytes.Clone(raw), now) {
				changed = true
			}
		}
	}
	m.tmu.Unlock()
	for _, err := range bad {
		m.log.Debug("gossip: endpoint state from push/pull ignored", "err", err)
	}
	if own > 0 {
		m.refute(own)
	}
	if changed {
		m.signalTable()
	}
}

// refute handles a state of this node, version v, that came back from
// the others. An echo of the current state is normal. A higher version
// was published by a previous run of this daemon whose clock was ahead
// of this one's: the state published now is published again above it,
// and, before SetLocal, the first state will be.
func (m *Member) refute(v uint64) {
	m.tmu.Lock()
	m.floor = max(m.floor, v)
	var bs []*stateBroadcast
	if l := m.tab.local; l != nil && l.state.Version < v {
		bs, _ = m.setLocalLocked(l.state) // its size was checked when it was set
	}
	m.tmu.Unlock()
	if bs != nil {
		m.log.Info("gossip: this node's state was seen at a higher version; published again above it", "version", v)
		m.signalTable()
		m.broadcast(bs)
	}
}

// tableAlive and tableGone follow the members' liveness: called by the
// event delegate (with memberlist's node lock held).
func (m *Member) tableAlive(node string) {
	m.tmu.Lock()
	m.tab.setAlive(node)
	m.tmu.Unlock()
}

func (m *Member) tableGone(node string) {
	m.tmu.Lock()
	m.tab.setGone(node, time.Now())
	m.tmu.Unlock()
}

// expireLoop drops the states of nodes gone for goneGrace, every
// expireInterval, until ctx ends.
func (m *Member) expireLoop(ctx context.Context) {
	t := time.NewTicker(expireInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.tmu.Lock()
		dropped := m.tab.expire(time.Now())
		m.tmu.Unlock()
		for _, node := range dropped {
			m.log.Info("gossip: endpoints of node "+node+" dropped: not seen alive for "+goneGrace.String(), "node", node)
		}
		if len(dropped) > 0 {
			m.signalTable()
		}
	}
}

// repairLoop fetches, every repairInterval until ctx ends, the states
// whose reassembly stalled (see table.stalled), by a push/pull with
// their owner: one at a time, each bounded by tcpTimeout.
func (m *Member) repairLoop(ctx context.Context) {
	t := time.NewTicker(repairInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.tmu.Lock()
		nodes := m.tab.stalled(time.Now())
		m.tmu.Unlock()
		for _, node := range nodes {
			if ctx.Err() != nil {
				return
			}
			m.qmu.Lock()
			addr, ok := m.alive[node]
			m.qmu.Unlock()
			if !ok {
				continue // gone: nothing to fetch
			}
			m.log.Debug("gossip: fragments of a state went missing; fetching it by push/pull", "node", node, "addr", addr.String())
			if _, err := m.ml.Join([]string{addr.String()}); err != nil {
				m.log.Debug("gossip: fetch by push/pull", "node", node, "err", err)
			}
		}
	}
}

// broadcastNodes is the cluster size the broadcast queue computes its
// retransmissions from: RetransmitMult × ceil(log10(n+1)) per message and
// member, with n the members seen alive, but at least minBroadcastNodes.
func (m *Member) broadcastNodes() int {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	return max(len(m.alive)+1, minBroadcastNodes)
}

// stateBroadcast is one fragment of a node's state in the broadcast
// queue. A fragment invalidates the queued fragments of older versions of
// the same node and its own duplicate.
type stateBroadcast struct {
	node    string
	version uint64
	index   int
	msg     []byte
}

var _ memberlist.Broadcast = (*stateBroadcast)(nil)

func (b *stateBroadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(*stateBroadcast)
	return ok && o.node == b.node && (o.version < b.version || o.version == b.version && o.index == b.index)
}

func (b *stateBroadcast) Message() []byte { return b.msg }
func (b *stateBroadcast) Finished()       {}
