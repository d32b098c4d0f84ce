package bridge

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
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

// ioTimeout bounds every dial and read so a broken data path fails the test
// instead of hanging it; it is not a speed assertion.
const ioTimeout = 5 * time.Second

// udpTimeout is how long a UDP probe waits for its answer. UDP has no
// refusal, so a probe of an unpublished port always waits this long; on a
// local veth an answer takes well under a millisecond.
const udpTimeout = time.Second

// testEnv is one test's private world: a host netns named with a prefix unique
// to the run, and a StateDir in the test's temp dir.
type testEnv struct {
	prefix string // "sht" + 6 hex chars
	hostNS string // path of the test's host netns
	cfg    Config

	mu  sync.Mutex // guards following
	ids []string   // every endpoint id used, for the leak check
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, links and nftables tables")
	}
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	requireRoot(t)
	e := &testEnv{prefix: netnstest.Prefix("sht", 3)}
	// Registered first, so it runs last: after every other cleanup.
	t.Cleanup(func() { e.checkNoRootLeak(t) })
	e.hostNS = netnstest.NewNamed(t, e.prefix+"-host")
	stateDir := t.TempDir()
	// After TempDir, so it runs before TempDir's removal, which would fail
	// on mounted netns files.
	netnstest.CleanupDir(t, filepath.Join(stateDir, "netns"))
	e.cfg = Config{Name: e.prefix, StateDir: stateDir, HostNetNS: e.hostNS}
	return e
}

func (e *testEnv) newDriver(t *testing.T) *Driver {
	t.Helper()
	d, err := New(e.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return d
}

func (e *testEnv) id(name string) string {
	id := e.prefix + "-" + name
	e.mu.Lock()
	e.ids = append(e.ids, id)
	e.mu.Unlock()
	return id
}

func (e *testEnv) setup(t *testing.T, d *Driver) {
	t.Helper()
	if err := d.Setup(context.Background()); err != nil {
		t.Fatalf("Setup: %v", err)
	}
}

func (e *testEnv) attach(t *testing.T, d *Driver, id string) Endpoint {
	t.Helper()
	ep, err := d.Attach(context.Background(), id)
	if err != nil {
		t.Fatalf("Attach %s: %v", id, err)
	}
	return ep
}

// checkNoRootLeak fails the test if the process's own (root) netns holds the
// test's bridge, one of its veths or its nftables table.
func (e *testEnv) checkNoRootLeak(t *testing.T) {
	root, err := netns.GetFromPath("/proc/self/ns/net")
	if err != nil {
		t.Errorf("open root netns: %v", err)
		return
	}
	defer root.Close()
	h, err := netlink.NewHandleAt(root)
	if err != nil {
		t.Errorf("netlink in root netns: %v", err)
		return
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Errorf("list root links: %v", err)
		return
	}
	leaked := map[string]bool{e.cfg.Name: true}
	for _, id := range e.ids {
		leaked[VethName(id)] = true
	}
	for _, l := range links {
		if n := l.Attrs().Name; leaked[n] || strings.HasPrefix(n, e.prefix) {
			t.Errorf("link %s leaked into the root netns", n)
		}
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(root)))
	if err != nil {
		t.Errorf("nftables in root netns: %v", err)
		return
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Errorf("list root nftables tables: %v", err)
		return
	}
	for _, tb := range tables {
		if strings.Contains(tb.Name, e.prefix) {
			t.Errorf("nftables table %s leaked into the root netns", tb.Name)
		}
	}
}

// newOutside makes an "outside" netns behind a veth uplink of the test's
// host netns, in TEST-NET-1 (RFC 5737) so it can never be a real
// destination. It returns the outside netns's path, the host's address on
// the uplink and the outside's address.
func (e *testEnv) newOutside(t *testing.T) (nsPath string, uplink, remote netip.Addr) {
	t.Helper()
	outside := netnstest.NewNamed(t, e.prefix+"-out")
	up, rem := netip.MustParsePrefix("192.0.2.1/30"), netip.MustParsePrefix("192.0.2.2/30")
	h, oh := netnstest.Handle(t, e.hostNS), netnstest.Handle(t, outside)
	ons, err := netns.GetFromPath(outside)
	if err != nil {
		t.Fatal(err)
	}
	defer ons.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = e.prefix + "u"
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: e.prefix + "o", PeerNamespace: netlink.NsFd(ons)}); err != nil {
		t.Fatalf("create uplink veth: %v", err)
	}
	for _, side := range []struct {
		h    *netlink.Handle
		name string
		addr netip.Prefix
	}{{h, e.prefix + "u", up}, {oh, e.prefix + "o", rem}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := side.h.AddrAdd(l, &netlink.Addr{IPNet: ipNet(side.addr)}); err != nil {
			t.Fatal(err)
		}
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return outside, up.Addr(), rem.Addr()
}

// serveRemoteAddr listens on TCP ip:0 inside the netns at nsPath and answers
// each connection with the peer IP it sees. It returns the listen address.
func serveRemoteAddr(t *testing.T, nsPath string, ip netip.Addr) string {
	t.Helper()
	var l net.Listener
	err := netnsutil.InNetNS(nsPath, func() error {
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", ip, nsPath, err)
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
			peer := c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.SetDeadline(time.Now().Add(ioTimeout))
			io.WriteString(c, peer)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	return l.Addr().String()
}

// peerSeenBy dials addr from inside the netns at nsPath and returns the peer
// address the server reported.
func peerSeenBy(nsPath, addr string) (string, error) {
	var got string
	err := netnsutil.InNetNS(nsPath, func() error {
		c, err := net.DialTimeout("tcp", addr, ioTimeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	if err == nil && got == "" {
		err = errors.New("empty answer")
	}
	return got, err
}

func readIPForward(t *testing.T, nsPath string) string {
	t.Helper()
	return netnstest.ReadSysctl(t, nsPath, "/proc/sys/net/ipv4/ip_forward")
}

// serveUDPRemoteAddr listens on UDP ip:0 inside the netns at nsPath and
// answers each datagram with the peer IP it sees and its own address,
// separated by a space. It returns the listen address.
func serveUDPRemoteAddr(t *testing.T, nsPath string, ip netip.Addr) string {
	t.Helper()
	var pc net.PacketConn
	err := netnsutil.InNetNS(nsPath, func() error {
		var err error
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(ip, 0).String())
		return err
	})
	if err != nil {
		t.Fatalf("listen on udp %s in %s: %v", ip, nsPath, err)
	}
	self := pc.LocalAddr().String()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			_, peer, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed
			}
			pc.WriteTo([]byte(peer.(*net.UDPAddr).IP.String()+" "+self), peer)
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		wg.Wait()
	})
	return self
}

// udpPeerSeenBy sends a datagram to addr from inside the netns at nsPath,
// from local port lport (0: any), and returns the peer address the server
// reported and the server's own address.
func udpPeerSeenBy(nsPath string, lport uint16, addr string) (peer, server string, err error) {
	err = netnsutil.InNetNS(nsPath, func() error {
		d := net.Dialer{LocalAddr: &net.UDPAddr{Port: int(lport)}}
		c, err := d.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(udpTimeout))
		if _, err := c.Write([]byte("?")); err != nil {
			return err
		}
		b := make([]byte, 64)
		n, err := c.Read(b)
		peer, server, _ = strings.Cut(string(b[:n]), " ")
		return err
	})
	return peer, server, err
}
