package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/shoal-project/shoal/agent"
	"github.com/shoal-project/shoal/overlay/dns"
	"github.com/shoal-project/shoal/overlay/gossip"
	"github.com/shoal-project/shoal/overlay/vxlan"
)

// overlayPrefixLen is how much of the node id (after an "o") names this
// host's overlay objects (sandbox files, links): enough to tell apart the
// hosts sharing a machine (simulated hosts in tests), short enough for
// interface names.
const overlayPrefixLen = 5

// overlay returns this host's overlay component, made on first use with
// the host's advertise address as its VTEP, and its sync loop started;
// nil when the host cannot run overlays (the error is logged once).
func (d *Daemon) overlay() *agent.Overlay {
	d.overlayOnce.Do(func() {
		o, err := d.newOverlay()
		if err != nil {
			d.log.Error("overlay networks disabled on this host", "err", err)
			return
		}
		d.overlayNet = o
		ctx := d.runCtx
		d.goBackground(func() { o.Run(ctx) })
	})
	return d.overlayNet
}

func (d *Daemon) newOverlay() (*agent.Overlay, error) {
	host, _, err := net.SplitHostPort(d.advertiseAddr())
	if err != nil {
		host = d.advertiseAddr()
	}
	vtep, err := netip.ParseAddr(host)
	if err != nil || vtep.IsUnspecified() {
		return nil, fmt.Errorf("the overlay needs this host's address (--advertise-addr), got %q", host)
	}
	prefix := "o" + d.nodeID[:min(overlayPrefixLen, len(d.nodeID))]
	nsDir := filepath.Join(d.cfg.RunDir, "overlay")
	if err := os.MkdirAll(nsDir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", nsDir, err)
	}
	vx, err := vxlan.New(vxlan.Config{
		Prefix:   prefix,
		NetNSDir: nsDir,
		VTEP:     vtep,
		Logger:   d.log.With("component", "vxlan"),
	})
	if err != nil {
		return nil, err
	}
	names := &dns.Table{}
	srv, err := dns.New(dns.Config{Resolver: names, Logger: d.log.With("component", "dns")})
	if err != nil {
		return nil, err
	}
	d.endpoints = &gossipTable{changes: make(chan struct{}, 1), vtep: vtep, log: d.log.With("component", "gossip-table")}
	if g := d.currentGossip(); g != nil {
		d.endpoints.attach(d.runCtx, g)
	}
	return agent.NewOverlay(agent.OverlayConfig{
		VXLAN: vx, DNS: srv, Names: names, Table: d.endpoints,
		NodeID: d.nodeID, VTEP: vtep, Logger: d.log.With("component", "overlay"),
	}), nil
}

// currentGossip returns the gossip member, nil while there is none.
func (d *Daemon) currentGossip() *gossip.Member {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.gossip
}

// gossipTable is the endpoint table over this host's gossip member, which
// comes and goes with cluster membership: it keeps this host's endpoints
// and hands them to each new member.
type gossipTable struct {
	vtep    netip.Addr
	changes chan struct{}
	log     *slog.Logger

	mu     sync.Mutex // guards following
	local  []agent.OverlayEndpoint
	member *gossip.Member
}

var _ agent.EndpointTable = (*gossipTable)(nil)

// attach makes m the member the table reads and writes, until ctx ends.
func (g *gossipTable) attach(ctx context.Context, m *gossip.Member) {
	g.mu.Lock()
	g.member = m
	local := g.local
	g.mu.Unlock()
	if len(local) > 0 {
		g.Announce(local)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				g.mu.Lock()
				if g.member == m {
					g.member = nil
				}
				g.mu.Unlock()
				g.signal()
				return
			case <-m.TableChanges():
				g.signal()
			}
		}
	}()
	g.signal()
}

func (g *gossipTable) signal() {
	select {
	case g.changes <- struct{}{}:
	default:
	}
}

// Announce implements agent.EndpointTable.
func (g *gossipTable) Announce(eps []agent.OverlayEndpoint) {
	g.mu.Lock()
	g.local = eps
	m := g.member
	g.mu.Unlock()
	if m == nil {
		g.signal()
		return
	}
	st := gossip.NodeState{VTEP: g.vtep}
	for _, e := range eps {
		st.Endpoints = append(st.Endpoints, gossip.Endpoint{
			TaskID: e.TaskID, ServiceID: e.ServiceID, ServiceName: e.ServiceName,
			NetworkID: e.NetworkID, Addr: e.Addr, MAC: e.MAC, Ready: e.Ready,
		})
	}
	if _, err := m.SetLocal(st); err != nil {
		// An invalid or oversized state: the others keep the last good one.
		g.log.Warn("announce overlay endpoints", "endpoints", len(eps), "err", err)
	}
}

// Endpoints implements agent.EndpointTable.
func (g *gossipTable) Endpoints() []agent.OverlayEndpoint {
	g.mu.Lock()
	m, local := g.member, g.local
	g.mu.Unlock()
	if m == nil {
		return local
	}
	var out []agent.OverlayEndpoint
	for id, st := range m.Table() {
		for _, e := range st.Endpoints {
			out = append(out, agent.OverlayEndpoint{
				NodeID: id, TaskID: e.TaskID, ServiceID: e.ServiceID, ServiceName: e.ServiceName,
				NetworkID: e.NetworkID, Addr: e.Addr, MAC: e.MAC, VTEP: st.VTEP, Ready: e.Ready,
			})
		}
	}
	return out
}

// Changes implements agent.EndpointTable.
func (g *gossipTable) Changes() <-chan struct{} { return g.changes }
