package vxlan

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/shoal-project/shoal/overlay/netnsutil"
	"github.com/shoal-project/shoal/overlay/netnsutil/netnstest"
	"github.com/shoal-project/shoal/overlay/wg"
)

// Helpers for encrypted networks: a WireGuard device per simulated host,
// and ways to look at the routes and nftables counters they produce.

// wgHost is a test host's WireGuard interface.
type wgHost struct {
	name string       // <run>w<i>, unique on the machine
	addr netip.Prefix // 10.99.0.<i>/24
	key  wgtypes.Key
	dev  *wg.Device
}

// addWireGuard opens a WireGuard device (wireguard-go without the kernel
// module) in each host's netns, closed at cleanup, and gives each host a
// Driver with Config.WireGuardIf set to it.
func (w *world) addWireGuard(tb testing.TB) {
	tb.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skip("needs /dev/net/tun for WireGuard: ", err)
	}
	for i, h := range w.hosts {
		key, err := wg.GenerateKey()
		if err != nil {
			tb.Fatal(err)
		}
		h.wg = &wgHost{
			name: fmt.Sprintf("%sw%d", w.run, i+1),
			addr: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, 0, byte(i + 1)}), 24),
			key:  key,
		}
		dev, err := wg.Open(context.Background(), wg.Config{
			Name: h.wg.name, PrivateKey: key, Address: h.wg.addr, NetNS: h.ns,
		})
		if err != nil {
			tb.Fatalf("open WireGuard on host %d: %v", i+1, err)
		}
		// Registered after the host netns, so it runs before its deletion.
		tb.Cleanup(func() {
			if err := dev.Close(); err != nil {
				tb.Errorf("close WireGuard on host %d: %v", i+1, err)
			}
		})
		h.wg.dev = dev
		h.cfg.WireGuardIf = h.wg.name
		h.d = mustNew(tb, h.cfg)
	}
}

// setPeers makes every host a WireGuard peer of every other, with the
// other's WireGuard address and routed(other) as AllowedIPs, as the agent
// does with the /32s of the other host's tasks on encrypted networks.
func (w *world) setPeers(tb testing.TB, routed func(*testHost) []netip.Addr) {
	tb.Helper()
	for _, h := range w.hosts {
		var peers []wg.Peer
		for _, o := range w.hosts {
			if o == h {
				continue
			}
			allowed := []netip.Prefix{netip.PrefixFrom(o.wg.addr.Addr(), 32)}
			for _, a := range routed(o) {
				allowed = append(allowed, netip.PrefixFrom(a, 32))
			}
			peers = append(peers, wg.Peer{
				PublicKey:  o.wg.key.PublicKey(),
				Endpoint:   netip.AddrPortFrom(o.vtep, wg.DefaultListenPort),
				AllowedIPs: allowed,
			})
		}
		if err := h.wg.dev.SetPeers(context.Background(), peers); err != nil {
			tb.Fatalf("SetPeers on %s: %v", h.wg.name, err)
		}
	}
	w.waitHandshakes(tb)
}

// handshakeTimeout bounds the wait for WireGuard sessions. Both ends of a
// new peer send a keepalive at once (PersistentKeepalive), so both initiate
// a handshake; when the two cross, each side drops the answer to its own and
// retries after WireGuard's REKEY_TIMEOUT (5 s). A test's first connection
// would time out waiting for that retry, so setPeers waits for the sessions
// instead: up to three rounds. Not a speed bound.
const handshakeTimeout = 20 * time.Second

