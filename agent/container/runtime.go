package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
)

// Errors callers decide on; check them with errors.Is.
var (
	// ErrNotFound means the runtime has no state for the container id.
	ErrNotFound = errors.New("no such container")
	// ErrInvalidID means the id cannot name a container: runc accepts
	// letters, digits and _ + - . only, and the id becomes a directory name.
	ErrInvalidID = errors.New("invalid container id")
	// ErrInvalidSpec means Create was given a Spec it cannot turn into a
	// bundle (no layers, no args, unknown user, ...).
	ErrInvalidSpec = errors.New("invalid container spec")
	// ErrAlreadyExited means Start was called for a container that has
	// already run: a container runs once; Remove and Create it again.
	ErrAlreadyExited = errors.New("container has already exited")
	// ErrStartFailed means runc could not start the container's process
	// (unknown executable, bad working directory, ...). The wrapping error
	// carries runc's reason; the container counts as exited.
	ErrStartFailed = errors.New("container failed to start")
)

const (
	// defaultRuncBinary is looked up in PATH, as Debian and most
	// distributions install runc there.
	defaultRuncBinary = "runc"
	// defaultCgroupParent keeps one daemon's containers under one cgroup
	// when the caller did not choose one; two daemons on a host need
	// distinct parents.
	defaultCgroupParent = "/shoal"
	// waitPollInterval is how often Wait, Stop and Logs look for exit.json:
	// a stat per tick is cheap, and 50ms keeps stop and exit reporting
	// prompt compared with runc's own ~30-100ms per command.
	waitPollInterval = 50 * time.Millisecond
	// startPollInterval is how often Start looks for runc's pid file;
	// `runc run` takes ~55ms here, so a short tick matters for the latency
	// every task start pays.
	startPollInterval = 10 * time.Millisecond
	// orphanCheckEvery is how many wait ticks pass between `runc state`
	// calls for a container whose shim died: that case is rare and each
	// check runs runc.
	orphanCheckEvery = 20
	// unknownExitCode is reported when a container's shim died without
	// recording an exit status, as Docker reports 255 for unknown exits.
	unknownExitCode = 255
	// dirPerm keeps the runtime's directories root-only: bundles hold
	// environment variables, which often carry credentials.
	dirPerm = 0o700
)

// Names of the files in a container's state directory (see package doc).
const (
	configFile     = "config.json"
	rootfsDir      = "rootfs"
	upperDir       = "upper"
	workDir        = "work"
	hostsFile      = "hosts"
	resolvConfFile = "resolv.conf"
	shimPidFile    = "shim.pid"
	initPidFile    = "init.pid"
	logFile        = "log.jsonl"
	exitFile       = "exit.json"
	runcLogFile    = "runc.log"
	shimLogFile    = "shim.log"
)

// validID is runc's own rule for container ids.
var validID = regexp.MustCompile(`^[\w+\-.]+$`)

// Config configures a Runtime.
type Config struct {
	// RuncBinary is the runc executable; default "runc" from PATH.
	RuncBinary string
	// Root is runc's --root, one per daemon (<run-dir>/runc).
	Root string
	// StateDir holds the per-container bundles, logs and exit files
	// (<run-dir>/containers).
	StateDir string
	// CgroupParent is the cgroup path prefix of this daemon's containers,
	// e.g. "/shoal" (cgroupfs driver); container ID runs in
	// CgroupParent/ID in every hierarchy.
	CgroupParent string
	// ShimCommand is the argv prefix that runs ShimMain with the remaining
	// arguments, e.g. {"/usr/bin/shoald", "shim"}. Required.
	ShimCommand []string
	// Logger receives the runtime's logs; nil discards them.
	Logger *slog.Logger
}

// Runtime runs containers with runc. Its methods are safe for concurrent
// use and keyed by container id; all state is on disk, so a new Runtime
// with the same Config picks up containers an earlier process started.
type Runtime struct {
	cfg   Config
	runc  *runc.Runc
	log   *slog.Logger
	cg    cgroupHost
	locks idLocks
}

