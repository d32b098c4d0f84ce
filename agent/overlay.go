package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/overlay/dns"
	"github.com/shoal-project/shoal/overlay/vip"
	"github.com/shoal-project/shoal/overlay/vxlan"
	"github.com/shoal-project/shoal/overlay/wg"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// OverlayEndpoint is one container's attachment to an overlay network as
// the whole cluster sees it, through the endpoint table.
type OverlayEndpoint struct {
	NodeID      string
	TaskID      string
	ServiceID   string
	ServiceName string
	NetworkID   string
	Addr        netip.Addr
	MAC         net.HardwareAddr
	// VTEP is the underlay address of the endpoint's host.
	VTEP netip.Addr
	// Ready is set while the task may take traffic (it runs).
	Ready bool
	// WireGuardKey and WireGuardEndpoint are those of the endpoint's host:
	// encrypted networks reach the endpoint through them.
	WireGuardKey      [32]byte
	WireGuardEndpoint netip.AddrPort
}

// WireGuard is the host's WireGuard interface (overlay/wg.Device):
// encrypted networks are routed over it, and each sync gives it the
// peers they need.
type WireGuard interface {
	// Name is the interface's name in the host's network namespace.
	Name() string
	// SetPeers makes the interface's peers exactly peers, touching only
	// what changed.
	SetPeers(ctx context.Context, peers []wg.Peer) error
}

// EndpointTable is the seam to the gossip layer: this host announces its
// endpoints, and learns every host's. The data plane is programmed from it
// alone, so traffic between existing containers keeps flowing while the
// managers are unreachable.
type EndpointTable interface {
	// Announce replaces this host's endpoints in the table.
	Announce(eps []OverlayEndpoint)
	// Endpoints returns every host's endpoints, this one's included.
	Endpoints() []OverlayEndpoint
	// Changes signals (coalesced) whenever Endpoints may have changed.
	Changes() <-chan struct{}
}

// Overlay attaches containers to overlay networks and keeps each host's
// overlay data plane in line with the endpoint table: the VXLAN neighbour
// and forwarding entries of remote endpoints, the names the embedded DNS
// answers, and each container's VIP load balancer. Create it with
// NewOverlay; run its sync loop with Run.
type Overlay struct {
	vx     *vxlan.Driver
	dns    *dns.Server
	names  *dns.Table
	table  EndpointTable
	nodeID string
	vtep   netip.Addr
	log    *slog.Logger
	// wg carries the encrypted networks; nil when this host has no
	// WireGuard interface, and wgErr says why.
	wg    WireGuard
	wgErr error

	kick chan struct{}

	// syncMu is held by each sync, and by DetachNamespace so that no sync
	// writes a VIP table into a namespace after it was unplugged.
	syncMu sync.Mutex

	mu       sync.Mutex                  // guards following
	networks map[string]*shoalpb.Network // every network seen, by id
	assigned map[string]bool             // those of the latest assignments
	services []*shoalpb.Service
	local    map[string]*localAttachment // by task id
	applied  map[string]string           // task id -> the VIP table last written, to skip rewrites
	// reconciled is set once the first assignments removed the leftovers
	// of networks no longer in use.
	reconciled bool
	// lastPeers and lastVNIs are what the last sync gave the WireGuard
	// interface and the cleartext-VXLAN drop table, to skip rewrites.
	lastPeers, lastVNIs string
}

type localAttachment struct {
	task  *shoalpb.Task
	netns string
	ready bool
}

// OverlayConfig configures an Overlay.
type OverlayConfig struct {
	VXLAN  *vxlan.Driver
	DNS    *dns.Server
	Names  *dns.Table // the table DNS answers from
	Table  EndpointTable
	NodeID string
	// VTEP is this host's underlay address, announced with its endpoints.
	VTEP netip.Addr
	// WireGuard is the host's WireGuard interface, nil when it has none:
	// then WireGuardErr says why, and tasks on encrypted networks fail
	// with it rather than send cleartext.
	WireGuard    WireGuard
	WireGuardErr error
	Logger       *slog.Logger
}

