// Package daemon assembles shoald: the agent that every host runs, the
// manager when the host is one, and the root-only local socket the CLI
// speaks to. cmd/shoald only parses flags into a Config.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-project/shoal/agent"
	"github.com/shoal-project/shoal/agent/container"
	"github.com/shoal-project/shoal/agent/image"
	"github.com/shoal-project/shoal/internal/ca"
	"github.com/shoal-project/shoal/manager"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/overlay/bridge"
	"github.com/shoal-project/shoal/overlay/gossip"
	"github.com/shoal-project/shoal/overlay/wg"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/shoal-project/shoal/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Version is Shoal's version, reported by `shoal version` and to managers.
const Version = "0.1.0-dev"

// Defaults for the daemon's flags.
const (
	DefaultDataDir = "/var/lib/shoal"
	DefaultRunDir  = "/run/shoal"
	// DefaultCgroupParent groups every container of a daemon under one
	// cgroup; two daemons on one machine need distinct parents.
	DefaultCgroupParent = "/shoal"
	DefaultBridgeName   = "shoal0"
	// DefaultBridgeSubnet is the node-local container network. It is
	// private, outside Docker's 172.17/16 default and Shoal's overlay pool
	// (10.10.0.0/16), so the three can coexist on a host.
	DefaultBridgeSubnet = "172.29.0.0/16"
	DefaultListenAddr   = "0.0.0.0:4242"
)

// Config is everything that may differ between two daemons on one machine.
type Config struct {
	DataDir            string
	RunDir             string
	ListenAddr         string
	AdvertiseAddr      string
	GossipPort         int // TCP and UDP, on the advertise address; 0: DefaultGossipPort
	CgroupParent       string
	BridgeName         string
	BridgeSubnet       netip.Prefix
	InsecureRegistries []string
	RuncBinary         string
	// ShimCommand runs the container shim (shoald's own `shim` command).
	ShimCommand []string
	Logger      *slog.Logger
}

// Daemon is one running shoald.
type Daemon struct {
	cfg    Config
	log    *slog.Logger
	nodeID string

	images  *image.Store
	runtime *container.Runtime
	network *bridge.Driver

	localConn *grpc.ClientConn // to the daemon's own socket; set in Run
	bg        sync.WaitGroup   // listener and agent goroutines

	fwdMu    sync.Mutex                  // guards fwdConns
	fwdConns map[string]*grpc.ClientConn // to leaders, by address

	mu          sync.Mutex // guards following
	netCancel   context.CancelFunc
	netDone     chan struct{}
	agentCancel context.CancelFunc
	agentDone   chan struct{}
	// changingRole is set while this host is being promoted or demoted.
	changingRole bool
	keyPair      *ca.KeyPair // the certificate TLS presents; see useCredentials
	renewer      *ca.Renewer // nil until the host holds credentials
	renewCancel  context.CancelFunc
	workerConn   *grpc.ClientConn // to the managers, while a worker
	worker       bool             // joined a cluster as a worker
	mgr          *manager.Manager
	mgrDone      chan struct{}
	mgrCancel    context.CancelFunc
	runCtx       context.Context
	clusterErr   error
	// gossip is this host's gossip member while it is in a cluster.
	gossip       *gossip.Member
	gossipCancel context.CancelFunc
	gossipDone   chan struct{}
	// gossipKey is the cluster's gossip key once known (gossipKeyKnown;
	// nil for a cluster without one); gossipCtx and gossipManagers are
	// what startGossip was last asked, for a start the key arrives for.
	gossipKey      []byte
	gossipKeyKnown bool
	gossipCtx      context.Context
	gossipManagers []string

	overlayOnce sync.Once
	overlayNet  *agent.Overlay // nil when this host cannot run overlays
	wireGuard   *wg.Device     // the host's WireGuard interface, nil if none
	endpoints   *gossipTable
}

// SocketPath is where the daemon's local API listens.
func SocketPath(runDir string) string { return filepath.Join(runDir, "shoal.sock") }