// New returns a Runtime for cfg, creating its directories.
func New(cfg Config) (*Runtime, error) {
	if cfg.Root == "" || cfg.StateDir == "" {
		return nil, errors.New("container runtime: Root and StateDir are required")
	}
	if len(cfg.ShimCommand) == 0 {
		return nil, errors.New("container runtime: ShimCommand is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.RuncBinary == "" {
		cfg.RuncBinary = defaultRuncBinary
	}
	// Resolve runc now so the shims do not depend on the daemon's PATH. A
	// missing runc is reported when a container is started, so that a
	// daemon (or a test) that never runs containers still works.
	if p, err := exec.LookPath(cfg.RuncBinary); err == nil {
		cfg.RuncBinary = p
	} else {
		cfg.Logger.Warn("runc not found; containers will fail to start", "runc", cfg.RuncBinary, "err", err)
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = defaultCgroupParent
	}
	cfg.CgroupParent = "/" + strings.Trim(filepath.Clean("/"+cfg.CgroupParent), "/")
	for _, d := range []*string{&cfg.Root, &cfg.StateDir} {
		abs, err := filepath.Abs(*d)
		if err != nil {
			return nil, fmt.Errorf("container runtime: resolve %s: %w", *d, err)
		}
		if err := os.MkdirAll(abs, dirPerm); err != nil {
			return nil, fmt.Errorf("container runtime: create %s: %w", abs, err)
		}
		*d = abs
	}
	// A host whose cgroups cannot be read still runs containers without
	// limits; Create refuses limits it cannot enforce.
	cg, err := detectCgroupHost()
	if err != nil {
		cfg.Logger.Warn("cannot inspect the host's cgroups; resource limits will be refused", "err", err)
	}
	if cg.controllers["memory"] != "" && !cg.swapLimit {
		cfg.Logger.Warn("the kernel does not account swap per cgroup; a container with a memory limit can still use swap")
	}
	return &Runtime{
		cfg:   cfg,
		runc:  &runc.Runc{Command: cfg.RuncBinary, Root: cfg.Root},
		log:   cfg.Logger,
		cg:    cg,
		locks: idLocks{held: make(map[string]chan struct{})},
	}, nil
}

// State is the lifecycle state of a container.
type State int

const (
	// StateUnknown means there is no such container.
	StateUnknown State = iota
	// StateCreated means the bundle is ready and the container not started.
	StateCreated
	// StateRunning means the container's process is alive.
	StateRunning
	// StateExited means the container ran and exited.
	StateExited
)

// String returns the state's name, for logs.
func (s State) String() string {
	switch s {
	case StateCreated:
		return "created"
	case StateRunning:
		return "running"
	case StateExited:
		return "exited"
	default:
		return "unknown"
	}
}

// Status describes a container.
type Status struct {
	State State
	// Pid is the host pid of the container's init while it runs.
	Pid int
	// ExitCode is the exit status; 128+N when killed by signal N.
	ExitCode int
	// Signal is the name of the signal ("SIGKILL") that killed the
	// container, "" when it exited by itself. Inferred from ExitCode, so a
	// process that calls exit(137) reads as killed by SIGKILL, as in
	// Docker and the shell.
	Signal string
	// OOMKilled means the kernel OOM killer killed a process of the
	// exited container: its init when Signal is SIGKILL, else another
	// one. MemoryLimit is the container's memory limit in bytes (0 for
	// none), so an OOM kill with a limit is the container exceeding it.
	OOMKilled   bool
	MemoryLimit int64
	StartedAt   time.Time
	FinishedAt  time.Time
}

func (r *Runtime) dir(id string) string { return filepath.Join(r.cfg.StateDir, id) }

func checkID(id string) error {
	if !validID.MatchString(id) || id == "." || id == ".." {
		return fmt.Errorf("%w: %q", ErrInvalidID, id)
	}
	return nil
}

// Start starts the container's shim and returns once runc reports the
// container running, or once it has exited if it exits first. Starting a
// running container is a no-op; starting an exited one fails with
// ErrAlreadyExited. When runc cannot start the process at all the error
// wraps ErrStartFailed and the container is exited with runc's code.
func (r *Runtime) Start(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock, err := r.locks.lock(ctx, id)
	if err != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	defer unlock()

	dir := r.dir(id)
	if _, err := os.Stat(filepath.Join(dir, configFile)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("start container %s: %w", id, ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	st, err := r.Status(ctx, id)
	if err != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	switch st.State {
	case StateExited:
		return fmt.Errorf("start container %s: %w", id, ErrAlreadyExited)
	case StateRunning:
		return r.waitStarted(ctx, id)
	}

	args := append([]string{}, r.cfg.ShimCommand[1:]...)
	args = append(args, shimModeSpawn,
		"--runc", r.cfg.RuncBinary, "--root", r.cfg.Root, "--dir", dir, "--id", id)
	if cg := r.cg.memoryCgroup(r.cgroupPath(id)); cg != "" {
		args = append(args, "--memory-cgroup", cg)
	}
	// Not tied to ctx: the first stage returns as soon as the shim runs,
	// and killing it halfway could leave a shim nobody recorded.
	cmd := exec.Command(r.cfg.ShimCommand[0], args...)
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("start container %s: run shim: %w: %s", id, err, strings.TrimSpace(string(out)))
	}
	r.log.Debug("shim started", "id", id)
	return r.waitStarted(ctx, id)
}

// waitStarted waits until runc has written the container's pid file (runc
// run writes it once the process runs) or the shim has recorded an exit.
func (r *Runtime) waitStarted(ctx context.Context, id string) error {
	dir := r.dir(id)
	tick := time.NewTicker(startPollInterval)
	defer tick.Stop()
	for {
		rec, err := readExit(dir)
		switch {
		case err == nil:
			if rec.Error != "" {
				return fmt.Errorf("start container %s: %w: %s", id, ErrStartFailed, rec.Error)
			}
			return nil
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("start container %s: %w", id, err)
		}
		if _, err := os.Stat(filepath.Join(dir, initPidFile)); err == nil {
			return nil
		}
		if !r.shimAlive(dir) {
			// The shim may have written exit.json between the two checks.
			if _, err := readExit(dir); err == nil {
				continue
			}
			return fmt.Errorf("start container %s: shim exited without recording an exit status (see %s)", id, filepath.Join(dir, shimLogFile))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("start container %s: %w", id, ctx.Err())
		case <-tick.C:
		}
	}
}

// Status reports the container's state from exit.json, the shim's
// liveness and, when the shim died, runc's state. It works for containers
// started by an earlier daemon process. An unknown id is StateUnknown with
// a nil error.
func (r *Runtime) Status(ctx context.Context, id string) (Status, error) {
	if err := checkID(id); err != nil {
		return Status{}, err
	}
	dir := r.dir(id)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return Status{State: StateUnknown}, nil
	} else if err != nil {
		return Status{}, fmt.Errorf("status of container %s: %w", id, err)
	}
	if st, ok, err := exitedStatus(dir); ok || err != nil {
		return st, err
	}
	if _, err := os.Stat(filepath.Join(dir, shimPidFile)); errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(dir, configFile)); err != nil {
			// A Create that did not finish: nothing usable yet.
			return Status{State: StateUnknown}, nil
		}
		return Status{State: StateCreated}, nil
	}
	if r.shimAlive(dir) {
		return runningStatus(dir), nil
	}
	// The shim is gone: it either just wrote exit.json or died.
	if st, ok, err := exitedStatus(dir); ok || err != nil {
		return st, err
	}
	if c, err := r.runc.State(ctx, id); err == nil && (c.Status == "running" || c.Status == "paused") {
		r.log.Warn("container running without its shim; its output is lost", "id", id)
		st := runningStatus(dir)
		st.Pid = c.Pid
		return st, nil
	}
	// The shim died before the container's exit: its status and time
	// are lost.
	st := runningStatus(dir)
	return Status{State: StateExited, ExitCode: unknownExitCode, StartedAt: st.StartedAt}, nil
}