// NewOverlay returns an Overlay over cfg's parts.
func NewOverlay(cfg OverlayConfig) *Overlay {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Overlay{
		vx: cfg.VXLAN, dns: cfg.DNS, names: cfg.Names, table: cfg.Table,
		nodeID: cfg.NodeID, vtep: cfg.VTEP, log: log,
		wg: cfg.WireGuard, wgErr: cfg.WireGuardErr,
		kick:     make(chan struct{}, 1),
		networks: make(map[string]*shoalpb.Network),
		local:    make(map[string]*localAttachment),
		applied:  make(map[string]string),
	}
}

// SetAssignments records the networks and services the managers sent
// with the host's tasks. The first set after the daemon started also
// removes what an earlier daemon left of networks no task here uses any
// more (sandboxes, links), keeping the others and their traffic as they
// are.
func (o *Overlay) SetAssignments(ctx context.Context, networks []*shoalpb.Network, services []*shoalpb.Service) {
	o.mu.Lock()
	o.assigned = make(map[string]bool, len(networks))
	for _, n := range networks {
		o.networks[n.GetId()] = n
		o.assigned[n.GetId()] = true
	}
	o.services = services
	first := !o.reconciled
	o.reconciled = true
	o.mu.Unlock()
	if first {
		var desired []vxlan.Network
		for _, n := range networks {
			if vn, err := vxlanNetwork(n); err == nil {
				desired = append(desired, vn)
			}
		}
		if err := o.vx.Reconcile(ctx, desired); err != nil && ctx.Err() == nil {
			o.log.Warn("reconcile overlay networks", "err", err)
		}
	}
	o.poke()
}

func (o *Overlay) poke() {
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// Attach connects the container of t, whose network namespace is at netns,
// to each of its overlay networks (eth1, eth2, ... in order) and starts its
// DNS resolver. It is idempotent, so a restarted daemon attaches an
// adopted container again.
func (o *Overlay) Attach(ctx context.Context, t *shoalpb.Task, netns string) error {
	var scope dns.Scope
	for i, a := range t.GetNetworks() {
		o.mu.Lock()
		n := o.networks[a.GetNetworkId()]
		o.mu.Unlock()
		if n == nil {
			return fmt.Errorf("network %s: not known to this host yet", a.GetNetworkId())
		}
		if n.GetSpec().GetEncrypted() && o.wg == nil {
			// Never cleartext for a network asked to be encrypted.
			return fmt.Errorf("network %s is encrypted and this host has no WireGuard interface: %v", n.GetSpec().GetName(), o.wgErr)
		}
		vn, err := vxlanNetwork(n)
		if err != nil {
			return err
		}
		if err := o.vx.EnsureNetwork(ctx, vn); err != nil {
			return fmt.Errorf("set up network %s: %w", n.GetSpec().GetName(), err)
		}
		ep, err := endpointOf(t.GetId(), a)
		if err != nil {
			return err
		}
		if err := o.vx.Attach(ctx, n.GetId(), ep, netns, interfaceName(t, i)); err != nil {
			return fmt.Errorf("attach to network %s: %w", n.GetSpec().GetName(), err)
		}
		scope.Networks = append(scope.Networks, n.GetId())
	}
	if o.internalOnly(t) && t.GetAttachment() == nil {
		// No way out of the cluster: the node-local bridge stays for the
		// host's own traffic (published ports), without a default route.
		if err := dropDefaultRoute(netns); err != nil {
			return fmt.Errorf("internal network: %w", err)
		}
	}
	if err := o.dns.Add(ctx, t.GetId(), netns, scope); err != nil && !errors.Is(err, dns.ErrExists) {
		return fmt.Errorf("start the container's DNS resolver: %w", err)
	}
	o.mu.Lock()
	if o.local[t.GetId()] == nil {
		o.local[t.GetId()] = &localAttachment{task: t, netns: netns}
	}
	o.mu.Unlock()
	o.poke()
	return nil
}

// interfaceName is the name of the i-th overlay interface of t's
// namespace: the attachment's own when set, else eth1, eth2, ... (eth0 is
// the node-local bridge's).
func interfaceName(t *shoalpb.Task, i int) string {
	if names := t.GetAttachment().GetInterfaces(); i < len(names) && names[i] != "" {
		return names[i]
	}
	return fmt.Sprintf("eth%d", i+1)
}

// SetReady marks the task's endpoints ready (it runs) or not (it stops):
// other hosts add or withdraw it as a backend on their next sync.
func (o *Overlay) SetReady(taskID string, ready bool) {
	o.mu.Lock()
	la := o.local[taskID]
	changed := la != nil && la.ready != ready
	if changed {
		la.ready = ready
	}
	o.mu.Unlock()
	if changed {
		o.poke()
	}
}

// Detach removes the task's container from its overlays and stops its
// DNS resolver; a network no local container uses any more is taken down.
func (o *Overlay) Detach(ctx context.Context, taskID string) error {
	o.mu.Lock()
	la := o.local[taskID]
	delete(o.local, taskID)
	delete(o.applied, taskID)
	o.mu.Unlock()
	o.dns.Remove(taskID)
	if la == nil {
		return nil
	}
	var errs []error
	for _, a := range la.task.GetNetworks() {
		if err := o.vx.Detach(ctx, a.GetNetworkId(), taskID); err != nil {
			errs = append(errs, fmt.Errorf("detach from network %s: %w", a.GetNetworkId(), err))
		}
	}
	for _, id := range o.unusedNetworks(la.task) {
		if err := o.vx.RemoveNetwork(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("remove network %s: %w", id, err))
		}
	}
	o.poke()
	return errors.Join(errs...)
}