// New prepares a daemon: directories, node identity, image store, runtime
// and network driver. Run starts it.
func New(cfg Config) (*Daemon, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.GossipPort == 0 {
		cfg.GossipPort = DefaultGossipPort
	}
	for _, dir := range []string{cfg.DataDir, cfg.RunDir} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	nodeID, err := loadNodeID(filepath.Join(cfg.DataDir, "node-id"))
	if err != nil {
		return nil, err
	}
	images, err := image.Open(image.Config{
		Dir:                filepath.Join(cfg.DataDir, "images"),
		InsecureRegistries: cfg.InsecureRegistries,
		Logger:             cfg.Logger.With("component", "images"),
	})
	if err != nil {
		return nil, fmt.Errorf("open image store: %w", err)
	}
	rt, err := container.New(container.Config{
		RuncBinary:   cfg.RuncBinary,
		Root:         filepath.Join(cfg.RunDir, "runc"),
		StateDir:     filepath.Join(cfg.RunDir, "containers"),
		CgroupParent: cfg.CgroupParent,
		ShimCommand:  cfg.ShimCommand,
		Logger:       cfg.Logger.With("component", "runtime"),
	})
	if err != nil {
		return nil, fmt.Errorf("set up the container runtime: %w", err)
	}
	nw, err := bridge.New(bridge.Config{
		Name:     cfg.BridgeName,
		Subnet:   cfg.BridgeSubnet,
		StateDir: filepath.Join(cfg.RunDir, "bridge"),
		Logger:   cfg.Logger.With("component", "network"),
	})
	if err != nil {
		return nil, fmt.Errorf("set up the local network: %w", err)
	}
	return &Daemon{cfg: cfg, log: cfg.Logger, nodeID: nodeID, images: images, runtime: rt, network: nw}, nil
}

// Run serves until ctx ends. Containers keep running after it returns.
func (d *Daemon) Run(ctx context.Context) error {
	unlock, err := lockDir(d.cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()

	if err := d.network.Setup(ctx); err != nil {
		return fmt.Errorf("set up the local network: %w", err)
	}

	// Everything started below stops when Run returns, whatever the reason.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.mu.Lock()
	d.runCtx = ctx
	d.mu.Unlock()

	sock := SocketPath(d.cfg.RunDir)
	_ = os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	if err := os.Chmod(sock, 0o600); err != nil {
		lis.Close()
		return fmt.Errorf("restrict %s to root: %w", sock, err)
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(d.forwardUnary), grpc.ChainStreamInterceptor(d.forwardStream))
	shoalpb.RegisterLocalServer(srv, &localServer{d: d})
	shoalpb.RegisterControlServer(srv, &controlProxy{d: d})
	shoalpb.RegisterDispatcherServer(srv, &dispatcherProxy{d: d})
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	defer srv.Stop()

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to own socket: %w", err)
	}
	defer conn.Close()
	d.localConn = conn

	has, err := manager.HasState(d.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("read manager state: %w", err)
	}
	mem, joined, err := d.loadMembership()
	if err != nil {
		return err
	}
	switch {
	case has:
		if err := d.startManager(ctx, false); err != nil {
			return err
		}
		if err := d.runAsManager(ctx); err != nil {
			return err
		}
	case joined:
		if err := d.runAsWorker(ctx, mem); err != nil {
			return err
		}
	}
	d.log.Info("shoald serving", "socket", sock, "node", d.nodeID, "manager", has, "worker", joined)

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("serve local API: %w", err)
	}
	cancel()
	srv.Stop()
	d.bg.Wait()
	d.stopManager()
	d.closeForwarding()
	d.closeWireGuard()
	return err
}