// waitHandshakes waits until every host has a session with every other.
func (w *world) waitHandshakes(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(handshakeTimeout)
	for _, h := range w.hosts {
		for {
			peers, err := h.wg.dev.Peers(context.Background())
			if err != nil {
				tb.Fatal(err)
			}
			if !slices.ContainsFunc(peers, func(p wg.PeerStatus) bool { return p.LastHandshake.IsZero() }) {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("%s: no WireGuard session with every peer after %s: %+v", h.wg.name, handshakeTimeout, peers)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// rxBytes returns what h's WireGuard interface received from other.
func (h *testHost) rxBytes(tb testing.TB, other *testHost) int64 {
	tb.Helper()
	peers, err := h.wg.dev.Peers(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	for _, p := range peers {
		if p.PublicKey == other.wg.key.PublicKey() {
			return p.RxBytes
		}
	}
	tb.Fatalf("%s has no peer %s", h.wg.name, other.wg.name)
	return 0
}

func encNetwork(id string, vni uint32, subnet string) Network {
	n := network(id, vni, subnet)
	n.Encrypted = true
	return n
}

func addrs(eps ...Endpoint) []netip.Addr {
	var out []netip.Addr
	for _, ep := range eps {
		out = append(out, ep.Addr.Addr())
	}
	return out
}

func remotesOf(eps ...Endpoint) []Remote {
	var out []Remote
	for _, a := range addrs(eps...) {
		out = append(out, Remote{Addr: a})
	}
	return out
}

// routedState is what SetRemotes programs for an encrypted network: the /32
// routes of the driver's on the WireGuard interface inside the subnet, and
// the /32 routes out of the sandbox's uplink, as sorted addresses.
type routedState struct {
	host, sandbox []netip.Addr
}

func readRoutedState(tb testing.TB, h *testHost, n Network) routedState {
	tb.Helper()
	hh := netnstest.Handle(tb, h.ns)
	rs, err := hh.RouteList(mustLink(tb, hh, h.wg.name), netlink.FAMILY_V4)
	if err != nil {
		tb.Fatal(err)
	}
	var st routedState
	for _, r := range rs {
		if p, ok := prefixOf(r.Dst); ok && p.Bits() == 32 && n.Subnet.Contains(p.Addr()) && r.Protocol == routeProtocol {
			st.host = append(st.host, p.Addr())
		}
	}
	sb := netnstest.Handle(tb, h.d.SandboxPath(n.ID))
	rs, err = sb.RouteList(mustLink(tb, sb, h.d.uplinkSandboxName()), netlink.FAMILY_V4)
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range rs {
		if p, ok := prefixOf(r.Dst); ok && p.Bits() == 32 {
			st.sandbox = append(st.sandbox, p.Addr())
		}
	}
	slices.SortFunc(st.host, netip.Addr.Compare)
	slices.SortFunc(st.sandbox, netip.Addr.Compare)
	return st
}

// checkRouted compares what SetRemotes programmed with want.
func checkRouted(t *testing.T, h *testHost, n Network, want ...netip.Addr) {
	t.Helper()
	want = slices.Clone(want)
	slices.SortFunc(want, netip.Addr.Compare)
	st := readRoutedState(t, h, n)
	if !slices.Equal(st.host, want) || !slices.Equal(st.sandbox, want) {
		t.Errorf("routes of %s: host %v, sandbox %v, want %v", n.ID, st.host, st.sandbox, want)
	}
}

// allRoutes lists every IPv4 route of every table in the netns at path, as
// `ip route show table all` would, for before/after comparisons.
func allRoutes(tb testing.TB, path string) []string {
	tb.Helper()
	rs, err := netnstest.Handle(tb, path).RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		tb.Fatal(err)
	}
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%s table %d dev %d gw %s proto %d flags %d", r.Dst, r.Table, r.LinkIndex, r.Gw, r.Protocol, r.Flags))
	}
	slices.Sort(out)
	return out
}

// routeWatch records the route changes in some namespaces.
type routeWatch struct {
	mu     sync.Mutex // guards events
	events []string
	done   chan struct{}
	wg     sync.WaitGroup
}

// watchRoutes starts recording IPv4 route changes in the netns at each path
// until cleanup.
func watchRoutes(tb testing.TB, paths ...string) *routeWatch {
	tb.Helper()
	w := &routeWatch{done: make(chan struct{})}
	for _, path := range paths {
		ns, err := netns.GetFromPath(path)
		if err != nil {
			tb.Fatal(err)
		}
		ch := make(chan netlink.RouteUpdate, 64)
		err = netlink.RouteSubscribeAt(ns, ch, w.done)
		ns.Close()
		if err != nil {
			tb.Fatalf("watch routes in %s: %v", path, err)
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for u := range ch {
				if u.Family != netlink.FAMILY_V4 {
					continue // IPv6 link-local routes come and go on their own
				}
				w.mu.Lock()
				w.events = append(w.events, fmt.Sprintf("%s: type %d %s dev %d", path, u.Type, u.Dst, u.LinkIndex))
				w.mu.Unlock()
			}
		}()
	}
	tb.Cleanup(func() {
		close(w.done)
		w.wg.Wait()
	})
	return w
}

// waitFor waits until an event mentioning s has been recorded.
func (w *routeWatch) waitFor(tb testing.TB, s string) {
	tb.Helper()
	deadline := time.Now().Add(ioTimeout)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		found := slices.ContainsFunc(w.events, func(e string) bool { return bytes.Contains([]byte(e), []byte(s)) })
		w.mu.Unlock()
		if found {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.Fatalf("no route event for %s", s)
}

func (w *routeWatch) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.events
	w.events = nil
	return out
}

// ruleCounters maps the comments of the rules of table (family inet) in the
// netns at path to their counters' packet counts.
func ruleCounters(tb testing.TB, path, table string) map[string]uint64 {
	tb.Helper()
	c := nftablesIn(tb, path)
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	out := make(map[string]uint64)
	for _, chain := range []string{chainForward, chainInput} {
		rules, err := c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil {
			tb.Fatalf("rules of %s %s: %v", table, chain, err)
		}
		for _, r := range rules {
			s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			for _, e := range r.Exprs {
				if cnt, ok := e.(*expr.Counter); ok {
					out[chain+": "+s] = cnt.Packets
				}
			}
		}
	}
	return out
}

// tableComments lists the rules of the driver's isolation table in host h
// as routedRules names them; nil if the table does not exist.
func tableComments(tb testing.TB, h *testHost) []string {
	tb.Helper()
	c := nftablesIn(tb, h.ns)
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		tb.Fatal(err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == h.d.WireGuardTableName() }) {
		return nil
	}
	return readComments(c, &nftables.Table{Name: h.d.WireGuardTableName(), Family: nftables.TableFamilyINet})
}

// ruleHandles returns the handles of the isolation table's rules, which
// change whenever the table is rewritten.
func ruleHandles(tb testing.TB, h *testHost) []uint64 {
	tb.Helper()
	c := nftablesIn(tb, h.ns)
	t := &nftables.Table{Name: h.d.WireGuardTableName(), Family: nftables.TableFamilyINet}
	var out []uint64
	for _, chain := range []string{chainForward, chainInput} {
		rules, err := c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil {
			tb.Fatal(err)
		}
		for _, r := range rules {
			out = append(out, r.Handle)
		}
	}
	return out
}

// probeTable installs a table of the test's in the netns at path that
// counts UDP packets delivered to port (input), and returns a function
// reading the count. Deleted at cleanup.
func probeTable(tb testing.TB, path, name string, ports ...uint16) func(port uint16) uint64 {
	tb.Helper()
	c := nftablesIn(tb, path)
	t := c.AddTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFirst, Policy: &accept,
	})
	for _, port := range ports {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: udpDportOffset, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
			&expr.Counter{},
		}, UserData: userdata.AppendString(nil, userdata.TypeComment, fmt.Sprint(port))})
	}
	if err := c.Flush(); err != nil {
		tb.Fatalf("probe table: %v", err)
	}
	tb.Cleanup(func() {
		c := nftablesIn(tb, path)
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			tb.Errorf("delete probe table: %v", err)
		}
	})
	return func(port uint16) uint64 {
		c := nftablesIn(tb, path)
		rules, err := c.GetRules(t, ch)
		if err != nil {
			tb.Fatal(err)
		}
		for _, r := range rules {
			if s, _ := userdata.GetString(r.UserData, userdata.TypeComment); s == fmt.Sprint(port) {
				for _, e := range r.Exprs {
					if cnt, ok := e.(*expr.Counter); ok {
						return cnt.Packets
					}
				}
			}
		}
		tb.Fatalf("no probe counter for port %d", port)
		return 0
	}
}

