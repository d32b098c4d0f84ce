// Package manager wires one Shoal manager: the Raft node holding the
// cluster's state, the store it replicates, the control API and the
// dispatcher served on every manager, and the components that run on the
// leader only (allocator, orchestrator, placement, the dispatcher's
// liveness loop, which takes heartbeats and the daemon's gossip verdicts).
//
// Lifecycle: Init once, on the first manager of a new cluster; then New and
// Run on every start of the daemon, with Register on its gRPC server.
package manager

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-project/shoal/manager/allocator"
	"github.com/shoal-project/shoal/manager/controlapi"
	"github.com/shoal-project/shoal/manager/dispatcher"
	"github.com/shoal-project/shoal/manager/ipam"
	"github.com/shoal-project/shoal/manager/nodeca"
	"github.com/shoal-project/shoal/manager/orchestrator"
	"github.com/shoal-project/shoal/manager/placement"
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/shoal-project/shoal/raft"
)

const (
	// DefaultClusterName names a cluster initialised without a name.
	DefaultClusterName = "default"
	// DefaultTaskHistoryLimit is how many finished tasks are kept per slot
	// in a new cluster: Swarm's default, enough to see why a task
	// restarted without keeping every failure forever.
	DefaultTaskHistoryLimit = 5
	// componentRestartDelay is how long the leader waits before running a
	// leader component again after it failed: long enough not to spin on a
	// persistent failure, short against the election timeout.
	componentRestartDelay = time.Second
	// selfWriteTimeout bounds the leader's bookkeeping write about itself
	// when it gains leadership.
	selfWriteTimeout = 10 * time.Second
)

// ErrAlreadyInitialized is returned by Init when the data directory already
// holds an initialised cluster.
var ErrAlreadyInitialized = errors.New("cluster already initialised")

// Config configures one manager. Zero durations and counts take the raft
// package's defaults.
type Config struct {
	// DataDir is the daemon's data directory; Raft state lives under
	// DataDir/raft.
	DataDir string
	// NodeID is this host's node id (required).
	NodeID string
	// RaftID is this member's Raft id; 0 derives it from NodeID.
	RaftID           uint64
	TickInterval     time.Duration
	ElectionTicks    int
	SnapshotInterval uint64
	// AdvertiseAddr is the host:port other hosts reach this manager at; it
	// is what join tokens point joining hosts to.
	AdvertiseAddr string
	// DialPeer connects to another manager over mutual TLS; nil runs Raft
	// without a transport (a lone manager, tests).
	DialPeer func(ctx context.Context, addr string) (*grpc.ClientConn, error)
	// Join starts a manager that joined an existing cluster: its Raft log is
	// empty until the leader sends it.
	Join bool
	// HeartbeatPeriod is the dispatcher's agent heartbeat period; 0 means
	// dispatcher.DefaultHeartbeatPeriod.
	HeartbeatPeriod time.Duration
	// Logger receives the manager's logs; nil discards them.
	Logger *slog.Logger
}

// withDefaults returns cfg with the derived and default values filled in.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.NodeID == "" {
		return cfg, errors.New("manager config: NodeID is required")
	}
	if cfg.DataDir == "" {
		return cfg, errors.New("manager config: DataDir is required")
	}
	if cfg.RaftID == 0 {
		cfg.RaftID = RaftIDFor(cfg.NodeID)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return cfg, nil
}

func (cfg Config) raftConfig() raft.Config {
	return raft.Config{
		ID:               cfg.RaftID,
		DataDir:          filepath.Join(cfg.DataDir, "raft"),
		TickInterval:     cfg.TickInterval,
		ElectionTicks:    cfg.ElectionTicks,
		SnapshotInterval: cfg.SnapshotInterval,
		Addr:             cfg.AdvertiseAddr,
		Join:             cfg.Join,
		Logger:           cfg.Logger.With("component", "raft"),
	}
}

// RaftIDFor derives a member's Raft id from its node id (FNV-1a, never 0),
// so that a node keeps the same Raft id across restarts without storing it.
func RaftIDFor(nodeID string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(nodeID)) // hash writes never fail
	if id := h.Sum64(); id != 0 {
		return id
	}
	return 1
}

