package vxlan

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/overlay/netnsutil"
	"github.com/shoal-project/shoal/overlay/netnsutil/netnstest"
)

// ioTimeout bounds every dial and read on a path that should work, so a
// broken data path fails the test instead of hanging it; not a speed bound.
const ioTimeout = 5 * time.Second

// closedTimeout is how long a probe of a path that should be closed waits
// before concluding it is; on local veths an answer takes well under 1 ms.
const closedTimeout = time.Second

// world is one test's private simulated cluster: an underlay netns holding a
// bridge, and host netns on it with addresses in TEST-NET-1 (RFC 5737), each
// with its own Driver. Every name starts with run, unique to the test.
type world struct {
	run string // "v" + 4 hex digits
	dir string // the drivers' NetNSDir
	ul  string // underlay netns path

	hosts []*testHost
}

type testHost struct {
	ns     string     // host netns path
	vtep   netip.Addr // its underlay address
	uplink string     // its underlay link, in ns
	cfg    Config
	d      *Driver
	wg     *wgHost // nil until world.addWireGuard
}

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates network namespaces, links and nftables tables")
	}
}

func newWorld(tb testing.TB, nHosts int) *world {
	tb.Helper()
	requireRoot(tb)
	w := &world{run: netnstest.Prefix("v", 2)}
	// Registered first, so it runs last: after every other cleanup.
	tb.Cleanup(func() { w.checkNoLeak(tb) })
	w.dir = tb.TempDir()
	// After TempDir, so it runs before TempDir's removal, which fails on
	// mounted netns files.
	netnstest.CleanupDir(tb, w.dir)
	w.ul = netnstest.NewNamed(tb, w.run+"-ul")
	ul := netnstest.Handle(tb, w.ul)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = w.run + "ul"
	if err := ul.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		tb.Fatalf("create underlay bridge: %v", err)
	}
	br := mustLink(tb, ul, attrs.Name)
	if err := ul.LinkSetUp(br); err != nil {
		tb.Fatal(err)
	}
	for i := 1; i <= nHosts; i++ {
		w.hosts = append(w.hosts, w.newHost(tb, i, ul, br))
	}
	return w
}

func (w *world) newHost(tb testing.TB, i int, ul *netlink.Handle, br netlink.Link) *testHost {
	tb.Helper()
	h := &testHost{
		ns:     netnstest.NewNamed(tb, fmt.Sprintf("%s-h%d", w.run, i)),
		vtep:   netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}),
		uplink: fmt.Sprintf("%sh%d", w.run, i),
	}
	hns, err := netns.GetFromPath(h.ns)
	if err != nil {
		tb.Fatal(err)
	}
	defer hns.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = fmt.Sprintf("%su%d", w.run, i)
	attrs.MasterIndex = br.Attrs().Index
	if err := ul.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: h.uplink, PeerNamespace: netlink.NsFd(hns)}); err != nil {
		tb.Fatalf("create underlay veth for host %d: %v", i, err)
	}
	if err := ul.LinkSetUp(mustLink(tb, ul, attrs.Name)); err != nil {
		tb.Fatal(err)
	}
	hh := netnstest.Handle(tb, h.ns)
	up := mustLink(tb, hh, h.uplink)
	if err := hh.AddrAdd(up, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(h.vtep, 24))}); err != nil {
		tb.Fatal(err)
	}
	for _, l := range []netlink.Link{up, mustLink(tb, hh, "lo")} {
		if err := hh.LinkSetUp(l); err != nil {
			tb.Fatal(err)
		}
	}
	h.cfg = Config{Prefix: fmt.Sprintf("%s%d", w.run, i), HostNetNS: h.ns, NetNSDir: w.dir, VTEP: h.vtep}
	h.d = mustNew(tb, h.cfg)
	return h
}

func mustNew(tb testing.TB, cfg Config) *Driver {
	tb.Helper()
	d, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	return d
}