// DetachNamespace unplugs a network attachment (shoal network connect)
// from a namespace that outlives it: its overlay interfaces, its DNS
// resolver and the VIP table the sync loop wrote there. networkIDs are
// the networks it joined, for when this daemon did not attach it itself
// (it was disconnected while the daemon was down).
func (o *Overlay) DetachNamespace(ctx context.Context, taskID, netns string, networkIDs []string) error {
	o.syncMu.Lock()
	defer o.syncMu.Unlock()
	o.mu.Lock()
	if o.local[taskID] == nil {
		t := &shoalpb.Task{Id: taskID}
		for _, id := range networkIDs {
			t.Networks = append(t.Networks, &shoalpb.NetworkAttachment{NetworkId: id})
		}
		o.local[taskID] = &localAttachment{task: t, netns: netns}
	}
	o.mu.Unlock()
	err := o.Detach(ctx, taskID)
	if _, serr := os.Stat(netns); serr == nil {
		if verr := vip.Remove(ctx, netns); verr != nil {
			err = errors.Join(err, fmt.Errorf("remove the VIP table from %s: %w", netns, verr))
		}
	}
	return err
}

// unusedNetworks returns the networks of t that no local container uses.
func (o *Overlay) unusedNetworks(t *shoalpb.Task) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	used := make(map[string]bool)
	for _, la := range o.local {
		for _, a := range la.task.GetNetworks() {
			used[a.GetNetworkId()] = true
		}
	}
	var out []string
	for _, a := range t.GetNetworks() {
		if !used[a.GetNetworkId()] {
			out = append(out, a.GetNetworkId())
		}
	}
	return out
}

// Run keeps the data plane in line with the endpoint table until ctx ends.
func (o *Overlay) Run(ctx context.Context) {
	for {
		o.sync(ctx)
		select {
		case <-ctx.Done():
			return
		case <-o.kick:
		case <-o.table.Changes():
		}
	}
}

