package raft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// waitTimeout bounds every wait in the cluster tests: against hangs, not a
// speed bound.
const waitTimeout = 20 * time.Second

// memNet is an in-memory network between cluster members that can cut
// links. Each member has an inbox drained in order by a goroutine of the
// test's, so Send never blocks a node's loop.
type memNet struct {
	ctx        context.Context
	startInbox func(id uint64, ch chan *raftpb.Message) // starts id's delivery goroutine

	mu    sync.Mutex // guards following
	nodes map[uint64]*Node
	inbox map[uint64]chan *raftpb.Message
	cut   map[[2]uint64]bool // from, to -> messages dropped
}

func newMemNet(t *testing.T) *memNet {
	ctx, cancel := context.WithCancel(context.Background())
	net := &memNet{ctx: ctx, nodes: map[uint64]*Node{}, inbox: map[uint64]chan *raftpb.Message{}, cut: map[[2]uint64]bool{}}
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	net.startInbox = func(id uint64, ch chan *raftpb.Message) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			net.deliverLoop(id, ch)
		}()
	}
	return net
}

// clusterNet connects a cluster's members.
type clusterNet interface {
	addr(id uint64) string         // member id's address
	transport(id uint64) Transport // a transport for a (re)start of id
	attach(id uint64, n *Node)     // n is id's node, opened, not yet running
	detach(id uint64)              // id's node has stopped
}

// transport returns member id's Transport.
func (net *memNet) transport(id uint64) Transport { return memTransport{net: net, self: id} }

func (net *memNet) addr(id uint64) string { return fmt.Sprintf("addr-%d", id) }

func (net *memNet) detach(uint64) {}

// attach makes n the node receiving id's messages (again, after a restart).
func (net *memNet) attach(id uint64, n *Node) {
	net.mu.Lock()
	defer net.mu.Unlock()
	net.nodes[id] = n
	if _, ok := net.inbox[id]; !ok {
		ch := make(chan *raftpb.Message, 4096)
		net.inbox[id] = ch
		net.startInbox(id, ch)
	}
}

// partition cuts every link between group a and the others.
func (net *memNet) partition(a ...uint64) {
	net.mu.Lock()
	defer net.mu.Unlock()
	for id := range net.nodes {
		if slices.Contains(a, id) {
			continue
		}
		for _, x := range a {
			net.cut[[2]uint64{x, id}] = true
			net.cut[[2]uint64{id, x}] = true
		}
	}
}

func (net *memNet) heal() {
	net.mu.Lock()
	defer net.mu.Unlock()
	clear(net.cut)
}

func (net *memNet) blocked(from, to uint64) bool {
	net.mu.Lock()
	defer net.mu.Unlock()
	return net.cut[[2]uint64{from, to}]
}

func (net *memNet) node(id uint64) *Node {
	net.mu.Lock()
	defer net.mu.Unlock()
	return net.nodes[id]
}

func (net *memNet) deliverLoop(id uint64, ch chan *raftpb.Message) {
	for {
		select {
		case <-net.ctx.Done():
			return
		case m := <-ch:
			if net.blocked(m.GetFrom(), id) {
				continue // cut after it was sent
			}
			n := net.node(id)
			ctx, cancel := context.WithTimeout(net.ctx, time.Second)
			err := n.Step(ctx, m)
			cancel()
			if m.GetType() == raftpb.MsgSnap {
				if from := net.node(m.GetFrom()); from != nil {
					ctx, cancel := context.WithTimeout(net.ctx, time.Second)
					from.ReportSnapshot(ctx, id, err == nil)
					cancel()
				}
			}
		}
	}
}

type memTransport struct {
	net  *memNet
	self uint64
}

func (tr memTransport) Send(_ context.Context, msgs []*raftpb.Message) {
	for _, m := range msgs {
		if tr.net.blocked(tr.self, m.GetTo()) {
			continue
		}
		tr.net.mu.Lock()
		ch := tr.net.inbox[m.GetTo()]
		tr.net.mu.Unlock()
		if ch == nil {
			continue
		}
		select {
		case ch <- m:
		default: // full: dropped, as a real transport would
		}
	}
}

// cluster is a set of members over a memNet, each with its own data dir
// and logs.
type cluster struct {
	t        *testing.T
	net      clusterNet
	base     string
	interval uint64 // SnapshotInterval
	catchUp  uint64
	logs     map[uint64]*logBuffer

	// mu guards following. members is written only by the test's
	// goroutine, under mu; other goroutines read it under mu.
	mu      sync.Mutex
	members map[uint64]*running
	acked   []string // writes Propose acknowledged, in acknowledgement order
}

// newCluster starts a cluster of size voters over a memNet.
func newCluster(t *testing.T, size int, interval, catchUp uint64) *cluster {
	t.Helper()
	return newClusterOn(t, newMemNet(t), size, interval, catchUp)
}

func newClusterOn(t *testing.T, net clusterNet, size int, interval, catchUp uint64) *cluster {
	t.Helper()
	c := &cluster{t: t, net: net, base: t.TempDir(), interval: interval, catchUp: catchUp,
		members: map[uint64]*running{}, logs: map[uint64]*logBuffer{}}
	cfg := c.config(1, false)
	if err := Bootstrap(cfg); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	c.start(1, false)
	waitLeader(t, c.members[1].n)
	for id := uint64(2); id <= uint64(size); id++ {
		c.add(id, true)
	}
	return c
}

