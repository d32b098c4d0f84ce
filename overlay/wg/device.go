package wg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Kind says which WireGuard implementation carries a Device.
type Kind string

const (
	// KindKernel is the Linux kernel module, driven through netlink.
	KindKernel Kind = "kernel"
	// KindUserspace is wireguard-go embedded in this process on a TUN device.
	KindUserspace Kind = "userspace"
)

const (
	// DefaultListenPort is WireGuard's registered port, and the one DESIGN.md
	// lists for Shoal.
	DefaultListenPort = 51820

	// DefaultMTU is WireGuard's own default: a 1500-byte underlay less the
	// worst-case encapsulation (40 IPv6 + 8 UDP + 32 WireGuard). Traffic that
	// is VXLAN inside WireGuard needs another 50 bytes off its inner MTU.
	DefaultMTU = 1420

	// PersistentKeepalive is set on every peer (by the device with the
	// larger key of a pair only after KeepaliveGrace). Both ends know each other's
	// endpoint from gossip, so it is not needed to find a peer; it keeps the
	// UDP state of NATs and stateful firewalls between hosts (often 30 s for
	// UDP) warm so that a host which is only ever talked to stays reachable,
	// and it makes a dead peer's handshake age visible. 25 s is the value
	// WireGuard recommends; the cost is one 32-byte packet per peer per 25 s
	// on an idle link.
	PersistentKeepalive = 25 * time.Second

	// KeepaliveGrace is how long the device with the larger public key of
	// a pair waits after adding the peer before it keeps it alive too (see
	// keepaliveFor): long enough for the other side's handshake, which
	// takes milliseconds, to arrive first; short next to the 5 s WireGuard
	// waits before retrying a handshake nobody answered.
	KeepaliveGrace = time.Second

	// maxNameLen is IFNAMSIZ less the terminating NUL.
	maxNameLen = 15
)

// Errors returned by the package; check them with errors.Is.
var (
	// ErrInvalid wraps every error about a bad Config or Peer.
	ErrInvalid = errors.New("wg: invalid argument")
	// ErrInUse: a live process (another wireguard-go) serves a device of
	// this name.
	ErrInUse = errors.New("wg: device name in use by a live process")
	// ErrKernelUnavailable: Config.Kind asked for the kernel module and the
	// kernel cannot create WireGuard links.
	ErrKernelUnavailable = errors.New("wg: kernel WireGuard unavailable")
	// ErrClosed: the Device was closed.
	ErrClosed = errors.New("wg: device closed")
)

// Config describes the host's WireGuard interface.
type Config struct {
	// Name of the interface. It must be unique on the machine, not just in
	// its network namespace: wireguard-go's control socket is
	// /var/run/wireguard/<Name>.sock in the mount namespace, which simulated
	// hosts on one machine share. Callers running several hosts on one
	// machine pass a per-host prefixed name. At most 15 bytes.
	Name string
	// PrivateKey is the host's key. The caller generates (GenerateKey) and
	// persists it; the package never stores it.
	PrivateKey wgtypes.Key
	// ListenPort is the UDP port; 0 means DefaultListenPort.
	ListenPort int
	// Address is the host's address on the WireGuard network, with its
	// prefix length (e.g. 10.99.0.1/24). Optional: an interface that only
	// carries routed traffic (Shoal's encrypted overlays) needs none, and
	// the zero value leaves it without one.
	Address netip.Prefix
	// MTU of the interface; 0 means DefaultMTU.
	MTU int
	// NetNS is the path of the network namespace the interface lives in
	// (e.g. /run/netns/host1); empty means the process's own. The process
	// may serve devices in several namespaces at once.
	NetNS string
	// Kind forces an implementation; empty means the kernel module when the
	// kernel can create a WireGuard link, else userspace.
	Kind Kind
	// Logger receives what the device reports; nil discards it.
	Logger *slog.Logger
}

// wgClient is the part of *wgctrl.Client the package uses, so that unit
// tests can pass a fake.
type wgClient interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
	Close() error
}

