package vxlan

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

const (
	// DefaultPort is the IANA VXLAN port (RFC 7348), the one Linux and
	// Docker use and DESIGN.md fixes for Shoal.
	DefaultPort = 4789

	// DefaultMTU fits a 1500-byte underlay: VXLAN over IPv4 adds 50 bytes
	// (outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14). An interface
	// with a larger MTU hands the vxlan frames the underlay cannot carry and
	// they are dropped silently (PLATFORM.md: TCP hides it through its MSS,
	// large UDP and ICMP do not). Over an IPv6 underlay subtract 20 more.
	DefaultMTU = 1450

	// EncryptedDefaultMTU is the MTU of an encrypted network's links when
	// Network.MTU is 0: WireGuard's own default (1500 minus 80, its worst
	// case, over IPv6), which the host's WireGuard interface has unless
	// configured otherwise. An encrypted network carries no VXLAN, so its
	// packets need no room beyond WireGuard's.
	EncryptedDefaultMTU = 1420

	// DefaultNetNSDir is where sandboxes are pinned by default: the directory
	// `ip netns` uses, so an operator can `ip netns exec <prefix>-ov-<id> ...`.
	DefaultNetNSDir = "/run/netns"

	// DefaultHostNetNS names the process's own network namespace as the
	// calling thread sees it (netnsutil.ProcessNetNS). Not /proc/self/ns/net:
	// that is the main thread's, and a goroutine locked to the main thread
	// may be inside a sandbox or container namespace at that moment. The
	// driver opens this path only from threads that have not entered
	// another namespace.
	DefaultHostNetNS = netnsutil.ProcessNetNS

	// MaxPrefixLen bounds Config.Prefix so every link name fits the kernel's
	// 15 bytes: the longest is a veth, the prefix then "v" and 8 hex digits
	// (an uplink's host end, the prefix then "u" and 6, is shorter).
	MaxPrefixLen = 6

	// maxIDLen bounds network and endpoint ids; network ids name files.
	maxIDLen = 128

	// maxVNI is the largest 24-bit VXLAN network identifier.
	maxVNI = 1<<24 - 1

	// minMTU is the IPv4 minimum (RFC 791); maxMTU is the largest a vxlan
	// device takes (the IP maximum minus the 50 bytes of encapsulation).
	minMTU = 68
	maxMTU = 65535 - 50

	// maxIfNameLen is the kernel's IFNAMSIZ minus the terminating NUL.
	maxIfNameLen = unix.IFNAMSIZ - 1

	// operUpTimeout bounds how long Attach waits for a new veth's carrier
	// to be processed (see waitOperUp); it takes milliseconds, more on a
	// loaded host, and a second is what a lost first packet would cost.
	operUpTimeout = time.Second
	// operUpPoll is the polling interval of that wait.
	operUpPoll = 2 * time.Millisecond
)

// Package errors, checked with errors.Is.
var (
	// ErrInvalidConfig is returned by New for a Config it cannot use.
	ErrInvalidConfig = errors.New("invalid vxlan driver config")
	// ErrInvalidNetwork is returned for a Network that cannot be set up.
	ErrInvalidNetwork = errors.New("invalid overlay network")
	// ErrInvalidEndpoint is returned by Attach for an endpoint, namespace or
	// interface name it cannot use, and by Detach for a bad id.
	ErrInvalidEndpoint = errors.New("invalid overlay endpoint")
	// ErrInvalidRemote is returned by SetRemotes for an unusable remote set.
	ErrInvalidRemote = errors.New("invalid remote endpoint")
	// ErrNoNetwork is returned when a network's sandbox does not exist (or
	// is incomplete): call EnsureNetwork first.
	ErrNoNetwork = errors.New("overlay network is not set up")
	// ErrNameTaken is returned by Attach when the requested interface name
	// exists in the container's namespace and is not this endpoint's, or when
	// two endpoint ids hash to the same veth name. Shoal never deletes a link
	// it did not create.
	ErrNameTaken = errors.New("interface name taken")
)