func mustLink(tb testing.TB, h *netlink.Handle, name string) netlink.Link {
	tb.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		tb.Fatalf("look up %s: %v", name, err)
	}
	return l
}

// container makes a "container": a plain named netns with lo up.
func (w *world) container(tb testing.TB, name string) string {
	tb.Helper()
	path := netnstest.NewNamed(tb, w.run+"-c"+name)
	h := netnstest.Handle(tb, path)
	if err := h.LinkSetUp(mustLink(tb, h, "lo")); err != nil {
		tb.Fatal(err)
	}
	return path
}

// checkNoLeak fails the test if the root netns holds a link or nftables
// table of the run, or /run/netns a namespace of it.
func (w *world) checkNoLeak(tb testing.TB) {
	links, err := netlink.LinkList()
	if err != nil {
		tb.Errorf("list root links: %v", err)
	}
	for _, l := range links {
		if strings.Contains(l.Attrs().Name, w.run) {
			tb.Errorf("link %s leaked into the root netns", l.Attrs().Name)
		}
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), w.run) {
			tb.Errorf("netns %s leaked", e.Name())
		}
	}
	c, err := nftables.New()
	if err != nil {
		tb.Errorf("nftables in root netns: %v", err)
		return
	}
	tables, err := c.ListTables()
	if err != nil {
		tb.Errorf("list root nftables tables: %v", err)
	}
	for _, t := range tables {
		if strings.Contains(t.Name, w.run) {
			tb.Errorf("nftables table %s leaked into the root netns", t.Name)
		}
	}
}

// network returns a test network on 10.10.<third>.0/24, gateway .1.
func network(id string, vni uint32, subnet string) Network {
	p := netip.MustParsePrefix(subnet)
	return Network{ID: id, VNI: vni, Subnet: p, Gateway: p.Addr().Next()}
}

// endpoint returns an endpoint at addr (with the /24 of the test networks)
// and a MAC derived from it.
func endpoint(id, addr string) Endpoint {
	a := netip.MustParseAddr(addr)
	b := a.As4()
	return Endpoint{ID: id, Addr: netip.PrefixFrom(a, 24), MAC: net.HardwareAddr{0x02, 0xaa, b[0], b[1], b[2], b[3]}}
}

func remote(ep Endpoint, h *testHost) Remote {
	return Remote{Addr: ep.Addr.Addr(), MAC: ep.MAC, VTEP: h.vtep}
}

func (h *testHost) ensure(tb testing.TB, n Network) {
	tb.Helper()
	if err := h.d.EnsureNetwork(context.Background(), n); err != nil {
		tb.Fatalf("EnsureNetwork %s: %v", n.ID, err)
	}
}

func (h *testHost) attach(tb testing.TB, netID string, ep Endpoint, container string) {
	tb.Helper()
	if err := h.d.Attach(context.Background(), netID, ep, container, "eth1"); err != nil {
		tb.Fatalf("Attach %s: %v", ep.ID, err)
	}
}

func (h *testHost) setRemotes(tb testing.TB, netID string, rs ...Remote) {
	tb.Helper()
	if err := h.d.SetRemotes(context.Background(), netID, rs); err != nil {
		tb.Fatalf("SetRemotes %s: %v", netID, err)
	}
}

// serve runs fn on every connection accepted on TCP addr inside the netns at
// nsPath until cleanup. It returns the listen address.
func serve(tb testing.TB, nsPath string, addr netip.AddrPort, fn func(net.Conn)) string {
	tb.Helper()
	var l net.Listener
	err := netnsutil.InNetNS(nsPath, func() error {
		var err error
		l, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		tb.Fatalf("listen on %s in %s: %v", addr, nsPath, err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return // listener closed
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fn(c)
			}()
		}
	}()
	tb.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	return l.Addr().String()
}