// sync announces this host's endpoints and programs every local network's
// remote endpoints, the DNS names and the containers' VIP tables.
func (o *Overlay) sync(ctx context.Context) {
	o.syncMu.Lock()
	defer o.syncMu.Unlock()
	o.mu.Lock()
	var mine []OverlayEndpoint
	localNets := make(map[string]bool)
	for _, la := range o.local {
		for _, a := range la.task.GetNetworks() {
			localNets[a.GetNetworkId()] = true
			ep, err := endpointOf(la.task.GetId(), a)
			if err != nil {
				continue
			}
			mine = append(mine, OverlayEndpoint{
				NodeID: o.nodeID, TaskID: la.task.GetId(), ServiceID: la.task.GetServiceId(),
				ServiceName: la.task.GetServiceName(), NetworkID: a.GetNetworkId(),
				Addr: ep.Addr.Addr(), MAC: ep.MAC, VTEP: o.vtep, Ready: la.ready,
			})
		}
	}
	services := o.services
	encrypted := make(map[string]bool)
	var encryptedVNIs []uint32
	for id, n := range o.networks {
		if n.GetSpec().GetEncrypted() {
			encrypted[id] = true
			if o.assigned[id] || localNets[id] {
				// A removed network's VNI may go to a plain one.
				encryptedVNIs = append(encryptedVNIs, n.GetVni())
			}
		}
	}
	locals := make(map[string]localAttachment, len(o.local))
	for id, la := range o.local {
		locals[id] = *la
	}
	o.mu.Unlock()
	sort.Slice(mine, func(i, j int) bool { return mine[i].TaskID+mine[i].NetworkID < mine[j].TaskID+mine[j].NetworkID })
	o.table.Announce(mine)

	all := o.table.Endpoints()
	o.setEncryptedVNIs(ctx, encryptedVNIs)
	// Remote endpoints of each local network: over VXLAN to their host's
	// VTEP, or for an encrypted network routed to their host's WireGuard
	// peer, whose allowed addresses they are.
	remotes, peers := remotesOf(all, o.nodeID, localNets, encrypted)
	for netID := range localNets {
		if encrypted[netID] && o.wg == nil {
			continue
		}
		if err := o.vx.SetRemotes(ctx, netID, remotes[netID]); err != nil && ctx.Err() == nil {
			o.log.Warn("program remote endpoints", "network", netID, "err", err)
		}
	}
	o.setPeers(ctx, peers)
	// Ready tasks per service and network, for DNS and the VIPs.
	type key struct{ service, network string }
	ready := make(map[key][]netip.Addr)
	for _, e := range all {
		if e.Ready {
			k := key{e.ServiceID, e.NetworkID}
			ready[k] = append(ready[k], e.Addr)
		}
	}
	byNet := make(map[string]map[string]dns.Record)
	vips := make(map[string][]vip.Service) // network -> VIPs with backends
	for _, s := range services {
		vipOn := make(map[string]netip.Addr)
		for _, v := range s.GetEndpoint().GetVirtualIps() {
			if p, err := netip.ParsePrefix(v.GetAddr()); err == nil {
				vipOn[v.GetNetworkId()] = p.Addr()
			}
		}
		dnsrr := s.GetSpec().GetEndpoint().GetMode() == shoalpb.EndpointSpec_MODE_DNSRR
		for _, a := range s.GetSpec().GetNetworks() {
			netID := a.GetTarget()
			if !localNets[netID] {
				continue
			}
			backends := ready[key{s.GetId(), netID}]
			rec := dns.Record{VIP: vipOn[netID], DNSRR: dnsrr, Tasks: backends}
			if byNet[netID] == nil {
				byNet[netID] = make(map[string]dns.Record)
			}
			byNet[netID][s.GetSpec().GetName()] = rec
			for _, alias := range a.GetAliases() {
				byNet[netID][alias] = rec
			}
			if v := vipOn[netID]; v.IsValid() && !dnsrr {
				vips[netID] = append(vips[netID], vip.Service{VIP: v, Backends: backends})
			}
		}
	}
	addAttachmentNames(byNet, all, localNets)
	for netID := range localNets {
		o.names.SetNetwork(netID, byNet[netID])
	}
	for _, stale := range o.names.Networks() {
		if !localNets[stale] {
			o.names.SetNetwork(stale, nil)
		}
	}
	// Each local container balances the VIPs of its networks.
	for id, la := range locals {
		var svcs []vip.Service
		for _, a := range la.task.GetNetworks() {
			svcs = append(svcs, vips[a.GetNetworkId()]...)
		}
		sig := fmt.Sprint(svcs)
		o.mu.Lock()
		same := o.applied[id] == sig
		o.mu.Unlock()
		if same {
			continue
		}
		if err := vip.Apply(ctx, la.netns, svcs); err != nil {
			if ctx.Err() == nil {
				o.log.Warn("program virtual IPs", "task", id, "err", err)
			}
			continue
		}
		o.mu.Lock()
		if o.local[id] != nil {
			o.applied[id] = sig
		}
		o.mu.Unlock()
	}
}