// capture counts the frames on one link of a netns, read from an AF_PACKET
// socket, that contain a marker.
type capture struct {
	fd     int
	marker []byte
	done   chan struct{}
	wg     sync.WaitGroup

	mu     sync.Mutex // guards following
	frames int
	marked int
}

func startCapture(tb testing.TB, path, link string, marker []byte) *capture {
	tb.Helper()
	c := &capture{fd: -1, marker: marker, done: make(chan struct{})}
	proto := uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8 // network order
	err := netnsutil.InNetNS(path, func() error {
		ifi, err := net.InterfaceByName(link)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		c.fd = fd
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		tb.Fatalf("capture on %s in %s: %v", link, path, err)
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		buf := make([]byte, 1<<16)
		for {
			n, _, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				// Nothing queued for 100 ms: stop if asked. Frames still
				// queued when stop is called are read first.
				select {
				case <-c.done:
					return
				default:
				}
				continue
			}
			c.mu.Lock()
			c.frames++
			if bytes.Contains(buf[:n], c.marker) {
				c.marked++
			}
			c.mu.Unlock()
		}
	}()
	tb.Cleanup(c.stop)
	return c
}

func (c *capture) counts() (frames, marked int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames, c.marked
}

func (c *capture) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	close(c.done)
	c.wg.Wait()
	unix.Close(c.fd)
}

// dialSettled dials addr from the namespace at nsPath, retrying for up to
// handshakeTimeout: on a loaded machine a WireGuard session can still be
// re-keying when a test connects (a crossed handshake retries after 5 s).
// For connections that must succeed; checks that a path is closed use
// dialIn.
func dialSettled(nsPath, addr string) (net.Conn, error) {
	deadline := time.Now().Add(handshakeTimeout)
	for {
		c, err := dialIn(nsPath, addr, ioTimeout)
		if err == nil || time.Now().After(deadline) {
			return c, err
		}
	}
}