// exitedStatus reads exit.json; ok reports whether it exists.
func exitedStatus(dir string) (st Status, ok bool, err error) {
	rec, err := readExit(dir)
	if errors.Is(err, os.ErrNotExist) {
		return Status{}, false, nil
	}
	if err != nil {
		return Status{}, false, err
	}
	return Status{
		State:       StateExited,
		ExitCode:    rec.Code,
		Signal:      rec.Signal,
		OOMKilled:   rec.OOMKilled,
		MemoryLimit: rec.MemoryLimit,
		StartedAt:   rec.StartedAt,
		FinishedAt:  rec.FinishedAt,
	}, true, nil
}

// runningStatus describes a container whose shim is alive. Before runc
// has written init.pid it reports pid 0.
func runningStatus(dir string) Status {
	st := Status{State: StateRunning}
	p := filepath.Join(dir, initPidFile)
	if pid, err := readPid(p); err == nil {
		st.Pid = pid
	}
	if fi, err := os.Stat(p); err == nil {
		st.StartedAt = fi.ModTime()
	}
	return st
}

// Wait blocks until the container has exited and returns its final
// status. It polls exit.json every waitPollInterval.
func (r *Runtime) Wait(ctx context.Context, id string) (Status, error) {
	if err := checkID(id); err != nil {
		return Status{}, err
	}
	dir := r.dir(id)
	tick := time.NewTicker(waitPollInterval)
	defer tick.Stop()
	for n := 0; ; n++ {
		if st, ok, err := exitedStatus(dir); ok || err != nil {
			if err != nil {
				return Status{}, fmt.Errorf("wait for container %s: %w", id, err)
			}
			return st, nil
		}
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			return Status{}, fmt.Errorf("wait for container %s: %w", id, ErrNotFound)
		}
		if _, err := os.Stat(filepath.Join(dir, shimPidFile)); err == nil && !r.shimAlive(dir) && n%orphanCheckEvery == 0 {
			st, err := r.Status(ctx, id)
			if err != nil {
				return Status{}, fmt.Errorf("wait for container %s: %w", id, err)
			}
			if st.State == StateExited {
				return st, nil
			}
		}
		select {
		case <-ctx.Done():
			return Status{}, fmt.Errorf("wait for container %s: %w", id, ctx.Err())
		case <-tick.C:
		}
	}
}

