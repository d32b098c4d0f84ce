package bridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

const (
	// DefaultName is the bridge name when Config.Name is empty. It sits beside
	// Docker's "docker0" without colliding with it.
	DefaultName = "shoal0"

	// DefaultMTU is the plain Ethernet MTU: the bridge only carries local
	// traffic and masqueraded traffic leaving through the host's own uplink,
	// with no encapsulation overhead to subtract.
	DefaultMTU = 1500

	// defaultSubnet is private (RFC 1918) and chosen to avoid the ranges other
	// tools take by default: Docker's bridge (172.17.0.0/16) and its address
	// pools (172.17-172.28 by default), Shoal's overlay pool (10.10.0.0/16) and
	// common LAN ranges (192.168.0.0/16). A /16 leaves room for 65,533
	// containers per host, far more than a host can run.
	defaultSubnet = "172.29.0.0/16"

	// maxSubnetBits keeps at least two usable addresses: the gateway and one
	// container (a /30 has network, gateway, one host and broadcast).
	maxSubnetBits = 30

	// minMTU is the IPv4 minimum (RFC 791); maxMTU the largest a bridge takes.
	minMTU = 68
	maxMTU = 65535

	// tablePrefix names the nftables table owned by a driver: one table per
	// bridge so two bridges (or two daemons in two netns) never share rules.
	tablePrefix = "shoal-bridge-"
)

// Package errors, checked with errors.Is.
var (
	// ErrInvalidConfig is returned by New for a Config it cannot use.
	ErrInvalidConfig = errors.New("invalid bridge config")
	// ErrInvalidID is returned for an endpoint id that is empty or not a safe
	// file name (ids name files under StateDir).
	ErrInvalidID = errors.New("invalid endpoint id")
	// ErrSubnetFull is returned by Attach when every address is allocated.
	ErrSubnetFull = errors.New("no free address in subnet")
	// ErrSubnetChanged is returned by New when StateDir holds allocations from
	// a different subnet: those endpoints must be detached with the old config.
	ErrSubnetChanged = errors.New("state dir holds allocations from another subnet")
	// ErrNotSetUp is returned by Attach when the bridge does not exist yet:
	// call Setup first.
	ErrNotSetUp = errors.New("bridge is not set up")
	// ErrNotBridge is returned by Setup when a link with the bridge's name
	// exists but is not a bridge; Shoal never deletes a link it did not make.
	ErrNotBridge = errors.New("link exists but is not a bridge")
	// ErrEndpointsAttached is returned by Teardown while endpoints remain.
	ErrEndpointsAttached = errors.New("endpoints still attached")
	// ErrUnknownEndpoint is returned by Lookup for an id with no address.
	ErrUnknownEndpoint = errors.New("no such endpoint")
)

// Config configures a Driver. Zero values take the documented defaults.
type Config struct {
	// Name is the bridge link name, at most 15 bytes; default DefaultName.
	Name string
	// Subnet is the IPv4 subnet of the bridge, default 172.29.0.0/16. Host
	// bits are ignored. The gateway is the first address, set on the bridge.
	Subnet netip.Prefix
	// MTU of the bridge and of both ends of every veth; default DefaultMTU.
	MTU int
	// StateDir (required, typically <run-dir>/bridge) holds the named netns
	// files (StateDir/netns/<id>) and the address allocations, so a restarted
	// daemon knows what exists.
	StateDir string
	// HostNetNS is the path of the network namespace the bridge lives in; ""
	// means the namespace the process started in (DefaultHostNetNS).
	HostNetNS string
	// Logger receives debug and info records; nil discards them.
	Logger *slog.Logger
}

// Driver owns one bridge, its nftables table and its endpoints.
type Driver struct {
	cfg       Config // defaults applied, Subnet masked
	gateway   netip.Addr
	hostNS    string // path opened for every host-side operation
	statePath string
	netnsDir  string
	log       *slog.Logger
	ports     *PortTable

	// mu serialises every operation on the kernel objects and the state file,
	// so a read-modify-write of the allocations is never interleaved. Lock
	// order: mu before PortTable.mu (Teardown clears the port table).
	mu sync.Mutex
}

// DefaultHostNetNS names the process's own network namespace as the calling
// thread sees it (netnsutil.ProcessNetNS). Not /proc/self/ns/net: that is the
// main thread's, and a goroutine locked to the main thread may be inside a
// container or sandbox namespace at that moment, so the bridge would be
// looked for, or made, in the wrong place. The driver opens this path only
// from threads that have not entered another namespace.
const DefaultHostNetNS = netnsutil.ProcessNetNS