// serveEcho echoes TCP on addr inside nsPath; each connection lives until
// the client closes it or it idles for ioTimeout.
func serveEcho(tb testing.TB, nsPath string, addr netip.AddrPort) string {
	return serve(tb, nsPath, addr, func(c net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			c.SetDeadline(time.Now().Add(ioTimeout))
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
}

// dialIn dials TCP addr from inside the netns at nsPath.
func dialIn(nsPath, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := netnsutil.InNetNS(nsPath, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

// roundTrip sends n random bytes on c and checks they come back.
func roundTrip(c net.Conn, n int) error {
	out := make([]byte, n)
	rand.Read(out)
	c.SetDeadline(time.Now().Add(ioTimeout))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(out)
		errc <- err
	}()
	in := make([]byte, n)
	_, rerr := io.ReadFull(c, in)
	if err := errors.Join(<-errc, rerr); err != nil {
		return err
	}
	if !bytes.Equal(in, out) {
		return errors.New("echoed bytes differ")
	}
	return nil
}

// tcpRoundTrip dials addr from nsPath, round-trips n bytes and closes.
func tcpRoundTrip(nsPath, addr string, n int) error {
	c, err := dialIn(nsPath, addr, ioTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return roundTrip(c, n)
}

// serveUDPEcho echoes UDP datagrams on addr inside nsPath until cleanup.
func serveUDPEcho(tb testing.TB, nsPath string, addr netip.AddrPort) string {
	tb.Helper()
	pc := listenUDP(tb, nsPath, addr)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, peer, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			pc.WriteTo(buf[:n], peer)
		}
	}()
	tb.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	return pc.LocalAddr().String()
}

// listenUDP opens a UDP socket on addr inside nsPath, closed at cleanup.
func listenUDP(tb testing.TB, nsPath string, addr netip.AddrPort) net.PacketConn {
	tb.Helper()
	var pc net.PacketConn
	err := netnsutil.InNetNS(nsPath, func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr.String())
		return err
	})
	if err != nil {
		tb.Fatalf("listen on udp %s in %s: %v", addr, nsPath, err)
	}
	tb.Cleanup(func() { pc.Close() })
	return pc
}

// udpRoundTrip sends a size-byte datagram to addr from nsPath and checks it
// comes back; UDP may lose a datagram, so it tries three times.
func udpRoundTrip(nsPath, addr string, size int) error {
	var c net.Conn
	err := netnsutil.InNetNS(nsPath, func() error {
		var err error
		c, err = net.Dial("udp", addr)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	out := make([]byte, size)
	rand.Read(out)
	in := make([]byte, size+1)
	for range 3 {
		if _, err = c.Write(out); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(closedTimeout))
		var n int
		n, err = c.Read(in)
		if err == nil {
			if n != size || !bytes.Equal(in[:n], out) {
				return fmt.Errorf("echo of %d bytes came back as %d different bytes", size, n)
			}
			return nil
		}
	}
	return err
}

// ap joins an address and a port.
func ap(addr netip.Prefix, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(addr.Addr(), port)
}

// checkReach checks, from container netns a, that the long-lived
// connection conn to b still carries data, that a new connection to echoB
// does, and that echoC is reachable exactly when reachC is.
func checkReach(t *testing.T, conn net.Conn, a, echoB, echoC string, reachC bool) {
	t.Helper()
	if err := roundTrip(conn, 8<<10); err != nil {
		t.Fatalf("existing connection to b: %v", err)
	}
	if err := tcpRoundTrip(a, echoB, 1<<10); err != nil {
		t.Fatalf("new connection to b: %v", err)
	}
	cc, err := dialIn(a, echoC, closedTimeout)
	if err == nil {
		err = roundTrip(cc, 1<<10)
		cc.Close()
	}
	if reachC && err != nil {
		t.Fatalf("c unreachable: %v", err)
	}
	if !reachC && err == nil {
		t.Fatal("c reachable")
	}
}
