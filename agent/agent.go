// Package agent is Shoal's worker: it keeps a session with the managers'
// dispatcher, receives the tasks assigned to its host, runs their
// containers through an Executor, and reports their status back.
//
// The agent speaks to the dispatcher over gRPC even when the manager runs in
// the same process, so a one-host cluster exercises the same path as a
// remote host.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
)

const (
	// reconnectMinBackoff and reconnectMaxBackoff bound the wait between
	// session attempts: quick enough to follow a manager restart in well
	// under a second, slow enough not to hammer a manager that is down.
	reconnectMinBackoff = 100 * time.Millisecond
	reconnectMaxBackoff = 5 * time.Second
	// defaultHeartbeatPeriod is used until the dispatcher says otherwise.
	defaultHeartbeatPeriod = time.Second
)

// Config configures an Agent.
type Config struct {
	// NodeID is this host's node id, stable across restarts.
	NodeID string
	// Conn reaches the dispatcher.
	Conn grpc.ClientConnInterface
	// Executor runs the containers.
	Executor Executor
	// Overlay, when set, is told the overlay networks and services that
	// come with each set of assignments, before the tasks are run.
	Overlay *Overlay
	// Description is reported to the managers; Describe() fills it when nil.
	Description *shoalpb.NodeDescription
	// OnManagers, when set, is told the managers' addresses each time the
	// session says them, so the daemon can fail over to another manager.
	OnManagers func(addrs []string)
	// OnNode, when set, is told this node as the managers see it, when the
	// session opens and whenever its role changes (promotion, demotion).
	OnNode func(n *shoalpb.Node)
	// OnGossipKey, when set, is told the cluster's gossip key each time a
	// session opens (nil when the cluster has none).
	OnGossipKey func(key []byte)
	// Now is the clock (time.Now when nil).
	Now    func() time.Time
	Logger *slog.Logger
}

// Agent is one host's worker.
type Agent struct {
	cfg    Config
	log    *slog.Logger
	rep    *reporter
	worker *worker

	mu        sync.Mutex // guards following
	connected bool
}

// New returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("agent: node id is required")
	}
	if cfg.Conn == nil || cfg.Executor == nil {
		return nil, errors.New("agent: a dispatcher connection and an executor are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Description == nil {
		cfg.Description = Describe()
	}
	log := cfg.Logger.With("component", "agent")
	rep := newReporter()
	return &Agent{cfg: cfg, log: log, rep: rep, worker: newWorker(cfg.Executor, rep, cfg.Now, log)}, nil
}

// Connected reports whether the agent has a live session.
func (a *Agent) Connected() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.connected
}

func (a *Agent) setConnected(v bool) {
	a.mu.Lock()
	a.connected = v
	a.mu.Unlock()
}

// Run keeps a session with the dispatcher until ctx ends, reconnecting
// with backoff. Containers are left running when it returns.
func (a *Agent) Run(ctx context.Context) error {
	defer a.worker.wait()
	backoff := reconnectMinBackoff
	for {
		start := a.cfg.Now()
		err := a.session(ctx, ctx)
		a.setConnected(false)
		if ctx.Err() != nil {
			return nil
		}
		if a.cfg.Now().Sub(start) > reconnectMaxBackoff {
			backoff = reconnectMinBackoff
		}
		a.log.Info("session ended, reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, reconnectMaxBackoff)
	}
}

// session runs one dispatcher session until it breaks. Task runners it
// starts live on runCtx, the agent's lifetime, not the session's: a broken
// session must not disturb running containers.
func (a *Agent) session(runCtx, ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	client := shoalpb.NewDispatcherClient(a.cfg.Conn)
	stream, err := client.Session(ctx, &shoalpb.SessionRequest{NodeId: a.cfg.NodeID, Description: a.cfg.Description})
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	first, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	sid := first.GetSessionId()
	a.log.Info("session open", "session", sid, "managers", first.GetManagers())
	a.sessionMessage(first)
	a.setConnected(true)

	errc := make(chan error, 4)
	var wg sync.WaitGroup
	spawn := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- f()
		}()
	}
	defer wg.Wait()
	defer cancel()

	spawn(func() error { // the session stream itself: its end ends the session
		for {
			m, err := stream.Recv()
			if err != nil {
				return fmt.Errorf("session stream: %w", err)
			}
			a.sessionMessage(m)
		}
	})
	spawn(func() error {
		period := defaultHeartbeatPeriod
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(period):
			}
			resp, err := client.Heartbeat(ctx, &shoalpb.HeartbeatRequest{NodeId: a.cfg.NodeID, SessionId: sid})
			if err != nil {
				return fmt.Errorf("heartbeat: %w", err)
			}
			if p := resp.GetPeriod().AsDuration(); p > 0 {
				period = p
			}
		}
	})
	spawn(func() error {
		as, err := client.Assignments(ctx, &shoalpb.AssignmentsRequest{NodeId: a.cfg.NodeID, SessionId: sid})
		if err != nil {
			return fmt.Errorf("open assignments: %w", err)
		}
		for {
			m, err := as.Recv()
			if err != nil {
				return fmt.Errorf("assignments: %w", err)
			}
			if a.cfg.Overlay != nil {
				a.cfg.Overlay.SetAssignments(runCtx, m.GetNetworks(), m.GetServices())
			}
			a.worker.assign(runCtx, m.GetTasks())
		}
	})
	spawn(func() error {
		return a.rep.run(ctx, func(ctx context.Context, updates []*shoalpb.TaskStatusUpdate) error {
			_, err := client.UpdateTaskStatus(ctx, &shoalpb.UpdateTaskStatusRequest{NodeId: a.cfg.NodeID, SessionId: sid, Updates: updates})
			if err != nil {
				return fmt.Errorf("update task status: %w", err)
			}
			return nil
		})
	})
	return <-errc
}

// sessionMessage hands what the managers say about this node on.
func (a *Agent) sessionMessage(m *shoalpb.SessionMessage) {
	if a.cfg.OnManagers != nil && len(m.GetManagers()) > 0 {
		a.cfg.OnManagers(m.GetManagers())
	}
	if a.cfg.OnNode != nil && m.GetNode() != nil {
		a.cfg.OnNode(m.GetNode())
	}
	if a.cfg.OnGossipKey != nil && m.GetSessionId() != "" {
		a.cfg.OnGossipKey(m.GetGossipKey())
	}
}

// Describe reports this host: hostname, platform and resources.
func Describe() *shoalpb.NodeDescription {
	host, _ := os.Hostname()
	return &shoalpb.NodeDescription{
		Hostname: host,
		Platform: &shoalpb.Platform{Os: runtime.GOOS, Architecture: runtime.GOARCH},
		Resources: &shoalpb.Resources{
			NanoCpus:    int64(runtime.NumCPU()) * 1e9,
			MemoryBytes: memTotal(),
		},
	}
}

// memTotal reads the host's memory from /proc/meminfo (0 when unknown).
func memTotal() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	var kb int64
	if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err != nil {
		return 0
	}
	return kb * 1024
}