// New validates cfg, applies defaults and prepares StateDir. It does not touch
// the kernel: call Setup to create the bridge.
func New(cfg Config) (*Driver, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = netip.MustParsePrefix(defaultSubnet)
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := validateConfig(cfg); err != nil {
		return nil, err
	}
	cfg.Subnet = cfg.Subnet.Masked()
	d := &Driver{
		cfg:       cfg,
		gateway:   cfg.Subnet.Addr().Next(),
		hostNS:    cfg.HostNetNS,
		statePath: filepath.Join(cfg.StateDir, stateFile),
		netnsDir:  filepath.Join(cfg.StateDir, "netns"),
		log:       cfg.Logger.With("bridge", cfg.Name),
	}
	if d.hostNS == "" {
		d.hostNS = DefaultHostNetNS
	}
	d.ports = newPortTable(cfg, d.hostNS, d.log)
	if err := os.MkdirAll(d.netnsDir, 0o700); err != nil {
		return nil, fmt.Errorf("create bridge state dir %s: %w", d.netnsDir, err)
	}
	st, err := loadState(d.statePath)
	if err != nil {
		return nil, err
	}
	if st.Subnet != "" && st.Subnet != cfg.Subnet.String() && len(st.Endpoints) > 0 {
		return nil, fmt.Errorf("open bridge state %s: %w: %s, configured %s",
			d.statePath, ErrSubnetChanged, st.Subnet, cfg.Subnet)
	}
	return d, nil
}

func validateConfig(cfg Config) error {
	if len(cfg.Name) > 15 || !validName(cfg.Name) {
		return fmt.Errorf("%w: bridge name %q must be 1-15 characters of [A-Za-z0-9_.-]", ErrInvalidConfig, cfg.Name)
	}
	if !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > maxSubnetBits {
		return fmt.Errorf("%w: subnet %s must be IPv4 with a prefix of at most /%d", ErrInvalidConfig, cfg.Subnet, maxSubnetBits)
	}
	if cfg.MTU < minMTU || cfg.MTU > maxMTU {
		return fmt.Errorf("%w: MTU %d outside %d-%d", ErrInvalidConfig, cfg.MTU, minMTU, maxMTU)
	}
	if cfg.StateDir == "" {
		return fmt.Errorf("%w: StateDir is required", ErrInvalidConfig)
	}
	return nil
}

// validName accepts names safe both as link names and as file names.
func validName(s string) bool {
	if s == "" || s[0] == '.' || s[0] == '-' {
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

// Gateway returns the bridge's address, the containers' default gateway.
func (d *Driver) Gateway() netip.Addr { return d.gateway }

// Subnet returns the (masked) subnet the driver allocates from.
func (d *Driver) Subnet() netip.Prefix { return d.cfg.Subnet }

// Setup creates or repairs the bridge (up, gateway address, MTU, a fixed MAC
// derived from the gateway address so it does not follow its ports), enables
// net.ipv4.ip_forward in the host namespace and route_localnet on the bridge,
// and rewrites the nftables table "shoal-bridge-<Name>" in one transaction.
// It is idempotent and safe after a daemon restart; attached endpoints keep
// working throughout.
//
// route_localnet lets the host's own connections to 127.0.0.1 reach a
// published port (see PortTable): without it the kernel refuses to route a
// packet with a loopback source out of the bridge. It would also let a
// container reach the host's loopback-only services through the bridge,
// so the bridge table drops every packet arriving on the bridge with a
// loopback source or destination (as Docker does for docker0).
func (d *Driver) Setup(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("set up bridge %s: %w", d.cfg.Name, err)
	}
	h, ns, err := d.hostHandle()
	if err != nil {
		return err
	}
	defer ns.Close()
	defer h.Close()
	if _, err := d.ensureBridge(h); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("set up bridge %s: %w", d.cfg.Name, err)
	}
	if err := enableIPForward(d.hostNS); err != nil {
		return err
	}
	// The guard goes in before the sysctl that needs it.
	if err := d.applyTable(ns); err != nil {
		return err
	}
	if err := enableRouteLocalnet(d.hostNS, d.cfg.Name); err != nil {
		return err
	}
	d.log.Debug("bridge set up", "subnet", d.cfg.Subnet, "gateway", d.gateway)
	return nil
}

