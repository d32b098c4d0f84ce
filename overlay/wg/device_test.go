package wg

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestOpenRejectsInvalidConfig(t *testing.T) {
	key := testKey(1)
	good := Config{Name: "wgx", PrivateKey: key, Address: pfx("10.202.0.1/24")}
	tests := []struct {
		name string
		edit func(*Config)
	}{
		{"no name", func(c *Config) { c.Name = "" }},
		{"name too long", func(c *Config) { c.Name = "wg-name-too-long" }},
		{"no key", func(c *Config) { c.PrivateKey = wgtypes.Key{} }},
		{"bad port", func(c *Config) { c.ListenPort = 70000 }},
		{"bad MTU", func(c *Config) { c.MTU = 100 }},
		{"bad kind", func(c *Config) { c.Kind = "ebpf" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.edit(&cfg)
			if _, err := Open(context.Background(), cfg); !errors.Is(err, ErrInvalid) {
				t.Errorf("Open = %v, want ErrInvalid", err)
			}
		})
	}
}

// twoHosts opens a device on two hosts of a new lab (host 1 with Kind left
// to Open, so the kernel module where there is one) and peers them.
func twoHosts(t *testing.T) (*lab, *host, *host) {
	l := newLab(t)
	h1, h2 := l.addHost(1, 0), l.addHost(2, 0)
	cfg := h1.config(0)
	cfg.Kind = ""
	d1, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open (auto) on host 1: %v", err)
	}
	t.Cleanup(func() {
		if err := d1.Close(); err != nil {
			t.Errorf("Close on host 1: %v", err)
		}
	})
	h1.dev = d1
	t.Logf("host 1 opened %s WireGuard (kernel module present: %v)", d1.Kind(), d1.Kind() == KindKernel)
	h2.open(0)
	h1.setPeers(h2.peer())
	h2.setPeers(h1.peer())
	return l, h1, h2
}