// Config configures a Driver, one per host.
type Config struct {
	// Prefix starts the name of everything the driver creates (sandbox
	// files, links, its nftables table), so drivers of several simulated
	// hosts on one machine never clash and a restarted driver finds its own
	// leftovers. 1 to MaxPrefixLen characters of [a-z0-9], starting with a
	// letter. Required.
	Prefix string
	// HostNetNS is the path of the host's network namespace, where the
	// underlay is and the VXLAN UDP sockets live; "" means the process's
	// own (DefaultHostNetNS).
	HostNetNS string
	// NetNSDir holds the sandbox netns files; default DefaultNetNSDir. The
	// bind mounts pin the sandboxes only as long as the mount namespace
	// they were made in lives (see the package doc).
	NetNSDir string
	// VTEP is the host's underlay address: the vxlan devices' local
	// address. Required.
	VTEP netip.Addr
	// Port is the VXLAN UDP port; default DefaultPort.
	Port int
	// WireGuardIf is the name of the host's WireGuard interface in HostNetNS
	// (created and keyed by the caller, overlay/wg). Required to ensure an
	// encrypted network; ignored otherwise. It must not start with the
	// prefix followed by "u" (the driver's uplinks).
	WireGuardIf string
	// Logger receives debug and info records; nil discards them.
	Logger *slog.Logger
}

// Network is an overlay network as one host sees it.
type Network struct {
	// ID names the sandbox file: 1-128 characters of [A-Za-z0-9_.-], not
	// starting with '.' or '-'.
	ID string
	// VNI is the 24-bit VXLAN network identifier, 1 to 2^24-1.
	VNI uint32
	// Subnet is the IPv4 subnet; host bits are ignored.
	Subnet netip.Prefix
	// Gateway is set on the sandbox bridge; it must be inside Subnet.
	Gateway netip.Addr
	// MTU of the bridge, the vxlan device or uplink, and every veth end; 0
	// means DefaultMTU, or EncryptedDefaultMTU for an encrypted network.
	// Lower it where the underlay path has extra overhead; an encrypted
	// network's MTU should not exceed the WireGuard interface's.
	MTU int
	// Internal marks a network without egress. It changes nothing here: the
	// overlay never carries egress traffic, containers reach the outside
	// through the node-local bridge, which the agent leaves out for a
	// container attached to internal networks only.
	Internal bool
	// Encrypted networks carry no VXLAN: their traffic between hosts is
	// routed over Config.WireGuardIf. Their subnets must not overlap each
	// other's or the host's own (see the package doc).
	Encrypted bool
}

// Endpoint is a container's attachment to an overlay network.
type Endpoint struct {
	// ID identifies the attachment (e.g. the task's); same syntax as
	// Network.ID. It is stored as the sandbox-side veth's alias.
	ID string
	// Addr is the container's address; it must lie inside the network's
	// subnet, whose prefix length the interface gets.
	Addr netip.Prefix
	// MAC is the container interface's unicast address.
	MAC net.HardwareAddr
}

// Remote is an endpoint of the network on another host.
//
// On an encrypted network only Addr matters: the remote is reached by routing
// over WireGuard, and MAC and VTEP may be zero.
type Remote struct {
	Addr netip.Addr       // the remote container's overlay address
	MAC  net.HardwareAddr // its interface's MAC
	VTEP netip.Addr       // the underlay address of its host
}

// Driver is the overlay data plane of one host. Its methods are safe for
// concurrent use; they are serialised. It keeps no state of its own beyond its
// Config: everything is read back from the kernel, so a new Driver with the
// same Config continues where a previous process stopped.
type Driver struct {
	cfg    Config // defaults applied
	hostNS string // path opened for every host-side operation
	log    *slog.Logger

	// mu serialises every operation on the kernel objects, so a read, diff
	// and write of one network is never interleaved with another's.
	mu sync.Mutex
}