// runAsManager serves the cluster API on the network and runs this host's
// agent against its own manager.
func (d *Daemon) runAsManager(ctx context.Context) error {
	creds, err := d.tlsMaterial()
	if errors.Is(err, ca.ErrNotFound) {
		// A manager without its own certificate (init stopped half-way):
		// its CA issues one now.
		if err := d.issueOwnCertificate(); err != nil {
			return fmt.Errorf("issue this manager's certificate: %w", err)
		}
		creds, err = d.tlsMaterial()
	}
	if err != nil {
		return err
	}
	d.startListener(ctx, creds)
	if err := d.startRenewer(ctx); err != nil {
		return err
	}
	// A manager that joined others knows them; the first one learns of
	// later managers as every host does, from its agent's sessions.
	mem, _, err := d.loadMembership()
	if err != nil {
		d.log.Warn("gossip: read the managers' addresses", "err", err)
	}
	d.startGossip(ctx, mem.Managers)
	return d.startAgent(ctx, d.localConn, nil, d.setGossipSeeds)
}

// runAsWorker runs this host's agent against the managers it joined. The
// connection knows every manager and moves to another when its manager
// fails; each session refreshes the list.
func (d *Daemon) runAsWorker(ctx context.Context, mem membership) error {
	if len(mem.Managers) == 0 {
		return fmt.Errorf("%s names no manager: join the cluster again", d.membershipPath())
	}
	creds, err := d.tlsMaterial()
	if err != nil {
		return err
	}
	conn, update, err := d.dialManagers(mem.Managers, creds)
	if err != nil {
		return fmt.Errorf("connect to the managers %v: %w", mem.Managers, err)
	}
	d.mu.Lock()
	d.worker = true
	d.workerConn = conn
	d.mu.Unlock()
	if err := d.startRenewer(ctx); err != nil {
		return err
	}
	d.startGossip(ctx, mem.Managers)
	onManagers := func(addrs []string) {
		update(addrs)
		d.setGossipSeeds(addrs)
		if err := d.saveMembership(membership{Managers: addrs}); err != nil {
			d.log.Warn("save the managers' addresses", "err", err)
		}
	}
	return d.startAgent(ctx, conn, conn.Close, onManagers)
}

// startAgent runs the agent over conn until ctx ends, then calls done.
func (d *Daemon) startAgent(ctx context.Context, conn grpc.ClientConnInterface, done func() error, onManagers func([]string)) error {
	desc := agent.Describe()
	desc.Addr = d.cfg.AdvertiseAddr
	desc.ShoalVersion = Version
	ag, err := agent.New(agent.Config{
		NodeID:      d.nodeID,
		Description: desc,
		Conn:        conn,
		OnManagers:  onManagers,
		OnNode:      d.onNode,
		OnGossipKey: d.onGossipKey,
		Executor:    d.executor(),
		Overlay:     d.overlay(),
		Logger:      d.log,
	})
	if err != nil {
		return err
	}
	actx, cancel := context.WithCancel(ctx)
	finished := make(chan struct{})
	d.mu.Lock()
	d.agentCancel, d.agentDone = cancel, finished
	d.mu.Unlock()
	d.goBackground(func() {
		defer close(finished)
		_ = ag.Run(actx)
		if done != nil {
			_ = done()
		}
	})
	return nil
}

// executor runs tasks with runc over this host's images, runtime and
// network, and network attachments (shoal network connect) with the
// overlay, recorded under <data-dir>/attachments.
func (d *Daemon) executor() agent.Executor {
	log := d.log.With("component", "executor")
	return agent.WithAttachments(&agent.RuncExecutor{
		Images: d.images, Runtime: d.runtime, Network: d.network, Overlay: d.overlay(),
		NodeID: d.nodeID, Logger: log,
	}, &agent.AttachmentExecutor{
		Overlay: d.overlay(), Dir: filepath.Join(d.cfg.DataDir, "attachments"), Logger: log,
	})
}