func (c *cluster) config(id uint64, join bool) Config {
	if c.logs[id] == nil {
		c.logs[id] = &logBuffer{}
	}
	return Config{
		ID:               id,
		DataDir:          filepath.Join(c.base, fmt.Sprintf("m%d", id)),
		TickInterval:     20 * time.Millisecond,
		SnapshotInterval: c.interval,
		catchUpEntries:   c.catchUp,
		Logger:           slog.New(slog.NewTextHandler(c.logs[id], &slog.HandlerOptions{Level: slog.LevelInfo})),
		Transport:        c.net.transport(id),
		Addr:             c.net.addr(id),
		Join:             join,
	}
}

// start opens member id's data dir (creating an empty one when join) and
// runs it.
func (c *cluster) start(id uint64, join bool) *running {
	c.t.Helper()
	n, sm := open(c.t, c.config(id, join))
	c.net.attach(id, n)
	r := run(c.t, n, sm)
	c.mu.Lock()
	c.members[id] = r
	c.mu.Unlock()
	return r
}

// crash stops member id (its disk state stays).
func (c *cluster) crash(id uint64) {
	c.t.Helper()
	c.members[id].stop(c.t)
	c.net.detach(id)
	c.mu.Lock()
	delete(c.members, id)
	c.mu.Unlock()
}

// add starts id as a joining member and adds it through the leader.
func (c *cluster) add(id uint64, voter bool) {
	c.t.Helper()
	c.start(id, true)
	c.retry(fmt.Sprintf("add member %d", id), func(l *Node, ctx context.Context) error {
		return l.AddMember(ctx, id, c.net.addr(id), voter)
	})
}

// retry runs f on the leader until it succeeds, over leader changes.
func (c *cluster) retry(what string, f func(l *Node, ctx context.Context) error) {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		l := c.leader()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := f(l, ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// leader waits for a running member that is leader and returns it.
func (c *cluster) leader() *Node {
	c.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if l := c.findLeader(); l != nil {
			return l
		}
		if time.Now().After(deadline) {
			c.t.Fatal("no leader elected")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// findLeader returns a running member that is leader, nil if none; safe
// from any goroutine.
func (c *cluster) findLeader() *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.members {
		if r.n.IsLeader() {
			return r.n
		}
	}
	return nil
}

// write proposes cmd on n and records it when acknowledged.
func (c *cluster) write(ctx context.Context, n *Node, cmd string) error {
	if err := n.Propose(ctx, []byte(cmd)); err != nil {
		return err
	}
	c.mu.Lock()
	c.acked = append(c.acked, cmd)
	c.mu.Unlock()
	return nil
}

// writeAll writes cmds through whoever leads, retrying a command only when
// it was surely not proposed (ErrNotLeader): retrying one whose outcome is
// unknown could apply it twice.
func (c *cluster) writeAll(cmds ...string) {
	c.t.Helper()
	for _, cmd := range cmds {
		deadline := time.Now().Add(waitTimeout)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := c.write(ctx, c.leader(), cmd)
			cancel()
			if err == nil {
				break
			}
			if !errors.Is(err, ErrNotLeader) || time.Now().After(deadline) {
				c.t.Fatalf("write %q: %v", cmd, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// converge waits until every running member has applied as far as the
// leader, then checks the invariant: all members hold the same commands in
// the same order, and every acknowledged write is among them in the order
// it was acknowledged.
func (c *cluster) converge() {
	c.t.Helper()
	l := c.leader()
	// A read index makes the leader's applied index current.
	c.retry("read index", func(l *Node, ctx context.Context) error { return l.ReadIndex(ctx) })
	target := l.AppliedIndex()
	deadline := time.Now().Add(waitTimeout)
	for id, r := range c.members {
		for r.n.AppliedIndex() < target {
			if time.Now().After(deadline) {
				c.t.Fatalf("member %d applied %d, leader %d; its log ends:\n%s\nleader's log ends:\n%s", id, r.n.AppliedIndex(), target,
					tail(c.logs[id].String()), tail(c.logs[l.cfg.ID].String()))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	c.checkInvariant()
}

// checkInvariant checks the members' commands against each other and the
// acknowledged writes: a member's list is a prefix of any longer one, and
// the acknowledged writes appear in order in every member that has applied
// as far as the last of them.
func (c *cluster) checkInvariant() {
	c.t.Helper()
	c.mu.Lock()
	acked := slices.Clone(c.acked)
	c.mu.Unlock()
	var longest []string
	lists := map[uint64][]string{}
	for id, r := range c.members {
		lists[id] = r.sm.list()
		if len(lists[id]) > len(longest) {
			longest = lists[id]
		}
	}
	for id, l := range lists {
		if !slices.Equal(l, longest[:len(l)]) {
			c.t.Errorf("member %d applied %q, which is not a prefix of another member's %q", id, l, longest)
		}
	}
	pos := 0
	for _, a := range acked {
		k := slices.Index(longest[pos:], a)
		if k < 0 {
			c.t.Fatalf("acknowledged write %q missing or out of order in the applied log %q", a, longest)
		}
		pos += k + 1
	}
}

// eventually polls cond until it holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tail returns the end of a log for failure messages.
func tail(s string) string { return s[max(0, len(s)-3000):] }
