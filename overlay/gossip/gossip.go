package gossip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrInvalidConfig is returned by New for a Config it cannot use.
var ErrInvalidConfig = errors.New("invalid gossip config")

// Config configures a Member.
type Config struct {
	// Name is the member's name, unique in the cluster: the node id.
	Name string
	// BindAddr is the IP the member listens on (TCP and UDP); the zero
	// value or an unspecified address listens on all of them.
	BindAddr netip.Addr
	// AdvertiseAddr is the IP other members reach this one at; the zero
	// value means BindAddr, or, when that is unspecified, the first
	// private address of the host (memberlist's choice).
	AdvertiseAddr netip.Addr
	// Port is the gossip port, TCP and UDP; 0 picks a free one (tests).
	Port int
	// SecretKey, when set (16, 24 or 32 bytes), encrypts and authenticates
	// every gossip message (AES-GCM); members without it cannot join.
	SecretKey []byte
	// Logger receives the member's logs, memberlist's own at debug level;
	// nil discards them.
	Logger *slog.Logger
}

// EventKind is what happened to a member.
type EventKind int

const (
	// Alive: the member joined, or came back after it failed or left.
	Alive EventKind = iota + 1
	// Failed: the member stopped answering probes and did not refute the
	// suspicion in time.
	Failed
	// Left: the member said it was leaving (its Run ended).
	Left
)

func (k EventKind) String() string {
	switch k {
	case Alive:
		return "alive"
	case Failed:
		return "failed"
	case Left:
		return "left"
	default:
		return "EventKind(" + strconv.Itoa(int(k)) + ")"
	}
}

// Event is a change of another member's state, as this member sees it.
type Event struct {
	Kind EventKind
	// Node is the member's name: its node id.
	Node string
	// Addr is where the member gossips.
	Addr netip.AddrPort
}

// Node is a member seen alive.
type Node struct {
	Name string
	Addr netip.AddrPort
}

// Member is this host's gossip member. Create it with New, then Run it.
type Member struct {
	cfg  Config
	log  *slog.Logger
	ml   *memberlist.Memberlist
	self netip.AddrPort // the advertised address

	events chan Event // to the owner; closed when Run returns

	// qmu guards the state memberlist's callbacks maintain. (memberlist's
	// Members returns pointers it keeps writing to: the callbacks, called
	// under its lock, are the only race-free view of the members.)
	qmu     sync.Mutex                // guards following
	queue   []Event                   // not yet on events
	alive   map[string]netip.AddrPort // other members seen alive, by name
	failed  map[string]failedMember   // members seen failing, until back or forgotten
	leaving map[string]bool           // members that announced their leave
	qSignal chan struct{}

	isLeaving atomic.Bool   // this member announces its leave
	seedsSet  chan struct{} // the seeds changed: reconnect now

	// The endpoint table (endpoints.go). Lock order: see there.
	bcast   *memberlist.TransmitLimitedQueue // its broadcasts
	changes chan struct{}                    // TableChanges; holds one value
	tmu     sync.Mutex                       // guards following
	tab     *table
	clock   versionClock
	floor   uint64 // the highest version of this node's state heard from others

	mu    sync.Mutex // guards following
	seeds []string   // host:port, sorted, never this member's own
	ran   bool
}

// New creates the member and binds its port. It knows no other member
// until seeds are set and Run runs.
func New(cfg Config) (*Member, error) {
	if cfg.Name == "" {
		return nil, fmt.Errorf("%w: Name is required", ErrInvalidConfig)
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("%w: port %d", ErrInvalidConfig, cfg.Port)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	m := &Member{
		cfg:      cfg,
		log:      cfg.Logger,
		events:   make(chan Event),
		alive:    make(map[string]netip.AddrPort),
		failed:   make(map[string]failedMember),
		leaving:  make(map[string]bool),
		qSignal:  make(chan struct{}, 1),
		seedsSet: make(chan struct{}, 1),
		changes:  make(chan struct{}, 1),
		tab:      newTable(cfg.Name),
	}
	mc := memberlistConfig()
	m.bcast = &memberlist.TransmitLimitedQueue{NumNodes: m.broadcastNodes, RetransmitMult: mc.RetransmitMult}
	mc.Name = cfg.Name
	mc.BindAddr = "0.0.0.0"
	if cfg.BindAddr.IsValid() && !cfg.BindAddr.IsUnspecified() {
		mc.BindAddr = cfg.BindAddr.String()
	}
	mc.BindPort = cfg.Port
	mc.AdvertisePort = cfg.Port
	switch {
	case cfg.AdvertiseAddr.IsValid():
		mc.AdvertiseAddr = cfg.AdvertiseAddr.String()
	case cfg.BindAddr.IsValid() && !cfg.BindAddr.IsUnspecified():
		mc.AdvertiseAddr = cfg.BindAddr.String()
	}
	if len(cfg.SecretKey) > 0 {
		mc.SecretKey = cfg.SecretKey
	}
	mc.Logger = log.New(logWriter{log: m.log}, "", 0)
	mc.Delegate = delegate{m: m}
	mc.DelegateProtocolVersion = delegateVersion
	mc.DelegateProtocolMin = delegateVersionMin
	mc.DelegateProtocolMax = delegateVersion
	mc.Events = eventDelegate{m: m}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("start gossip member %s on %s:%d: %w", cfg.Name, mc.BindAddr, cfg.Port, err)
	}
	m.ml = ml
	local := ml.LocalNode()
	m.self = addrPort(local.Addr, local.Port)
	m.log.Info("gossip member started", "name", cfg.Name, "addr", m.self.String())
	return m, nil
}