// addAttachmentNames gives each ready network attachment (shoal network
// connect: an endpoint of no service) a name on its networks, as Swarm's
// standalone containers have: its attachment name answers its address,
// unless a service or an earlier attachment has that name there.
func addAttachmentNames(byNet map[string]map[string]dns.Record, all []OverlayEndpoint, localNets map[string]bool) {
	for _, e := range all {
		if e.ServiceID != "" || e.ServiceName == "" || !e.Ready || !localNets[e.NetworkID] {
			continue
		}
		if byNet[e.NetworkID] == nil {
			byNet[e.NetworkID] = make(map[string]dns.Record)
		}
		if _, taken := byNet[e.NetworkID][e.ServiceName]; taken {
			continue
		}
		byNet[e.NetworkID][e.ServiceName] = dns.Record{DNSRR: true, Tasks: []netip.Addr{e.Addr}}
	}
}

// remotesOf returns, for each of the local networks, the endpoints other
// hosts have on it, and the WireGuard peers the encrypted ones need: one
// per host with endpoints on them, allowed exactly those endpoints'
// addresses (cryptokey routing: a host can speak only for its own
// containers), sorted by key. A plain network reaches a remote through
// its host's VTEP; an encrypted one only through its host's WireGuard,
// and a host without one is left out (never cleartext).
func remotesOf(all []OverlayEndpoint, self string, local, encrypted map[string]bool) (map[string][]vxlan.Remote, []wg.Peer) {
	remotes := make(map[string][]vxlan.Remote)
	byKey := make(map[[32]byte]*wg.Peer)
	for _, e := range all {
		if !local[e.NetworkID] || e.NodeID == self {
			continue
		}
		r := vxlan.Remote{Addr: e.Addr, MAC: e.MAC, VTEP: e.VTEP}
		if !encrypted[e.NetworkID] {
			if e.VTEP.IsValid() {
				remotes[e.NetworkID] = append(remotes[e.NetworkID], r)
			}
			continue
		}
		if e.WireGuardKey == ([32]byte{}) || !e.WireGuardEndpoint.IsValid() {
			continue
		}
		remotes[e.NetworkID] = append(remotes[e.NetworkID], r)
		p := byKey[e.WireGuardKey]
		if p == nil {
			p = &wg.Peer{PublicKey: e.WireGuardKey, Endpoint: e.WireGuardEndpoint}
			byKey[e.WireGuardKey] = p
		}
		p.AllowedIPs = append(p.AllowedIPs, netip.PrefixFrom(e.Addr, e.Addr.BitLen()))
	}
	peers := make([]wg.Peer, 0, len(byKey))
	for _, p := range byKey {
		slices.SortFunc(p.AllowedIPs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		p.AllowedIPs = slices.Compact(p.AllowedIPs)
		peers = append(peers, *p)
	}
	slices.SortFunc(peers, func(a, b wg.Peer) int { return bytes.Compare(a.PublicKey[:], b.PublicKey[:]) })
	return remotes, peers
}

// setPeers gives the WireGuard interface its peers (remotesOf); an
// unchanged set is not rewritten.
func (o *Overlay) setPeers(ctx context.Context, peers []wg.Peer) {
	if o.wg == nil {
		return
	}
	sig := fmt.Sprint(peers)
	o.mu.Lock()
	same := o.lastPeers == sig
	o.mu.Unlock()
	if same {
		return
	}
	if err := o.wg.SetPeers(ctx, peers); err != nil {
		if ctx.Err() == nil {
			o.log.Warn("set WireGuard peers", "peers", len(peers), "err", err)
		}
		return
	}
	o.mu.Lock()
	o.lastPeers = sig
	o.mu.Unlock()
}

// setEncryptedVNIs has the host drop every VXLAN packet for an encrypted
// network's VNI: their traffic is routed over WireGuard, never VXLAN, so
// such a packet can only be forged.
func (o *Overlay) setEncryptedVNIs(ctx context.Context, vnis []uint32) {
	slices.Sort(vnis)
	sig := fmt.Sprint(vnis)
	o.mu.Lock()
	same := o.lastVNIs == sig
	o.mu.Unlock()
	if same {
		return
	}
	if err := o.vx.SetEncryptedVNIs(ctx, vnis, ""); err != nil {
		if ctx.Err() == nil {
			o.log.Warn("drop cleartext VXLAN for encrypted networks", "err", err)
		}
		return
	}
	o.mu.Lock()
	o.lastVNIs = sig
	o.mu.Unlock()
}

// internalOnly reports whether every network of t is internal.
func (o *Overlay) internalOnly(t *shoalpb.Task) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, a := range t.GetNetworks() {
		if !o.networks[a.GetNetworkId()].GetSpec().GetInternal() {
			return false
		}
	}
	return len(t.GetNetworks()) > 0
}