// HasState reports whether dataDir holds a manager's Raft state, i.e.
// whether the daemon should start a manager.
func HasState(dataDir string) (bool, error) {
	return raft.HasState(filepath.Join(dataDir, "raft"))
}

// Init bootstraps a brand-new one-manager cluster in cfg.DataDir: it creates
// the Raft state, runs the node until it is leader, and writes the Cluster
// object (a new id, spec with its name defaulting to DefaultClusterName and
// its address pools to ipam's defaults) and this node's Node
// object (role manager, availability active). It returns once both are
// durable and the node has stopped; then call New and Run. Init fails with
// ErrAlreadyInitialized when the directory already holds a cluster; an Init
// interrupted after the Raft bootstrap can be run again.
func Init(ctx context.Context, cfg Config, spec *shoalpb.ClusterSpec) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	spec = proto.Clone(spec).(*shoalpb.ClusterSpec)
	if spec == nil {
		spec = &shoalpb.ClusterSpec{}
	}
	if spec.Name == "" {
		spec.Name = DefaultClusterName
	}
	if spec.TaskHistoryLimit == 0 {
		spec.TaskHistoryLimit = DefaultTaskHistoryLimit
	}
	if len(spec.DefaultAddressPools) == 0 {
		spec.DefaultAddressPools = []string{ipam.DefaultPool}
	}
	if spec.SubnetSize == 0 {
		spec.SubnetSize = ipam.DefaultSubnetSize
	}
	if err := ipam.ValidatePools(spec.DefaultAddressPools, int(spec.SubnetSize)); err != nil {
		return fmt.Errorf("init cluster: %w", err)
	}
	err = raft.Bootstrap(cfg.raftConfig())
	if err != nil && !errors.Is(err, raft.ErrExists) {
		return fmt.Errorf("init cluster in %s: %w", cfg.DataDir, err)
	}
	m, err := New(cfg)
	if err != nil {
		return fmt.Errorf("init cluster in %s: %w", cfg.DataDir, err)
	}
	// Run only the Raft node: the components have nothing to do before
	// the cluster object exists. It runs even when Init is refused, as
	// stopping Run is what releases the node's hold on the directory.
	runCtx, cancel := context.WithCancel(ctx)
	leadership, stopWatch := m.node.Leadership()
	defer stopWatch()
	done := make(chan error, 1)
	go func() { done <- m.node.Run(runCtx) }()
	err = m.initObjects(ctx, leadership, done, spec)
	cancel()
	if runErr := <-done; runErr != nil && err == nil {
		err = fmt.Errorf("raft: %w", runErr)
	}
	if err != nil {
		return fmt.Errorf("init cluster in %s: %w", cfg.DataDir, err)
	}
	return nil
}