// Addr is the address other members reach this one at.
func (m *Member) Addr() netip.AddrPort { return m.self }

// Events delivers other members' state changes, in the order this member
// saw them, until Run returns; then it is closed. It must be drained.
func (m *Member) Events() <-chan Event { return m.events }

// Members lists the members seen alive, this one included, by name.
func (m *Member) Members() []Node {
	nodes := []Node{{Name: m.cfg.Name, Addr: m.self}}
	m.qmu.Lock()
	for name, addr := range m.alive {
		nodes = append(nodes, Node{Name: name, Addr: addr})
	}
	m.qmu.Unlock()
	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return nodes
}

// SetSeeds replaces the addresses ("host:port", or "host" for the gossip
// port of this member) the member joins through; Run joins the ones not
// seen alive at once and every reconnectInterval. This member's own
// address is ignored.
func (m *Member) SetSeeds(addrs []string) {
	var seeds []string
	for _, a := range addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(a, strconv.Itoa(int(m.self.Port())))
		}
		if ap, err := netip.ParseAddrPort(a); err == nil && ap == m.self {
			continue
		}
		seeds = append(seeds, a)
	}
	slices.Sort(seeds)
	seeds = slices.Compact(seeds)
	m.mu.Lock()
	changed := !slices.Equal(seeds, m.seeds)
	m.seeds = seeds
	m.mu.Unlock()
	if changed {
		select {
		case m.seedsSet <- struct{}{}:
		default:
		}
	}
}

// Run gossips until ctx ends: it delivers events, keeps joining the
// seeds not seen alive, drops the endpoint states of nodes gone for
// goneGrace and fetches the states whose fragments went missing. It then
// leaves the cluster (within leaveTimeout), shuts the member down,
// releases the port and closes Events. A Member runs once.
func (m *Member) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.ran {
		m.mu.Unlock()
		return errors.New("gossip member already ran")
	}
	m.ran = true
	m.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(4)
	go func() {
		defer wg.Done()
		m.deliver(ctx)
	}()
	go func() {
		defer wg.Done()
		m.reconnectLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		m.expireLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		m.repairLoop(ctx)
	}()
	<-ctx.Done()
	wg.Wait()

	// Announce the leave in the metadata first: the others learn that
	// the member is gone from Leave's message, but only the metadata says
	// that it went on purpose (see flagLeaving).
	var errs []error
	m.isLeaving.Store(true)
	if err := m.ml.UpdateNode(leaveTimeout); err != nil {
		errs = append(errs, fmt.Errorf("announce the leave: %w", err))
	}
	if err := m.ml.Leave(leaveTimeout); err != nil {
		errs = append(errs, fmt.Errorf("leave the gossip cluster: %w", err))
	}
	if err := m.ml.Shutdown(); err != nil {
		errs = append(errs, fmt.Errorf("shut the gossip member down: %w", err))
	}
	close(m.events)
	m.log.Info("gossip member stopped", "name", m.cfg.Name)
	return errors.Join(errs...)
}

// deliver moves queued events to the Events channel until ctx ends.
func (m *Member) deliver(ctx context.Context) {
	for {
		m.qmu.Lock()
		batch := m.queue
		m.queue = nil
		m.qmu.Unlock()
		for _, ev := range batch {
			select {
			case m.events <- ev:
			case <-ctx.Done():
				return
			}
		}
		select {
		case <-m.qSignal:
		case <-ctx.Done():
			return
		}
	}
}

// enqueue records an event without blocking: memberlist calls it with
// its node lock held.
func (m *Member) enqueue(ev Event) {
	m.qmu.Lock()
	m.queue = append(m.queue, ev)
	m.qmu.Unlock()
	select {
	case m.qSignal <- struct{}{}:
	default:
	}
}

// failedMember is a member seen failing, which reconnect tries to join
// again.
type failedMember struct {
	addr  netip.AddrPort
	since time.Time
}