// Device is one host's WireGuard interface. Its methods are safe for
// concurrent use.
type Device struct {
	name string
	kind Kind
	pub  wgtypes.Key
	port int
	addr netip.Prefix
	mtu  int
	log  *slog.Logger

	mu     sync.Mutex // guards following; serialises SetPeers and Close
	closed bool
	nl     *netlink.Handle
	client wgClient
	us     *userspace // nil unless kind is KindUserspace
	// armed are the peers this device keeps alive although its key is
	// the larger of the pair: those it has had for KeepaliveGrace.
	// arming holds the stop functions of the timers still pending.
	armed  map[wgtypes.Key]bool
	arming map[wgtypes.Key]func() bool
	// afterFunc schedules arming: time.AfterFunc's, unless a test fakes
	// the clock. It returns the timer's stop function.
	afterFunc func(time.Duration, func()) func() bool
}

// GenerateKey returns a new random private key. The caller persists it: a
// host that changes its key must announce the new public key before peers
// accept its traffic again.
func GenerateKey() (wgtypes.Key, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate wireguard key: %w", err)
	}
	return k, nil
}

func (c Config) withDefaults() (Config, error) {
	if c.ListenPort == 0 {
		c.ListenPort = DefaultListenPort
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Name == "" || len(c.Name) > maxNameLen:
		return c, fmt.Errorf("%w: interface name %q must have 1 to %d bytes", ErrInvalid, c.Name, maxNameLen)
	case c.PrivateKey == wgtypes.Key{}:
		return c, fmt.Errorf("%w: no private key", ErrInvalid)
	case c.ListenPort < 0 || c.ListenPort > 65535:
		return c, fmt.Errorf("%w: listen port %d", ErrInvalid, c.ListenPort)
	case c.MTU < 576 || c.MTU > 65535:
		return c, fmt.Errorf("%w: MTU %d", ErrInvalid, c.MTU)
	case c.Kind != "" && c.Kind != KindKernel && c.Kind != KindUserspace:
		return c, fmt.Errorf("%w: kind %q", ErrInvalid, c.Kind)
	}
	return c, nil
}

// Open creates (or, after a restart, takes over) the interface cfg.Name and
// configures its key and port. It has no peers until SetPeers.
//
// A kernel WireGuard link of that name left by an earlier run is reused, with
// its peers, so that sessions survive a daemon restart. Anything else of that
// name is a leftover of a crashed process (a TUN link, a stale control
// socket) and is removed, unless a live process still answers on the
// control socket: then Open fails with ErrInUse.
func Open(ctx context.Context, cfg Config) (*Device, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	nl, err := netlinkHandle(cfg.NetNS)
	if err != nil {
		return nil, fmt.Errorf("open wireguard %s: %w", cfg.Name, err)
	}
	d := &Device{
		name: cfg.Name,
		pub:  cfg.PrivateKey.PublicKey(),
		port: cfg.ListenPort,
		addr: cfg.Address,
		mtu:  cfg.MTU,
		log:  cfg.Logger.With("wg", cfg.Name),
		nl:   nl,
	}
	if err := d.open(cfg); err != nil {
		d.teardown()
		return nil, fmt.Errorf("open wireguard %s: %w", cfg.Name, err)
	}
	d.log.Info("wireguard device open", "kind", d.kind, "port", d.port,
		"address", d.addr, "mtu", d.mtu, "public_key", d.pub.String())
	return d, nil
}

func (d *Device) open(cfg Config) error {
	switch cfg.Kind {
	case KindUserspace:
		if err := d.openUserspace(cfg); err != nil {
			return err
		}
	default:
		err := d.openKernel()
		switch {
		case err == nil:
		case errors.Is(err, ErrKernelUnavailable) && cfg.Kind == "":
			d.log.Info("kernel has no WireGuard, using embedded wireguard-go")
			if err := d.openUserspace(cfg); err != nil {
				return err
			}
		default:
			return err
		}
	}

	if err := inNetNS(cfg.NetNS, func() error {
		c, err := wgctrl.New()
		d.client = c
		return err
	}); err != nil {
		return fmt.Errorf("wgctrl: %w", err)
	}
	key, port := cfg.PrivateKey, cfg.ListenPort
	if err := d.client.ConfigureDevice(d.name, wgtypes.Config{PrivateKey: &key, ListenPort: &port}); err != nil {
		return fmt.Errorf("configure key and port: %w", err)
	}

	link, err := d.nl.LinkByName(d.name)
	if err != nil {
		return fmt.Errorf("find link: %w", err)
	}
	if err := d.reconcileAddress(link); err != nil {
		return err
	}
	if link.Attrs().MTU != d.mtu {
		if err := d.nl.LinkSetMTU(link, d.mtu); err != nil {
			return fmt.Errorf("set MTU %d: %w", d.mtu, err)
		}
	}
	if err := d.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set link up: %w", err)
	}
	if d.us != nil {
		// Up opens the UDP socket now rather than when wireguard-go notices
		// the link came up, so a port clash fails Open.
		if err := d.us.dev.Up(); err != nil {
			return fmt.Errorf("bring wireguard-go up (port %d): %w", d.port, err)
		}
	}
	return nil
}

