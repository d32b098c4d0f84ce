package gossip

import (
	"bytes"
	"maps"
	"slices"
	"time"
)

// table is the endpoint table as one member holds it: its own state, the
// newest state of every other node it heard of, and the broadcast
// fragments of states being reassembled. It does no I/O and reads no
// clock: the Member calls it under tmu, with the time.
//
// The rules:
//   - Only a higher version of a node's state replaces the one held, from
//     whichever path it comes (broadcast or push/pull, in any order).
//   - A member never takes its own state from others (it is the owner).
//   - The state of a node not seen alive (failed, left, or not yet seen)
//     is kept for goneGrace from the moment it was last seen alive (or
//     the state arrived), then dropped; a node seen alive again keeps its
//     state, and a newer version replaces it as always.
//   - Only the states of nodes seen alive are passed on in push/pull, so
//     that a state dropped here is not brought back by a member that has
//     yet to drop it.
type table struct {
	self    string
	local   *entry              // this member's state; nil until SetLocal
	nodes   map[string]*entry   // the other nodes' states, by node id
	live    map[string]bool     // the other members seen alive
	pending map[string]*pending // states being reassembled, by node id
}

// entry is a node's state as held. Its state is never modified once
// stored (Table hands out copies), so entries share it freely.
type entry struct {
	state NodeState
	raw   []byte // state, encoded
	// goneSince is when the node was last seen alive, or when its state
	// arrived if it was not alive then; zero while it is seen alive.
	goneSince time.Time
}

// pending collects the fragments of one version of a node's state.
type pending struct {
	version uint64
	parts   [][]byte // by index; nil until received
	have    int
	since   time.Time // when the first fragment arrived
	last    time.Time // when the last one arrived
	fetched bool      // stalled returned it
}

func newTable(self string) *table {
	return &table{
		self:    self,
		nodes:   make(map[string]*entry),
		live:    make(map[string]bool),
		pending: make(map[string]*pending),
	}
}

// version is the version of node's state held, 0 if none.
func (t *table) version(node string) uint64 {
	e := t.entryOf(node)
	if e == nil {
		return 0
	}
	return e.state.Version
}

func (t *table) entryOf(node string) *entry {
	if node == t.self {
		return t.local
	}
	return t.nodes[node]
}

// apply stores another node's decoded state st (raw encoded) if it is
// newer than the one held, and reports whether it did.
func (t *table) apply(st NodeState, raw []byte, now time.Time) bool {
	if st.NodeID == t.self {
		return false
	}
	old := t.nodes[st.NodeID]
	if old != nil && st.Version <= old.state.Version {
		return false
	}
	e := &entry{state: st, raw: raw}
	if !t.live[st.NodeID] {
		// A newer version relayed by others does not extend the grace.
		e.goneSince = now
		if old != nil && !old.goneSince.IsZero() {
			e.goneSince = old.goneSince
		}
	}
	t.nodes[st.NodeID] = e
	if p := t.pending[st.NodeID]; p != nil && p.version <= st.Version {
		delete(t.pending, st.NodeID)
	}
	return true
}

// addFragment records a broadcast fragment of another node's state.
// fresh says it was news (neither held nor superseded): the member passes
// it on. state is the whole encoded state once its last fragment arrived.
func (t *table) addFragment(f fragment, now time.Time) (state []byte, fresh bool) {
	if f.node == t.self || f.version <= t.version(f.node) {
		return nil, false
	}
	p := t.pending[f.node]
	switch {
	case p == nil || f.version > p.version:
		// A newer version supersedes the one being reassembled: it is a
		// whole state too.
		p = &pending{version: f.version, parts: make([][]byte, f.count), since: now, last: now}
		t.pending[f.node] = p
	case f.version < p.version || f.count != len(p.parts):
		return nil, false
	}
	if p.parts[f.index] != nil {
		return nil, false
	}
	p.parts[f.index] = bytes.Clone(f.part)
	p.have++
	p.last = now
	if p.have < len(p.parts) {
		return nil, true
	}
	delete(t.pending, f.node)
	return bytes.Join(p.parts, nil), true
}

// setAlive records that node is seen alive.
func (t *table) setAlive(node string) {
	if node == t.self {
		return
	}
	t.live[node] = true
	if e := t.nodes[node]; e != nil {
		e.goneSince = time.Time{}
	}
}

// setGone records that node is no longer seen alive (failed or left).
func (t *table) setGone(node string, now time.Time) {
	delete(t.live, node)
	if e := t.nodes[node]; e != nil && e.goneSince.IsZero() {
		e.goneSince = now
	}
}

// expire drops the states of nodes gone for goneGrace and the
// reassemblies older than fragmentTimeout. It returns the nodes whose
// state it dropped.
func (t *table) expire(now time.Time) []string {
	var dropped []string
	for node, e := range t.nodes {
		if !e.goneSince.IsZero() && now.Sub(e.goneSince) >= goneGrace {
			delete(t.nodes, node)
			dropped = append(dropped, node)
		}
	}
	for node, p := range t.pending {
		if now.Sub(p.since) >= fragmentTimeout {
			delete(t.pending, node)
		}
	}
	slices.Sort(dropped)
	return dropped
}

// stalled returns the nodes whose state's reassembly got no new fragment
// for repairDelay, each once: the member fetches them by push/pull.
func (t *table) stalled(now time.Time) []string {
	var nodes []string
	for node, p := range t.pending {
		if !p.fetched && now.Sub(p.last) >= repairDelay {
			p.fetched = true
			nodes = append(nodes, node)
		}
	}
	slices.Sort(nodes)
	return nodes
}

// snapshot returns a copy of every state held, this member's included.
func (t *table) snapshot() map[string]NodeState {
	s := make(map[string]NodeState, len(t.nodes)+1)
	if t.local != nil {
		s[t.self] = t.local.state.clone()
	}
	for node, e := range t.nodes {
		s[node] = e.state.clone()
	}
	return s
}

// encoded returns the encoded states push/pull passes on: this member's
// and those of the nodes seen alive, in node order (for tests).
func (t *table) encoded() [][]byte {
	var states [][]byte
	if t.local != nil {
		states = append(states, t.local.raw)
	}
	for _, node := range slices.Sorted(maps.Keys(t.nodes)) {
		if e := t.nodes[node]; e.goneSince.IsZero() {
			states = append(states, e.raw)
		}
	}
	return states
}