// initObjects waits for leadership and writes the cluster and node objects.
func (m *Manager) initObjects(ctx context.Context, leadership <-chan bool, done <-chan error, spec *shoalpb.ClusterSpec) error {
	// New replayed the state: a cluster there means Init already ran.
	var existing *shoalpb.Cluster
	m.store.View(func(tx store.ReadTx) { existing = tx.GetCluster() })
	if existing != nil {
		return fmt.Errorf("%w (cluster %s)", ErrAlreadyInitialized, existing.GetId())
	}
	for !m.node.IsLeader() {
		select {
		case <-leadership:
		case err := <-done:
			return fmt.Errorf("raft stopped before electing this node: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("wait for leadership: %w", ctx.Err())
		}
	}
	hostname, _ := os.Hostname() // a description only; the agent reports its own
	clusterID := store.NewID()
	sec, err := nodeca.NewSecurity(clusterID, time.Now())
	if err != nil {
		return err
	}
	err = m.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		b.CreateCluster(&shoalpb.Cluster{
			Id:       clusterID,
			Spec:     spec,
			Security: sec,
		})
		if tx.GetNode(m.cfg.NodeID) == nil {
			b.CreateNode(&shoalpb.Node{
				Id: m.cfg.NodeID,
				Spec: &shoalpb.NodeSpec{
					DesiredRole:  shoalpb.NodeRole_NODE_ROLE_MANAGER,
					Availability: shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
				},
				Description:   &shoalpb.NodeDescription{Hostname: hostname},
				Role:          shoalpb.NodeRole_NODE_ROLE_MANAGER,
				ManagerStatus: &shoalpb.ManagerStatus{RaftId: m.cfg.RaftID, Addr: m.cfg.AdvertiseAddr, Leader: true, Reachability: "reachable"},
			})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create cluster and node objects: %w", err)
	}
	m.logger.Info("cluster initialised", "name", spec.GetName(), "address_pools", spec.GetDefaultAddressPools(), "node", m.cfg.NodeID)
	return nil
}

// Manager is one manager: a Raft node, its store, and the services and
// components over them.
type Manager struct {
	cfg    Config
	logger *slog.Logger
	node   *raft.Node
	store  *store.Store

	control    *controlapi.Server
	dispatcher *dispatcher.Dispatcher
	allocator  *allocator.Allocator
	orch       *orchestrator.Orchestrator
	placer     *placement.Placer
	nodeCA     *nodeca.Server
	transport  *raft.GRPCTransport // nil without DialPeer
}

// New opens the manager's Raft state in cfg.DataDir (created by Init, or
// later by joining) with the store as the state machine: the store holds the
// replicated state as soon as New returns. Nothing runs until Run.
func New(cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := store.New()
	rcfg := cfg.raftConfig()
	var transport *raft.GRPCTransport
	if cfg.DialPeer != nil {
		transport = raft.NewGRPCTransport(raft.TransportConfig{
			Self: cfg.RaftID, Addr: cfg.AdvertiseAddr, Dial: cfg.DialPeer,
			Logger: cfg.Logger.With("component", "raft-transport"),
		})
		rcfg.Transport = transport
	}
	node, err := raft.Open(rcfg, s)
	if err != nil {
		return nil, fmt.Errorf("open manager state in %s: %w", cfg.DataDir, err)
	}
	s.SetProposer(node)
	log := cfg.Logger
	return &Manager{
		cfg:        cfg,
		logger:     log,
		node:       node,
		store:      s,
		control:    controlapi.New(s, log.With("component", "controlapi")),
		dispatcher: dispatcher.New(s, dispatcher.Config{HeartbeatPeriod: cfg.HeartbeatPeriod, Logger: log.With("component", "dispatcher")}),
		allocator:  allocator.New(s, log.With("component", "allocator")),
		orch:       orchestrator.New(s, orchestrator.Config{Logger: log.With("component", "orchestrator")}),
		placer:     placement.New(s, log.With("component", "placement")),
		nodeCA:     nodeca.New(s, nil, log.With("component", "nodeca")),
		transport:  transport,
	}, nil
}

// Store returns the manager's store.
func (m *Manager) Store() *store.Store { return m.store }

// IsLeader reports whether this manager is currently the Raft leader.
func (m *Manager) IsLeader() bool { return m.node.IsLeader() }

// Register registers the Control and Dispatcher services on s. They answer
// on every manager: reads from the local store, writes only on the leader
// (codes.Unavailable elsewhere).
func (m *Manager) Register(s *grpc.Server) {
	shoalpb.RegisterControlServer(s, m.control)
	shoalpb.RegisterDispatcherServer(s, m.dispatcher)
	shoalpb.RegisterNodeCAServer(s, m.nodeCA)
}

// Run runs the Raft node and, while this manager is the leader, the leader
// components; it stops them when leadership is lost. It returns when ctx
// ends (nil) or Raft fails (its error), after everything it started has
// stopped. Run is called once per Manager.
func (m *Manager) Run(ctx context.Context) error {
	leadership, stopWatch := m.node.Leadership()
	defer stopWatch()

	// Raft outlives ctx by a little: the components stop first, so that
	// their last writes fail with ctx's error rather than ErrStopped.
	raftCtx, stopRaft := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRaft()
	raftDone := make(chan error, 1)
	go func() { raftDone <- m.node.Run(raftCtx) }()

	var leader *leaderRun // non-nil while the components run
	stopLeader := func() {
		if leader != nil {
			leader.stop()
			leader = nil
			m.logger.Info("leader components stopped")
		}
	}
	for {
		select {
		case isLeader := <-leadership:
			// The channel keeps only the latest value; IsLeader settles
			// any doubt about what it says now.
			switch {
			case isLeader && m.node.IsLeader() && leader == nil:
				m.logger.Info("became leader: starting components")
				leader = m.startLeader(ctx)
			case !isLeader && leader != nil:
				m.logger.Info("lost leadership")
				stopLeader()
			}
		case <-ctx.Done():
			stopLeader()
			stopRaft()
			err := <-raftDone
			if m.transport != nil {
				m.transport.Close()
			}
			if err != nil {
				return fmt.Errorf("manager raft node: %w", err)
			}
			return nil
		case err := <-raftDone:
			stopLeader()
			if err == nil {
				err = errors.New("stopped unexpectedly")
			}
			return fmt.Errorf("manager raft node: %w", err)
		}
	}
}

// leaderRun is one term of leadership: the components' goroutines.
type leaderRun struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// stop cancels the components and waits until all have returned.
func (l *leaderRun) stop() {
	l.cancel()
	l.wg.Wait()
}

// startLeader starts the leader components under a context derived from
// ctx, cancelled by the returned leaderRun's stop.
func (m *Manager) startLeader(ctx context.Context) *leaderRun {
	ctx, cancel := context.WithCancel(ctx)
	l := &leaderRun{cancel: cancel}
	components := []struct {
		name string
		run  func(context.Context) error
		// once: the component is done when it returns nil.
		once bool
	}{
		{"dispatcher", m.dispatcher.Run, false},
		{"allocator", m.allocator.Run, false},
		{"orchestrator", m.orch.Run, false},
		{"placement", m.placer.Run, false},
		{"leader-record", m.recordLeader, true},
		{"promoter", m.promoteLearners, false},
	}
	for _, c := range components {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			m.supervise(ctx, c.name, c.run, c.once)
		}()
	}
	return l
}