// Teardown removes the bridge, its nftables table and its port table.
// Endpoints must be detached first (ErrEndpointsAttached otherwise).
// net.ipv4.ip_forward is left as it is: other software in the namespace may
// rely on it. Idempotent.
func (d *Driver) Teardown(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("tear down bridge %s: %w", d.cfg.Name, err)
	}
	ids, err := d.endpointsLocked()
	if err != nil {
		return err
	}
	if len(ids) > 0 {
		return fmt.Errorf("tear down bridge %s: %w: %v", d.cfg.Name, ErrEndpointsAttached, ids)
	}
	h, ns, err := d.hostHandle()
	if err != nil {
		return err
	}
	defer ns.Close()
	defer h.Close()
	if err := d.deleteTable(ns); err != nil {
		return err
	}
	if err := d.ports.Apply(ctx, nil); err != nil {
		return err
	}
	link, err := h.LinkByName(d.cfg.Name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("tear down bridge %s: look up link: %w", d.cfg.Name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return fmt.Errorf("tear down bridge %s: %w (type %s)", d.cfg.Name, ErrNotBridge, link.Type())
	}
	if err := h.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("tear down bridge %s: delete link: %w", d.cfg.Name, err)
	}
	d.log.Debug("bridge torn down")
	return nil
}

// hostHandle opens the host namespace and a netlink handle bound to it. The
// caller closes both.
func (d *Driver) hostHandle() (*netlink.Handle, netns.NsHandle, error) {
	ns, err := netns.GetFromPath(d.hostNS)
	if err != nil {
		return nil, netns.None(), fmt.Errorf("open host netns %s: %w", d.hostNS, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, netns.None(), fmt.Errorf("open netlink in host netns %s: %w", d.hostNS, err)
	}
	return h, ns, nil
}

// ensureBridge creates the bridge or brings an existing one to the desired
// state, and returns it.
func (d *Driver) ensureBridge(h *netlink.Handle) (netlink.Link, error) {
	name := d.cfg.Name
	mac := macFor(d.gateway)
	link, err := h.LinkByName(name)
	switch {
	case isNotFound(err):
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.MTU = d.cfg.MTU
		attrs.HardwareAddr = mac
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("look up new bridge %s: %w", name, err)
		}
		d.log.Info("created bridge", "mac", mac, "mtu", d.cfg.MTU)
	case err != nil:
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("set up bridge %s: %w (type %s)", name, ErrNotBridge, link.Type())
	}
	attrs := link.Attrs()
	if attrs.MTU != d.cfg.MTU {
		if err := h.LinkSetMTU(link, d.cfg.MTU); err != nil {
			return nil, fmt.Errorf("set bridge %s MTU %d: %w", name, d.cfg.MTU, err)
		}
	}
	if attrs.HardwareAddr.String() != mac.String() {
		if err := h.LinkSetHardwareAddr(link, mac); err != nil {
			return nil, fmt.Errorf("set bridge %s MAC %s: %w", name, mac, err)
		}
	}
	if err := setOnlyAddr(h, link, netip.PrefixFrom(d.gateway, d.cfg.Subnet.Bits())); err != nil {
		return nil, fmt.Errorf("set bridge %s gateway address: %w", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("bring bridge %s up: %w", name, err)
	}
	return link, nil
}

// setOnlyAddr makes want the only IPv4 address of link: stale addresses (a
// subnet changed while nothing was attached) would otherwise keep routes to
// the old subnet on a link Shoal owns.
func setOnlyAddr(h *netlink.Handle, link netlink.Link, want netip.Prefix) error {
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	found := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if ok && p == want {
			found = true
			continue
		}
		if err := h.AddrDel(link, &a); err != nil && !isNotFound(err) {
			return fmt.Errorf("remove stale address %s: %w", a.IPNet, err)
		}
	}
	if found {
		return nil
	}
	addr := &netlink.Addr{IPNet: ipNet(want)}
	if err := h.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("add address %s: %w", want, err)
	}
	return nil
}

// macFor derives a stable, locally administered unicast MAC from an IPv4
// address (02:53 then the four address bytes, 0x53 being "S"), so a bridge or
// an endpoint keeps its MAC across restarts and repairs and neighbours' ARP
// caches stay valid.
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

// isNotFound reports whether a netlink or filesystem error means "does not
// exist", which idempotent operations treat as already done.
func isNotFound(err error) bool {
	if err == nil {
		return false
	}
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, os.ErrNotExist)
}