// New validates cfg and applies defaults. It does not touch the kernel.
func New(cfg Config) (*Driver, error) {
	if cfg.NetNSDir == "" {
		cfg.NetNSDir = DefaultNetNSDir
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := validatePrefix(cfg.Prefix); err != nil {
		return nil, err
	}
	if !cfg.VTEP.IsValid() || cfg.VTEP.IsUnspecified() {
		return nil, fmt.Errorf("%w: VTEP address is required", ErrInvalidConfig)
	}
	cfg.VTEP = cfg.VTEP.Unmap()
	if cfg.Port < 1 || cfg.Port > 65535 {
		return nil, fmt.Errorf("%w: port %d", ErrInvalidConfig, cfg.Port)
	}
	if cfg.WireGuardIf != "" && (!validIfName(cfg.WireGuardIf) || strings.HasPrefix(cfg.WireGuardIf, cfg.Prefix+uplinkMark)) {
		return nil, fmt.Errorf("%w: WireGuard interface name %q (1-%d bytes, not starting with %q)",
			ErrInvalidConfig, cfg.WireGuardIf, maxIfNameLen, cfg.Prefix+uplinkMark)
	}
	d := &Driver{cfg: cfg, hostNS: cfg.HostNetNS, log: cfg.Logger.With("vxlan", cfg.Prefix)}
	if d.hostNS == "" {
		d.hostNS = DefaultHostNetNS
	}
	return d, nil
}

func validatePrefix(p string) error {
	ok := len(p) >= 1 && len(p) <= MaxPrefixLen && p[0] >= 'a' && p[0] <= 'z'
	for _, c := range []byte(p) {
		ok = ok && (c >= 'a' && c <= 'z' || c >= '0' && c <= '9')
	}
	if !ok {
		return fmt.Errorf("%w: prefix %q must be 1-%d characters of [a-z0-9], starting with a letter",
			ErrInvalidConfig, p, MaxPrefixLen)
	}
	return nil
}

// validID accepts ids that are safe as file names.
func validID(s string) bool {
	if s == "" || len(s) > maxIDLen || s[0] == '.' || s[0] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}

// normalize validates n and applies the defaults (MTU, masked subnet).
func (d *Driver) normalize(n Network) (Network, error) {
	bad := func(format string, args ...any) (Network, error) {
		return Network{}, fmt.Errorf("%w %q: %s", ErrInvalidNetwork, n.ID, fmt.Sprintf(format, args...))
	}
	if !validID(n.ID) {
		return bad("id must be 1-%d characters of [A-Za-z0-9_.-], not starting with '.' or '-'", maxIDLen)
	}
	if n.VNI < 1 || n.VNI > maxVNI {
		return bad("VNI %d outside 1-%d", n.VNI, maxVNI)
	}
	if !n.Subnet.IsValid() || !n.Subnet.Addr().Is4() || n.Subnet.Bits() > 30 {
		return bad("subnet %s must be IPv4 with room for a gateway and an endpoint (at most /30)", n.Subnet)
	}
	n.Subnet = n.Subnet.Masked()
	n.Gateway = n.Gateway.Unmap()
	if !n.Subnet.Contains(n.Gateway) || n.Gateway == n.Subnet.Addr() {
		return bad("gateway %s is not a host address of %s", n.Gateway, n.Subnet)
	}
	if n.MTU == 0 {
		n.MTU = DefaultMTU
		if n.Encrypted {
			n.MTU = EncryptedDefaultMTU
		}
	}
	if n.MTU < minMTU || n.MTU > maxMTU {
		return bad("MTU %d outside %d-%d", n.MTU, minMTU, maxMTU)
	}
	if n.Encrypted {
		if d.cfg.WireGuardIf == "" {
			return bad("encrypted, and the driver has no WireGuard interface (Config.WireGuardIf)")
		}
		if n.Subnet.Contains(uplinkNextHop) {
			return bad("encrypted subnet %s holds %s, the next hop the driver uses on uplinks", n.Subnet, uplinkNextHop)
		}
	}
	return n, nil
}

// isNotFound reports whether a netlink error means "does not exist", which
// idempotent operations treat as done.
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)
}

// macFor derives a stable, locally administered unicast MAC from an IPv4
// address (02:53 then the four address bytes, 0x53 being "S"), as the
// node-local bridge does: the sandbox bridge keeps its MAC across restarts
// and repairs instead of taking its lowest port's.
func macFor(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x53, b[0], b[1], b[2], b[3]}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// setOnlyAddr makes want the only IPv4 address of link, which Shoal owns.
func setOnlyAddr(h *netlink.Handle, link netlink.Link, want netip.Prefix) error {
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	found := false
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p == want {
			found = true
			continue
		}
		if err := h.AddrDel(link, &a); err != nil && !isNotFound(err) {
			return fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, link.Attrs().Name, err)
		}
	}
	if found {
		return nil
	}
	if err := h.AddrReplace(link, &netlink.Addr{IPNet: ipNet(want)}); err != nil {
		return fmt.Errorf("add address %s to %s: %w", want, link.Attrs().Name, err)
	}
	return nil
}
