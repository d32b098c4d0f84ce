package raft

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// grpcNet runs each member's GRPCTransport behind a gRPC server of its own
// on 127.0.0.1 (insecure: loopback only).
type grpcNet struct {
	t *testing.T

	mu    sync.Mutex // guards following
	addrs map[uint64]string
	lis   map[uint64]net.Listener // listening, not yet served
	trs   map[uint64]*GRPCTransport
	srvs  map[uint64]*grpc.Server
	wg    sync.WaitGroup // Serve goroutines
}

func newGRPCNet(t *testing.T) *grpcNet {
	g := &grpcNet{t: t, addrs: map[uint64]string{}, lis: map[uint64]net.Listener{},
		trs: map[uint64]*GRPCTransport{}, srvs: map[uint64]*grpc.Server{}}
	t.Cleanup(func() {
		g.mu.Lock()
		var ids []uint64
		for id := range g.trs {
			ids = append(ids, id)
		}
		for _, l := range g.lis {
			_ = l.Close()
		}
		g.mu.Unlock()
		for _, id := range ids {
			g.detach(id)
		}
		g.wg.Wait()
	})
	return g
}

func (g *grpcNet) listen(addr string) net.Listener {
	g.t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		g.t.Fatalf("listen on %s: %v", addr, err)
	}
	return l
}

func (g *grpcNet) addr(id uint64) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if a, ok := g.addrs[id]; ok {
		return a
	}
	l := g.listen("127.0.0.1:0")
	g.addrs[id], g.lis[id] = l.Addr().String(), l
	return g.addrs[id]
}

func (g *grpcNet) transport(id uint64) Transport {
	addr := g.addr(id)
	tr := NewGRPCTransport(TransportConfig{
		Self: id,
		Addr: addr,
		Dial: func(_ context.Context, addr string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		},
	})
	g.mu.Lock()
	old := g.trs[id]
	g.trs[id] = tr
	g.mu.Unlock()
	if old != nil {
		old.Close() // made for a config that was not started
	}
	return tr
}

func (g *grpcNet) attach(id uint64, n *Node) {
	g.mu.Lock()
	defer g.mu.Unlock()
	l, ok := g.lis[id]
	delete(g.lis, id)
	if !ok {
		l = g.listen(g.addrs[id]) // restarted on its old address
	}
	srv := grpc.NewServer()
	g.trs[id].Register(srv, n)
	g.srvs[id] = srv
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		_ = srv.Serve(l)
	}()
}

func (g *grpcNet) detach(id uint64) {
	g.mu.Lock()
	srv, tr := g.srvs[id], g.trs[id]
	delete(g.srvs, id)
	delete(g.trs, id)
	g.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
	if tr != nil {
		tr.Close()
	}
}

func TestGRPCTransportCluster(t *testing.T) {
	c := newClusterOn(t, newGRPCNet(t), 3, 10, 5)
	c.writeAll(seq("a", 10)...)
	// Large commands make the snapshot a new member needs span several
	// transport chunks.
	big := strings.Repeat("x", 400<<10)
	c.writeAll(big+"1", big+"2", big+"3")
	c.converge()

	old := c.leader().cfg.ID
	c.crash(old)
	if c.leader().cfg.ID == old {
		t.Fatal("crashed leader still leads")
	}
	c.writeAll(seq("b", 10)...)
	c.converge()

	c.add(4, true)
	c.writeAll("after-join")
	c.converge()
	if !strings.Contains(c.logs[4].String(), "installed snapshot from leader") {
		t.Error("member 4 caught up without a snapshot; the test no longer covers chunked snapshots")
	}
	if got := len(c.members[4].sm.list()); got != 24 {
		t.Errorf("member 4 applied %d commands, want 24", got)
	}

	// The crashed leader comes back on its address and catches up.
	c.start(old, false)
	c.writeAll("last")
	c.converge()
}
