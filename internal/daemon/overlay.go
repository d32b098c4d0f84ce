package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/shoal-project/shoal/agent"
	"github.com/shoal-project/shoal/overlay/dns"
	"github.com/shoal-project/shoal/overlay/gossip"
	"github.com/shoal-project/shoal/overlay/vxlan"
	"github.com/shoal-project/shoal/overlay/wg"
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
	// The WireGuard interface is named after the host too: wireguard-go's
	// control socket lives in /var/run/wireguard, which simulated hosts on
	// one machine share.
	wgName := prefix + "wg"
	dev, wgErr := d.openWireGuard(wgName)
	if wgErr != nil {
		d.log.Error("no WireGuard interface: tasks on encrypted networks will fail on this host", "err", wgErr)
	}
	vx, err := vxlan.New(vxlan.Config{
		Prefix:      prefix,
		NetNSDir:    nsDir,
		VTEP:        vtep,
		WireGuardIf: wgName,
		Logger:      d.log.With("component", "vxlan"),
	})
	if err != nil {
		return nil, err
	}
	names := &dns.Table{}
	srv, err := dns.New(dns.Config{Resolver: names, Logger: d.log.With("component", "dns")})
	if err != nil {
		return nil, err
	}
	table := &gossipTable{changes: make(chan struct{}, 1), vtep: vtep, log: d.log.With("component", "gossip-table")}
	cfg := agent.OverlayConfig{
		VXLAN: vx, DNS: srv, Names: names, Table: table,
		NodeID: d.nodeID, VTEP: vtep, WireGuardErr: wgErr,
		Logger: d.log.With("component", "overlay"),
	}
	if dev != nil {
		d.mu.Lock()
		d.wireGuard = dev
		d.mu.Unlock()
		cfg.WireGuard = dev
		table.wgKey = dev.PublicKey()
		table.wgEndpoint = netip.AddrPortFrom(vtep, uint16(dev.ListenPort()))
	}
	d.endpoints = table
	if g := d.currentGossip(); g != nil {
		d.endpoints.attach(d.runCtx, g)
	}
	return agent.NewOverlay(cfg), nil
}

// closeWireGuard closes a wireguard-go interface when the daemon stops: it
// dies with the process anyway, and closing removes its control socket. A
// kernel interface stays, with its peers, so encrypted traffic between
// containers keeps flowing while the daemon restarts.
func (d *Daemon) closeWireGuard() {
	d.mu.Lock()
	dev := d.wireGuard
	d.mu.Unlock()
	if dev == nil || dev.Kind() != wg.KindUserspace {
		return
	}
	if err := dev.Close(); err != nil {
		d.log.Warn("close the WireGuard interface", "err", err)
	}
}

// wireGuardKeyFile holds this host's WireGuard private key (base64), kept
// across restarts so peers keep accepting the host without waiting for
// gossip to spread a new public key.
const wireGuardKeyFile = "wireguard.key"

// openWireGuard opens the host's WireGuard interface (the kernel module
// when there is one, else wireguard-go) with the saved key, or a new one
// it saves first.
func (d *Daemon) openWireGuard(name string) (*wg.Device, error) {
	path := filepath.Join(d.cfg.DataDir, wireGuardKeyFile)
	var key wgtypes.Key
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if key, err = wgtypes.ParseKey(strings.TrimSpace(string(b))); err != nil {
			return nil, fmt.Errorf("read WireGuard key %s: %w (delete the file to make a new one)", path, err)
		}
	case errors.Is(err, os.ErrNotExist):
		if key, err = wg.GenerateKey(); err != nil {
			return nil, err
		}
		if err := writeFileSync(path, []byte(key.String()+"\n")); err != nil {
			return nil, fmt.Errorf("save WireGuard key: %w", err)
		}
	default:
		return nil, fmt.Errorf("read WireGuard key: %w", err)
	}
	return wg.Open(d.runCtx, wg.Config{
		Name: name, PrivateKey: key, Logger: d.log.With("component", "wireguard"),
	})
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
	vtep       netip.Addr
	wgKey      wgtypes.Key // zero when the host has no WireGuard interface
	wgEndpoint netip.AddrPort
	changes    chan struct{}
	log        *slog.Logger

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
	st := gossip.NodeState{VTEP: g.vtep, WireGuardKey: g.wgKey, WireGuardEndpoint: g.wgEndpoint}
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
				WireGuardKey: st.WireGuardKey, WireGuardEndpoint: st.WireGuardEndpoint,
			})
		}
	}
	return out
}

// Changes implements agent.EndpointTable.
func (g *gossipTable) Changes() <-chan struct{} { return g.changes }