// supervise runs a leader component until ctx ends (or, when once, until
// it succeeds), running it again after componentRestartDelay when it fails
// before that.
func (m *Manager) supervise(ctx context.Context, name string, run func(context.Context) error, once bool) {
	for {
		err := run(ctx)
		if ctx.Err() != nil || (once && err == nil) {
			return
		}
		if err == nil {
			err = errors.New("returned before it was stopped")
		}
		m.logger.Error("leader component failed; restarting", "component", name, "err", err, "delay", componentRestartDelay)
		t := time.NewTimer(componentRestartDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// recordLeader marks this node as the leader in the store (ManagerStatus),
// and any other node as not: `node ls` shows who leads. It creates the
// node's object if it is missing (a join that crashed half-way).
func (m *Manager) recordLeader(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, selfWriteTimeout)
	defer cancel()
	for {
		err := m.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
			for _, n := range tx.ListNodes() {
				self := n.GetId() == m.cfg.NodeID
				if n.GetManagerStatus().GetLeader() == self && (!self || n.GetManagerStatus().GetRaftId() == m.cfg.RaftID) {
					continue
				}
				if !self && n.GetManagerStatus() == nil {
					continue
				}
				n = proto.Clone(n).(*shoalpb.Node)
				if n.ManagerStatus == nil {
					n.ManagerStatus = &shoalpb.ManagerStatus{}
				}
				n.ManagerStatus.Leader = self
				if self {
					n.ManagerStatus.RaftId = m.cfg.RaftID
					n.ManagerStatus.Reachability = "reachable"
				}
				b.UpdateNode(n)
			}
			if tx.GetNode(m.cfg.NodeID) == nil {
				b.CreateNode(&shoalpb.Node{
					Id: m.cfg.NodeID,
					Spec: &shoalpb.NodeSpec{
						DesiredRole:  shoalpb.NodeRole_NODE_ROLE_MANAGER,
						Availability: shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
					},
					Role:          shoalpb.NodeRole_NODE_ROLE_MANAGER,
					ManagerStatus: &shoalpb.ManagerStatus{RaftId: m.cfg.RaftID, Addr: m.cfg.AdvertiseAddr, Leader: true, Reachability: "reachable"},
				})
			}
			return nil
		})
		// The dispatcher writes nodes too: re-read and retry on a race.
		if !errors.Is(err, store.ErrVersionMismatch) {
			if err != nil {
				return fmt.Errorf("record leadership of node %s: %w", m.cfg.NodeID, err)
			}
			return nil
		}
	}
}
