package wg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// uapiDir is where wireguard-go (and wgctrl, to find it) keep control
// sockets. Both hard-code it.
const uapiDir = "/var/run/wireguard"

// uapiDialTimeout bounds the liveness probe of a control socket; a live
// wireguard-go accepts at once.
const uapiDialTimeout = time.Second

// userspace is an embedded wireguard-go: the device, and the UAPI listener
// through which wgctrl configures it.
type userspace struct {
	dev  *device.Device
	uapi net.Listener
	log  *slog.Logger
	wg   sync.WaitGroup // the accept loop and every connection handler

	mu    sync.Mutex // guards following
	conns map[net.Conn]struct{}
}

// uapiInUse reports whether a live process answers on name's control socket.
func uapiInUse(name string) bool {
	c, err := net.DialTimeout("unix", filepath.Join(uapiDir, name+".sock"), uapiDialTimeout)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// openUserspace starts wireguard-go on a new TUN device named d.name in
// cfg.NetNS, after clearing what a crashed earlier run may have left: a
// stale control socket (no one answers on it) and a link of that name.
func (d *Device) openUserspace(cfg Config) error {
	if uapiInUse(d.name) {
		return ErrInUse
	}
	// UAPIOpen removes a socket file no one answers on.
	file, err := ipc.UAPIOpen(d.name)
	if err != nil {
		return fmt.Errorf("open control socket: %w", err)
	}
	defer file.Close() // UAPIListen works on a duplicate
	if l, err := d.nl.LinkByName(d.name); err == nil {
		d.log.Info("removing leftover link", "type", l.Type())
		if err := d.nl.LinkDel(l); err != nil {
			return fmt.Errorf("remove leftover link: %w", err)
		}
	}

	var t tun.Device
	if err := inNetNS(cfg.NetNS, func() error {
		var err error
		t, err = tun.CreateTUN(d.name, d.mtu)
		return err
	}); err != nil {
		return fmt.Errorf("create TUN: %w", err)
	}
	bind := conn.NewDefaultBind()
	if cfg.NetNS != "" {
		// wireguard-go opens its UDP sockets and re-reads the MTU from
		// goroutines of its own, on threads in the process's namespace.
		// (Wrapping the bind also turns off wireguard-go's sticky-socket
		// route listener, which would watch the wrong namespace; it only
		// matters on multi-homed hosts.)
		t = &nsTUN{Device: t, netns: cfg.NetNS}
		bind = &nsBind{Bind: bind, netns: cfg.NetNS}
	}
	dev := device.NewDevice(t, bind, wgLogger(d.log))
	uapi, err := ipc.UAPIListen(d.name, file)
	if err != nil {
		dev.Close()
		return fmt.Errorf("listen on control socket: %w", err)
	}
	us := &userspace{dev: dev, uapi: uapi, log: d.log, conns: make(map[net.Conn]struct{})}
	us.wg.Add(1)
	go us.serve()
	d.us = us
	d.kind = KindUserspace
	return nil
}

// serve accepts control connections until the listener is closed.
func (us *userspace) serve() {
	defer us.wg.Done()
	for {
		c, err := us.uapi.Accept()
		if err != nil {
			// Closed by close, or the socket file was deleted under us:
			// then wgctrl can no longer reach the device.
			us.log.Debug("control socket closed", "err", err)
			return
		}
		us.mu.Lock()
		if us.conns == nil { // closing
			us.mu.Unlock()
			c.Close()
			return
		}
		us.conns[c] = struct{}{}
		us.mu.Unlock()
		us.wg.Add(1)
		go func() {
			defer us.wg.Done()
			us.dev.IpcHandle(c) // closes c
			us.mu.Lock()
			delete(us.conns, c)
			us.mu.Unlock()
		}()
	}
}

// close stops serving control connections, waits for their handlers, then
// stops wireguard-go, which closes the TUN device (its link vanishes) and the
// UDP sockets.
func (us *userspace) close() error {
	err := us.uapi.Close()
	us.mu.Lock()
	for c := range us.conns {
		c.Close()
	}
	us.conns = nil
	us.mu.Unlock()
	us.wg.Wait()
	us.dev.Close()
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close control socket: %w", err)
	}
	return nil
}

// nsTUN re-reads the MTU inside the device's namespace: wireguard-go does it
// by interface name on whatever thread handles a link event.
type nsTUN struct {
	tun.Device
	netns string
}

func (t *nsTUN) MTU() (int, error) {
	var mtu int
	err := inNetNS(t.netns, func() error {
		var err error
		mtu, err = t.Device.MTU()
		return err
	})
	return mtu, err
}

// nsBind opens wireguard-go's UDP sockets inside the device's namespace.
type nsBind struct {
	conn.Bind
	netns string
}

func (b *nsBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	var (
		fns    []conn.ReceiveFunc
		actual uint16
	)
	err := inNetNS(b.netns, func() error {
		var err error
		fns, actual, err = b.Bind.Open(port)
		return err
	})
	return fns, actual, err
}

// wgLogger adapts wireguard-go's printf logger to slog: its verbose lines
// become Debug, its errors (mostly transient: an unreachable peer, a failed
// handshake) Warn.
func wgLogger(l *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			l.Warn(fmt.Sprintf(format, args...))
		},
	}
}