// dropDefaultRoute removes the IPv4 default route in the namespace at
// nsPath, if there is one.
func dropDefaultRoute(nsPath string) error {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", nsPath, err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes in %s: %w", nsPath, err)
	}
	for _, r := range routes {
		if r.Dst == nil || (r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) {
			if err := h.RouteDel(&r); err != nil {
				return fmt.Errorf("remove the default route in %s: %w", nsPath, err)
			}
		}
	}
	return nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// vxlanNetwork converts a network as the managers allocated it.
func vxlanNetwork(n *shoalpb.Network) (vxlan.Network, error) {
	subnet, err := netip.ParsePrefix(n.GetSubnet())
	if err != nil {
		return vxlan.Network{}, fmt.Errorf("network %s: subnet %q: %w", n.GetSpec().GetName(), n.GetSubnet(), err)
	}
	gw, err := netip.ParseAddr(n.GetGateway())
	if err != nil {
		return vxlan.Network{}, fmt.Errorf("network %s: gateway %q: %w", n.GetSpec().GetName(), n.GetGateway(), err)
	}
	return vxlan.Network{
		ID: n.GetId(), VNI: n.GetVni(), Subnet: subnet, Gateway: gw,
		Internal: n.GetSpec().GetInternal(), Encrypted: n.GetSpec().GetEncrypted(),
	}, nil
}

// endpointOf converts a task's attachment.
func endpointOf(taskID string, a *shoalpb.NetworkAttachment) (vxlan.Endpoint, error) {
	if len(a.GetAddresses()) == 0 {
		return vxlan.Endpoint{}, fmt.Errorf("network %s: the task has no address", a.GetNetworkId())
	}
	addr, err := netip.ParsePrefix(a.GetAddresses()[0])
	if err != nil {
		return vxlan.Endpoint{}, fmt.Errorf("network %s: address %q: %w", a.GetNetworkId(), a.GetAddresses()[0], err)
	}
	mac, err := net.ParseMAC(a.GetMac())
	if err != nil {
		return vxlan.Endpoint{}, fmt.Errorf("network %s: MAC %q: %w", a.GetNetworkId(), a.GetMac(), err)
	}
	return vxlan.Endpoint{ID: taskID, Addr: addr, MAC: mac}, nil
}