// openKernel creates a kernel WireGuard link, or takes over one left by an
// earlier run. It returns ErrKernelUnavailable when the kernel has no
// WireGuard.
func (d *Device) openKernel() error {
	if l, err := d.nl.LinkByName(d.name); err == nil {
		if l.Type() == "wireguard" {
			d.log.Info("taking over existing kernel wireguard link")
			d.kind = KindKernel
			return nil
		}
		if uapiInUse(d.name) {
			return ErrInUse
		}
		d.log.Info("removing leftover link", "type", l.Type())
		if err := d.nl.LinkDel(l); err != nil {
			return fmt.Errorf("remove leftover link: %w", err)
		}
	}
	err := d.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: d.name, MTU: d.mtu}})
	switch {
	case err == nil:
		d.kind = KindKernel
		return nil
	case errors.Is(err, unix.EOPNOTSUPP): // "Unknown device type": no module
		return fmt.Errorf("%w: %v", ErrKernelUnavailable, err)
	default:
		return fmt.Errorf("create kernel wireguard link: %w", err)
	}
}

// reconcileAddress leaves exactly d.addr on the link, or no address when
// d.addr is the zero value (IPv6 link-local addresses the kernel adds are
// left alone).
func (d *Device) reconcileAddress(link netlink.Link) error {
	addrs, err := d.nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	var want *netlink.Addr
	if d.addr.IsValid() {
		want = prefixToAddr(d.addr)
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() || (want != nil && a.IPNet.String() == want.IPNet.String()) {
			continue
		}
		if err := d.nl.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove stale address %s: %w", a.IPNet, err)
		}
	}
	if want == nil {
		return nil
	}
	if err := d.nl.AddrReplace(link, want); err != nil {
		return fmt.Errorf("set address %s: %w", d.addr, err)
	}
	return nil
}

func prefixToAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
}

// Name is the interface name.
func (d *Device) Name() string { return d.name }

// Kind says which implementation carries the device.
func (d *Device) Kind() Kind { return d.kind }

// PublicKey is the key peers configure for this host.
func (d *Device) PublicKey() wgtypes.Key { return d.pub }

// ListenPort is the UDP port peers send to.
func (d *Device) ListenPort() int { return d.port }

// Address is the host's address on the WireGuard interface.
func (d *Device) Address() netip.Prefix { return d.addr }

// MTU is the interface MTU.
func (d *Device) MTU() int { return d.mtu }

// Close removes the interface: the kernel link is deleted, or wireguard-go
// is stopped (its TUN link vanishes with it) and its control socket removed.
// Sessions with every peer end. Close is idempotent.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	for _, stop := range d.arming {
		stop()
	}
	err := d.teardown()
	d.log.Info("wireguard device closed")
	return err
}

// teardown releases whatever open got as far as creating.
func (d *Device) teardown() error {
	var errs []error
	if d.client != nil {
		errs = append(errs, d.client.Close())
	}
	switch {
	case d.us != nil:
		errs = append(errs, d.us.close())
	case d.kind == KindKernel && d.nl != nil:
		if l, err := d.nl.LinkByName(d.name); err == nil {
			if err := d.nl.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete link %s: %w", d.name, err))
			}
		}
	}
	if d.nl != nil {
		d.nl.Close()
	}
	return errors.Join(errs...)
}