// TestTunnelEncrypts: traffic between the hosts' WireGuard addresses flows,
// and what crosses the underlay never shows its payload; the same marker
// sent in clear over the underlay is seen, which proves the capture works.
func TestTunnelEncrypts(t *testing.T) {
	l, h1, h2 := twoHosts(t)
	if h2.dev.Kind() != KindUserspace || h2.dev.PublicKey() != h2.key.PublicKey() || h2.dev.ListenPort() != DefaultListenPort {
		t.Errorf("host 2 device: kind %s, port %d, key matches %v", h2.dev.Kind(), h2.dev.ListenPort(), h2.dev.PublicKey() == h2.key.PublicKey())
	}

	if _, err := exec.LookPath("busybox"); err == nil {
		out, err := exec.Command("ip", "netns", "exec", h1.ns, "busybox", "ping", "-c", "2", "-W", "2",
			h2.wgAddr.Addr().String()).CombinedOutput()
		if err != nil {
			t.Errorf("ping across the tunnel: %v: %s", err, out)
		}
	} else {
		t.Log("no busybox: ping skipped, TCP only")
	}

	marker := []byte("SHOAL-WG-MARKER-" + l.prefix + "-")
	capt := startCapture(t, h2.ns, h2.eth, marker)
	srv := netip.AddrPortFrom(h2.wgAddr.Addr(), 7000)
	listenIn(t, h2.ns, srv)
	c, err := dialIn(h1.ns, srv, ioTimeout)
	if err != nil {
		t.Fatalf("dial across the tunnel: %v", err)
	}
	defer c.Close()
	if err := roundTrip(c, bytes.Repeat(marker, 2000)); err != nil {
		t.Fatalf("TCP across the tunnel: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // let the capture drain its socket
	frames, wgFrames, marked := capt.counts()
	t.Logf("underlay capture after the tunnel: %d frames, %d to the WireGuard port, %d with the marker", frames, wgFrames, marked)
	if wgFrames == 0 {
		t.Fatalf("capture saw no WireGuard traffic: it is not looking at the underlay")
	}
	if marked != 0 {
		t.Fatalf("marker seen in %d underlay frames: traffic is not encrypted", marked)
	}

	// The control: the marker in clear over the underlay must be seen.
	if err := inNetNS(nsPath(h1.ns), func() error {
		u, err := net.Dial("udp", netip.AddrPortFrom(h2.underlay, 7001).String())
		if err != nil {
			return err
		}
		defer u.Close()
		_, err = u.Write(marker)
		return err
	}); err != nil {
		t.Fatalf("send cleartext marker: %v", err)
	}
	deadline := time.Now().Add(ioTimeout)
	for {
		if _, _, marked := capt.counts(); marked > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("cleartext marker never seen: the capture does not work")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSetPeersKeepsUnchangedSessions: changing one peer leaves the session
// of another, and a TCP connection through it, untouched; removing a peer
// stops traffic to it.
func TestSetPeersKeepsUnchangedSessions(t *testing.T) {
	l := newLab(t)
	h1, h2, h3 := l.addHost(1, 0), l.addHost(2, 0), l.addHost(3, 0)
	for _, h := range []*host{h1, h2, h3} {
		h.open(0)
	}
	h1.setPeers(h2.peer(), h3.peer())
	h2.setPeers(h1.peer(), h3.peer())
	h3.setPeers(h1.peer(), h2.peer())

	srv2 := netip.AddrPortFrom(h2.wgAddr.Addr(), 7000)
	srv3 := netip.AddrPortFrom(h3.wgAddr.Addr(), 7000)
	listenIn(t, h2.ns, srv2)
	listenIn(t, h3.ns, srv3)
	c, err := dialIn(h1.ns, srv2, ioTimeout)
	if err != nil {
		t.Fatalf("dial host 2: %v", err)
	}
	defer c.Close()
	if err := roundTrip(c, []byte("before")); err != nil {
		t.Fatalf("host 1 to 2: %v", err)
	}
	c3, err := dialIn(h1.ns, srv3, ioTimeout)
	if err != nil {
		t.Fatalf("dial host 3 while it is a peer: %v", err)
	}
	c3.Close()
	before := peerStatus(t, h1.dev, h2.key.PublicKey())
	if before.LastHandshake.IsZero() {
		t.Fatal("no handshake with host 2 after traffic")
	}

	// Change host 3 only: it gains a routed prefix.
	h1.setPeers(h2.peer(), h3.peer(pfx("10.230.0.0/24")))
	if err := roundTrip(c, []byte("after changing another peer")); err != nil {
		t.Fatalf("connection through the unchanged peer broke: %v", err)
	}
	after := peerStatus(t, h1.dev, h2.key.PublicKey())
	if !after.LastHandshake.Equal(before.LastHandshake) || after.RxBytes < before.RxBytes {
		t.Errorf("session with the unchanged peer was reset: handshake %v -> %v, rx %d -> %d",
			before.LastHandshake, after.LastHandshake, before.RxBytes, after.RxBytes)
	}
	got := peerStatus(t, h1.dev, h3.key.PublicKey())
	if len(got.AllowedIPs) != 2 {
		t.Errorf("host 3's allowed IPs = %v, want its /32 and 10.230.0.0/24", got.AllowedIPs)
	}

	// Remove host 3.
	h1.setPeers(h2.peer())
	if st, err := h1.dev.Peers(context.Background()); err != nil || len(st) != 1 {
		t.Errorf("peers after removal = %d (%v), want 1", len(st), err)
	}
	if c3, err := dialIn(h1.ns, srv3, time.Second); err == nil {
		c3.Close()
		t.Error("host 1 still reaches removed peer host 3")
	}
	// Host 3 still has host 1 as a peer, but host 1 no longer accepts it.
	if c31, err := dialIn(h3.ns, netip.AddrPortFrom(h1.wgAddr.Addr(), 7000), time.Second); err == nil {
		c31.Close()
		t.Error("removed peer host 3 still reaches host 1")
	}
	if err := roundTrip(c, []byte("after removing another peer")); err != nil {
		t.Fatalf("connection through the remaining peer broke: %v", err)
	}
}

func peerStatus(t *testing.T, d *Device, key wgtypes.Key) PeerStatus {
	t.Helper()
	st, err := d.Peers(context.Background())
	if err != nil {
		t.Fatalf("Peers: %v", err)
	}
	for _, p := range st {
		if p.PublicKey == key {
			return p
		}
	}
	t.Fatalf("peer %s not on %s", key, d.Name())
	return PeerStatus{}
}

// TestOpenAfterCrash: a daemon killed with SIGKILL leaves its control socket
// behind (and possibly a link of the device's name); Open in the restarted
// daemon clears both and the tunnel works again. While the first daemon is
// alive, Open refuses the name.
func TestOpenAfterCrash(t *testing.T) {
	l := newLab(t)
	h1, h2 := l.addHost(1, 0), l.addHost(2, 0)
	h2.open(0)
	h2.setPeers(h1.peer())
	proc := h1.startHelper(0, h2.peer())

	if _, err := Open(context.Background(), h1.config(0)); !errors.Is(err, ErrInUse) {
		t.Fatalf("Open while another process serves the name = %v, want ErrInUse", err)
	}
	srv := netip.AddrPortFrom(h2.wgAddr.Addr(), 7000)
	listenIn(t, h2.ns, srv)
	if c, err := dialIn(h1.ns, srv, ioTimeout); err != nil {
		t.Fatalf("tunnel from the first daemon: %v", err)
	} else {
		c.Close()
	}

	proc.kill()
	sock := filepath.Join(uapiDir, h1.wgName+".sock")
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("the crash left no control socket (%v): nothing to test", err)
	}
	// Whatever the crash left, a link of the same name must not stop Open:
	// a persistent TUN stands in for one.
	l.ip(h1.ns, "tuntap", "add", "dev", h1.wgName, "mode", "tun")

	h1.open(0)
	h1.setPeers(h2.peer())
	if c, err := dialIn(h1.ns, srv, ioTimeout); err != nil {
		t.Fatalf("tunnel after the restart: %v", err)
	} else {
		c.Close()
	}
}

// checkNoLeak fails the test when a control socket or a root-netns link with
// the lab's prefix outlives it.
func (l *lab) checkNoLeak(t testing.TB) {
	entries, _ := os.ReadDir(uapiDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), l.prefix) {
			t.Errorf("control socket %s leaked", e.Name())
		}
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Errorf("list root links: %v", err)
		return
	}
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, l.prefix) {
			t.Errorf("link %s leaked into the root netns", i.Name)
		}
	}
}

// An interface that only carries routed traffic needs no address.
func TestOpenWithoutAddress(t *testing.T) {
	l := newLab(t)
	h := l.addHost(1, 0)
	h.wgAddr = netip.Prefix{}
	d := h.open(0)
	if d.Address().IsValid() {
		t.Errorf("Address() = %s, want none", d.Address())
	}
	out := run(t, "ip", "-n", h.ns, "-4", "addr", "show", "dev", h.wgName)
	if strings.Contains(out, "inet ") {
		t.Errorf("interface has an IPv4 address:\n%s", out)
	}
}