// Stop sends sig (SIGTERM when 0) to the container's init, waits up to
// grace for it to exit, then sends SIGKILL and waits for the exit. It
// returns the final status; for a container that is not running (created
// or exited) it does nothing and returns its status.
func (r *Runtime) Stop(ctx context.Context, id string, sig syscall.Signal, grace time.Duration) (Status, error) {
	st, err := r.Status(ctx, id)
	if err != nil {
		return Status{}, fmt.Errorf("stop container %s: %w", id, err)
	}
	switch st.State {
	case StateUnknown:
		return Status{}, fmt.Errorf("stop container %s: %w", id, ErrNotFound)
	case StateCreated, StateExited:
		return st, nil
	}
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	if sig != syscall.SIGKILL {
		r.kill(ctx, id, sig)
		gctx, cancel := context.WithTimeout(ctx, grace)
		st, err := r.Wait(gctx, id)
		cancel()
		if err == nil {
			return st, nil
		}
		if ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return Status{}, fmt.Errorf("stop container %s: %w", id, err)
		}
		r.log.Info("container did not stop within its grace period; killing it", "id", id, "signal", signalName(sig), "grace", grace)
	}
	r.kill(ctx, id, syscall.SIGKILL)
	st, err = r.Wait(ctx, id)
	if err != nil {
		return Status{}, fmt.Errorf("stop container %s: %w", id, err)
	}
	return st, nil
}

// kill signals the container's init through runc. Failures are logged,
// not returned: the usual one is that the container has just exited, and
// the caller waits for the exit either way.
func (r *Runtime) kill(ctx context.Context, id string, sig syscall.Signal) {
	if err := r.runc.Kill(ctx, id, int(sig), nil); err != nil {
		r.log.Debug("runc kill", "id", id, "signal", signalName(sig), "err", err)
	}
}

// List returns the ids of containers with state on disk: a bundle
// directory or runc state. A restarted daemon adopts or removes them.
func (r *Runtime) List(ctx context.Context) ([]string, error) {
	seen := make(map[string]bool)
	var ids []string
	for _, d := range []string{r.cfg.StateDir, r.cfg.Root} {
		ents, err := os.ReadDir(d)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("list containers in %s: %w", d, err)
		}
		for _, e := range ents {
			if !e.IsDir() || checkID(e.Name()) != nil || seen[e.Name()] {
				continue
			}
			seen[e.Name()] = true
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// idLocks serialises Create, Start and Remove of one container id while
// letting different containers proceed in parallel. A lock is a channel
// so that waiting for it respects the caller's context.
type idLocks struct {
	mu   sync.Mutex               // guards following
	held map[string]chan struct{} // closed when the holder unlocks
}

func (l *idLocks) lock(ctx context.Context, id string) (unlock func(), err error) {
	for {
		l.mu.Lock()
		ch, busy := l.held[id]
		if !busy {
			ch = make(chan struct{})
			l.held[id] = ch
			l.mu.Unlock()
			return func() {
				l.mu.Lock()
				delete(l.held, id)
				l.mu.Unlock()
				close(ch)
			}, nil
		}
		l.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		}
	}
}
