package daemon

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/shoal-project/shoal/overlay/gossip"
)

// DefaultGossipPort is the gossip port, TCP and UDP. Every host of a
// cluster uses the same one: a host joins the others' gossip at the
// managers' hosts on its own gossip port.
const DefaultGossipPort = gossip.DefaultPort

// startGossip makes this host a member of the cluster's gossip, named by
// its node id on its advertise address, joining through the managers
// (their cluster API addresses: only the host is used); when it is one
// already, it only updates the managers. The member lives until
// stopGossip or ctx ends, across promotions and demotions. Gossip events
// go to the manager on this host, if any: its dispatcher acts on them when
// it leads.
//
// The gossip is encrypted with the cluster's gossip key: the one saved by
// an earlier session, else the member starts when the agent's first
// session brings the key (onGossipKey).
//
// A host whose gossip cannot start (its port taken, say) still works: the
// managers then notice its loss by heartbeats alone, which is slower.
func (d *Daemon) startGossip(ctx context.Context, managers []string) {
	seeds := d.gossipSeeds(managers)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gossipCtx, d.gossipManagers = ctx, managers
	if d.gossip != nil {
		d.gossip.SetSeeds(seeds)
		return
	}
	if !d.gossipKeyKnown {
		key, err := os.ReadFile(d.gossipKeyPath())
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				d.log.Warn("read the gossip key", "err", err)
			}
			return // started by onGossipKey
		}
		d.gossipKey, d.gossipKeyKnown = key, true
	}
	cfg := gossip.Config{
		Name:      d.nodeID,
		Port:      d.cfg.GossipPort,
		SecretKey: d.gossipKey,
		Logger:    d.log.With("component", "gossip"),
	}
	if len(cfg.SecretKey) == 0 {
		d.log.Warn("the cluster has no gossip key: gossip is not encrypted")
	}
	if host, _, err := net.SplitHostPort(d.advertiseAddr()); err == nil {
		if ip, err := netip.ParseAddr(host); err == nil && !ip.IsUnspecified() {
			cfg.BindAddr = ip
		}
	}
	g, err := gossip.New(cfg)
	if err != nil {
		d.log.Error("gossip not started: node loss is noticed by heartbeats only", "err", err)
		return
	}
	g.SetSeeds(seeds)
	gctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	d.gossip, d.gossipCancel, d.gossipDone = g, cancel, done
	if d.endpoints != nil {
		// The overlay announces this host's endpoints through the new
		// member and reads the table from it.
		d.endpoints.attach(gctx, g)
	}
	d.goBackground(func() {
		defer close(done)
		delivered := make(chan struct{})
		go func() {
			defer close(delivered)
			for ev := range g.Events() {
				d.onGossip(ev)
			}
		}()
		if err := g.Run(gctx); err != nil {
			d.log.Warn("gossip stopped", "err", err)
		}
		<-delivered
	})
}

// setGossipSeeds gives the gossip member the managers' addresses the
// dispatcher sent (cluster API addresses).
func (d *Daemon) setGossipSeeds(managers []string) {
	d.mu.Lock()
	g := d.gossip
	d.mu.Unlock()
	if g != nil {
		g.SetSeeds(d.gossipSeeds(managers))
	}
}

// gossipKeyPath is where the gossip key is kept between daemon runs, so a
// restarted host gossips (and keeps its overlay traffic) before the
// managers answer.
func (d *Daemon) gossipKeyPath() string { return filepath.Join(d.cfg.DataDir, "gossip.key") }

// onGossipKey takes the gossip key a session brought: saved, and the
// gossip (re)started with it when it is new.
func (d *Daemon) onGossipKey(key []byte) {
	d.mu.Lock()
	same := d.gossipKeyKnown && bytes.Equal(d.gossipKey, key)
	running := d.gossip != nil
	ctx, managers := d.gossipCtx, d.gossipManagers
	d.gossipKey, d.gossipKeyKnown = key, true
	d.mu.Unlock()
	if same && running {
		return
	}
	if len(key) > 0 {
		if err := writeFileSync(d.gossipKeyPath(), key); err != nil {
			d.log.Warn("save the gossip key", "err", err)
		}
	}
	if ctx == nil {
		return // not in a cluster (yet)
	}
	if running && !same {
		d.log.Info("gossip key changed: restarting gossip")
		d.stopGossip()
	}
	d.startGossip(ctx, managers)
}

// forgetGossipKey removes the saved key (the host left its cluster).
func (d *Daemon) forgetGossipKey() {
	d.mu.Lock()
	d.gossipKey, d.gossipKeyKnown, d.gossipCtx, d.gossipManagers = nil, false, nil, nil
	d.mu.Unlock()
	if err := os.Remove(d.gossipKeyPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("remove the gossip key", "err", err)
	}
}

// stopGossip leaves the gossip (the others see this host left, not
// failed) and waits until the port is released.
func (d *Daemon) stopGossip() {
	d.mu.Lock()
	cancel, done := d.gossipCancel, d.gossipDone
	d.gossip, d.gossipCancel, d.gossipDone = nil, nil, nil
	d.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// gossipSeeds turns the managers' cluster API addresses into their gossip
// addresses.
func (d *Daemon) gossipSeeds(managers []string) []string {
	var seeds []string
	for _, a := range managers {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			host = a
		}
		seeds = append(seeds, net.JoinHostPort(host, strconv.Itoa(d.cfg.GossipPort)))
	}
	return seeds
}

// onGossip hands what gossip says about another node to this host's
// manager. Only a failed node matters to the dispatcher (a node that left
// closes its session itself); a node alive again withdraws a verdict.
func (d *Daemon) onGossip(ev gossip.Event) {
	d.log.Info("gossip: node "+ev.Kind.String(), "node", ev.Node, "addr", ev.Addr.String())
	d.mu.Lock()
	m := d.mgr
	d.mu.Unlock()
	if m == nil {
		return
	}
	switch ev.Kind {
	case gossip.Failed:
		m.NodeUnreachable(ev.Node)
	case gossip.Alive:
		m.NodeReachable(ev.Node)
	}
}