// stopAgent stops the agent and waits for it; containers keep running.
func (d *Daemon) stopAgent() {
	d.mu.Lock()
	cancel, done := d.agentCancel, d.agentDone
	d.agentCancel, d.agentDone = nil, nil
	d.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// startListener serves the cluster API on the network until ctx ends or
// stopListener.
func (d *Daemon) startListener(ctx context.Context, creds *ca.Credentials) {
	lctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	d.mu.Lock()
	d.netCancel, d.netDone = cancel, done
	d.mu.Unlock()
	d.goBackground(func() {
		defer close(done)
		if err := d.serveNetwork(lctx, creds); err != nil {
			d.log.Error("cluster listener stopped", "err", err)
		}
	})
}

// stopListener stops the network listener and waits for it.
func (d *Daemon) stopListener() {
	d.mu.Lock()
	cancel, done := d.netCancel, d.netDone
	d.netCancel, d.netDone = nil, nil
	d.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// goBackground runs f in a goroutine Run waits for before returning.
func (d *Daemon) goBackground(f func()) {
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		f()
	}()
}

func (d *Daemon) managerConfig() manager.Config {
	return manager.Config{
		DataDir:       d.cfg.DataDir,
		NodeID:        d.nodeID,
		AdvertiseAddr: d.advertiseAddr(),
		DialPeer:      d.dialPeer,
		Logger:        d.log.With("component", "manager"),
	}
}

// startManager opens the manager's durable state and runs it; join starts
// one that joined an existing cluster and waits for the leader's log.
func (d *Daemon) startManager(ctx context.Context, join bool) error {
	cfg := d.managerConfig()
	cfg.Join = join
	m, err := manager.New(cfg)
	if errors.Is(err, raft.ErrCorrupt) {
		return fmt.Errorf("refusing to start: the manager's Raft state is damaged and starting would lose cluster state; nothing on disk was changed. Restore %s from a backup or copy it aside to inspect: %w", d.cfg.DataDir, err)
	}
	if err != nil {
		return fmt.Errorf("start manager: %w", err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	d.mu.Lock()
	d.mgr, d.mgrCancel, d.mgrDone = m, cancel, done
	d.mu.Unlock()
	go func() {
		defer close(done)
		if err := m.Run(mctx); err != nil {
			d.log.Error("manager stopped", "err", err)
			d.mu.Lock()
			d.clusterErr = err
			d.mu.Unlock()
		}
	}()
	return nil
}

func (d *Daemon) stopManager() {
	d.mu.Lock()
	cancel, done := d.mgrCancel, d.mgrDone
	d.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	d.mu.Lock()
	d.mgr, d.mgrCancel, d.mgrDone = nil, nil, nil
	d.mu.Unlock()
	d.closeForwarding()
}

// manager returns the running manager, or an error the CLI can show.
func (d *Daemon) manager() (*manager.Manager, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.clusterErr != nil {
		return nil, fmt.Errorf("the manager on this node stopped: %w", d.clusterErr)
	}
	if d.mgr == nil && d.worker {
		return nil, errWorker
	}
	if d.mgr == nil {
		return nil, errNotManager
	}
	return d.mgr, nil
}

var (
	errNotManager = errors.New("this node is not a manager of a cluster: run `shoal cluster init` first")
	errWorker     = errors.New("this node is a worker: pass an operator token (--token or SHOAL_TOKEN; `shoal cluster operator-token` on a manager prints it), or run this command against a manager (--host)")
)

// loadNodeID reads this host's node id, creating it on first start.
func loadNodeID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if id == "" {
			return "", fmt.Errorf("node id file %s is empty: remove it to get a new identity", path)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read node id: %w", err)
	}
	id := store.NewID()
	if err := writeFileSync(path, []byte(id+"\n")); err != nil {
		return "", fmt.Errorf("write node id: %w", err)
	}
	return id, nil
}

// writeFileSync writes a file atomically and durably.
func writeFileSync(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// lockDir takes an exclusive lock on the data dir so two daemons never
// share one.
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir %s is in use by another shoald (lock %s): %w", dir, path, err)
	}
	return func() { f.Close() }, nil
}

// initTimeout bounds cluster init: a one-member Raft group elects itself
// in one election timeout, well under this.
const initTimeout = 30 * time.Second