// reconnectLoop reconnects, now, whenever the seeds change and every
// reconnectInterval, until ctx ends.
func (m *Member) reconnectLoop(ctx context.Context) {
	t := time.NewTicker(reconnectInterval)
	defer t.Stop()
	for {
		m.reconnect(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.seedsSet:
		}
	}
}

// reconnect joins each seed not seen alive, and one member seen failing
// (at random, as Serf does), one at a time so that ctx is checked between
// two (each may take up to tcpTimeout). memberlist never probes a member
// it declared failed, so after a partition heals each side may go on
// seeing the other failed; one join across is enough to merge them (the
// state exchange makes each member refute what the other side says of
// it). Seeds alone do not always cross: a cut-off worker whose probes all
// fail slows down (Lifeguard's local health) and may go on seeing its
// manager alive while the manager sees it failed.
func (m *Member) reconnect(ctx context.Context) {
	alive := make(map[netip.AddrPort]bool)
	for _, n := range m.Members() {
		alive[n.Addr] = true
	}
	m.mu.Lock()
	seeds := slices.Clone(m.seeds)
	m.mu.Unlock()
	var targets []string
	for _, s := range seeds {
		// A seed named by host name is joined every time: comparing it
		// would take a lookup, and a join of a live member is one cheap
		// state exchange.
		if ap, err := netip.ParseAddrPort(s); err == nil && alive[ap] {
			continue
		}
		targets = append(targets, s)
	}
	if f, ok := m.pickFailed(time.Now()); ok && !slices.Contains(targets, f.String()) {
		targets = append(targets, f.String())
	}
	for _, a := range targets {
		if ctx.Err() != nil {
			return
		}
		if _, err := m.ml.Join([]string{a}); err != nil {
			m.log.Debug("gossip: reconnect", "addr", a, "err", err)
			continue
		}
		m.log.Info("gossip: joined through "+a, "members_alive", m.ml.NumMembers())
	}
}

// pickFailed returns the address of a random member seen failing, after
// forgetting those failed for longer than reconnectTimeout.
func (m *Member) pickFailed(now time.Time) (netip.AddrPort, bool) {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	var addrs []netip.AddrPort
	for name, f := range m.failed {
		if now.Sub(f.since) > reconnectTimeout {
			delete(m.failed, name)
			continue
		}
		addrs = append(addrs, f.addr)
	}
	if len(addrs) == 0 {
		return netip.AddrPort{}, false
	}
	return addrs[rand.IntN(len(addrs))], true
}

// addrPort converts memberlist's address to netip's (IPv4 unmapped).
func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}

// eventDelegate turns memberlist's callbacks into queued Events. The
// member's own join is not an event.
type eventDelegate struct{ m *Member }

func (e eventDelegate) NotifyJoin(n *memberlist.Node) {
	if n.Name == e.m.cfg.Name {
		return
	}
	e.m.qmu.Lock()
	delete(e.m.leaving, n.Name)
	delete(e.m.failed, n.Name)
	e.m.alive[n.Name] = addrPort(n.Addr, n.Port)
	e.m.qmu.Unlock()
	e.m.tableAlive(n.Name)
	e.notify(Alive, n)
}

// NotifyLeave reports a member gone: left if it announced its leave,
// failed otherwise.
func (e eventDelegate) NotifyLeave(n *memberlist.Node) {
	if n.Name == e.m.cfg.Name {
		return
	}
	e.m.qmu.Lock()
	left := e.m.leaving[n.Name]
	delete(e.m.leaving, n.Name)
	delete(e.m.alive, n.Name)
	if !left {
		e.m.failed[n.Name] = failedMember{addr: addrPort(n.Addr, n.Port), since: time.Now()}
	}
	e.m.qmu.Unlock()
	e.m.tableGone(n.Name)
	if left {
		e.notify(Left, n)
		return
	}
	e.notify(Failed, n)
}

// NotifyUpdate records a member's new address or announced leave; it is
// not an event.
func (e eventDelegate) NotifyUpdate(n *memberlist.Node) {
	if n.Name == e.m.cfg.Name {
		return
	}
	md, ok := decodeMeta(n.Meta)
	e.m.qmu.Lock()
	defer e.m.qmu.Unlock()
	if _, known := e.m.alive[n.Name]; known {
		e.m.alive[n.Name] = addrPort(n.Addr, n.Port)
	}
	if ok && md.flags&flagLeaving != 0 {
		e.m.leaving[n.Name] = true
	} else {
		delete(e.m.leaving, n.Name)
	}
}

func (e eventDelegate) notify(k EventKind, n *memberlist.Node) {
	e.m.enqueue(Event{Kind: k, Node: n.Name, Addr: addrPort(n.Addr, n.Port)})
}
