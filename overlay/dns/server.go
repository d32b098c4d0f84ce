package dns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// Errors of Server methods, checked with errors.Is.
var (
	// ErrClosed: the Server was closed.
	ErrClosed = errors.New("dns server closed")
	// ErrExists: Add of a container that is already served.
	ErrExists = errors.New("container already served")
	// ErrNotFound: SetScope of a container that is not served.
	ErrNotFound = errors.New("container not served")
)

// Config configures a Server.
type Config struct {
	// Resolver answers Shoal names. Required.
	Resolver Resolver
	// ResolvConf is the file the upstream nameservers are read from,
	// again whenever it changes; DefaultResolvConf when empty.
	ResolvConf string
	// Upstreams, when set, replace ResolvConf's nameservers.
	Upstreams []netip.AddrPort
	// ForwardTimeout bounds one exchange with one upstream;
	// DefaultForwardTimeout when zero.
	ForwardTimeout time.Duration
	// ForwardAttempts is how many times the upstreams are tried in turn;
	// DefaultForwardAttempts when zero.
	ForwardAttempts int
	// Listen opens a container's listeners; ListenNetNS when nil.
	Listen ListenFunc
	// Logger receives the server's logs; nothing is logged when nil.
	Logger *slog.Logger
}

// Server is the daemon's DNS server: it serves every container that was
// Added, each in its own network namespace with its own Scope, until
// Remove or Close. It keeps no state on disk: after a daemon restart the
// caller Adds its running containers again.
type Server struct {
	resolver Resolver
	listen   ListenFunc
	fwd      *forwarder
	log      *slog.Logger

	// mu is held for the whole of Add, SetScope, Remove and Close, which
	// are therefore serialised; queries never take it.
	mu         sync.Mutex // guards following
	closed     bool
	containers map[string]*container
}

// container is one served container: its handler and its two listeners'
// servers.
type container struct {
	h        *handler
	cancel   context.CancelFunc // cancels h's forwards
	udp, tcp *mdns.Server
	udpDone  <-chan struct{} // closed when udp's serve goroutine returned
	tcpDone  <-chan struct{} // same for tcp
}

// New returns a Server that serves no container yet.
func New(cfg Config) (*Server, error) {
	if cfg.Resolver == nil {
		return nil, errors.New("dns: new server: no resolver")
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = DefaultResolvConf
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = DefaultForwardTimeout
	}
	if cfg.ForwardAttempts <= 0 {
		cfg.ForwardAttempts = DefaultForwardAttempts
	}
	if cfg.Listen == nil {
		cfg.Listen = ListenNetNS
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Server{
		resolver: cfg.Resolver,
		listen:   cfg.Listen,
		fwd: &forwarder{
			path:     cfg.ResolvConf,
			fixed:    append([]netip.AddrPort(nil), cfg.Upstreams...),
			timeout:  cfg.ForwardTimeout,
			attempts: cfg.ForwardAttempts,
		},
		log:        cfg.Logger,
		containers: make(map[string]*container),
	}, nil
}

// Add starts serving the container containerID, whose network namespace is
// at netnsPath, with the names scope makes visible. It returns once both
// listeners serve. ctx bounds opening the listeners only.
func (s *Server) Add(ctx context.Context, containerID, netnsPath string, scope Scope) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("dns: add container %s: %w", containerID, ErrClosed)
	}
	if _, ok := s.containers[containerID]; ok {
		return fmt.Errorf("dns: add container %s: %w", containerID, ErrExists)
	}
	pc, l, err := s.listen(ctx, netnsPath)
	if err != nil {
		return fmt.Errorf("dns: add container %s: %w", containerID, err)
	}
	hctx, cancel := context.WithCancel(context.Background())
	log := s.log.With("container", containerID)
	c := &container{
		h:      newHandler(hctx, s.resolver, s.fwd, log, scope),
		cancel: cancel,
	}
	c.udp = &mdns.Server{PacketConn: pc, Handler: c.h}
	c.tcp = &mdns.Server{Listener: l, Handler: c.h}
	if c.udpDone, err = serve(c.udp, log.With("net", "udp")); err != nil {
		cancel()
		return fmt.Errorf("dns: add container %s: serve udp: %w", containerID, errors.Join(err, pc.Close(), l.Close()))
	}
	if c.tcpDone, err = serve(c.tcp, log.With("net", "tcp")); err != nil {
		cancel()
		c.udp.Shutdown()
		<-c.udpDone
		return fmt.Errorf("dns: add container %s: serve tcp: %w", containerID, errors.Join(err, l.Close()))
	}
	s.containers[containerID] = c
	s.log.Debug("dns: serving container", "container", containerID, "netns", netnsPath)
	return nil
}

// serve runs srv in a new goroutine and returns once it serves, with a
// channel closed when that goroutine returns, or with the error that
// stopped it from starting.
func serve(srv *mdns.Server, log *slog.Logger) (<-chan struct{}, error) {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		defer close(done)
		err := srv.ActivateAndServe()
		select {
		case <-started:
			if err != nil {
				log.Warn("dns: listener stopped", "err", err)
			}
		default:
		}
		errc <- err
	}()
	select {
	case <-started:
		return done, nil
	case err := <-errc:
		<-done
		return nil, err
	}
}

// SetScope changes which names a served container sees, for instance when
// it joins or leaves a network.
func (s *Server) SetScope(containerID string, scope Scope) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("dns: set scope of container %s: %w", containerID, ErrClosed)
	}
	c, ok := s.containers[containerID]
	if !ok {
		return fmt.Errorf("dns: set scope of container %s: %w", containerID, ErrNotFound)
	}
	c.h.setScope(scope)
	return nil
}

// Remove stops serving containerID: it closes the container's listeners,
// cancels its forwards in flight and waits for its goroutines. Removing a
// container that is not served is a no-op.
func (s *Server) Remove(containerID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[containerID]
	if !ok {
		return
	}
	delete(s.containers, containerID)
	c.stop()
	s.log.Debug("dns: stopped serving container", "container", containerID)
}

// Close stops serving every container, as Remove does, and makes later
// Adds fail with ErrClosed. Closing twice is a no-op.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for _, c := range s.containers {
		c.cancel() // all forwards end at once, not container after container
	}
	for id, c := range s.containers {
		c.stop()
		delete(s.containers, id)
	}
}

// stop cancels c's forwards, then shuts its servers down; each shutdown
// closes its listener and waits for the queries being answered.
func (c *container) stop() {
	c.cancel()
	c.udp.Shutdown()
	c.tcp.Shutdown()
	<-c.udpDone
	<-c.tcpDone
}
