package wg

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/shoal-project/shoal/overlay/netnsutil/netnstest"
)

// ioTimeout bounds every dial and read so a broken data path fails the test
// instead of hanging it; it is not a speed assertion.
const ioTimeout = 5 * time.Second

// helperEnv makes the test binary run as a simulated host's daemon (see
// TestMain) instead of running tests.
const helperEnv = "SHOAL_WG_TEST_HELPER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(runHelper(spec))
	}
	os.Exit(m.Run())
}

// requireRoot skips tests that build namespaces and TUN devices.
func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates network namespaces, links and TUN devices")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		tb.Skip("needs /dev/net/tun for wireguard-go: ", err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("needs iproute2's ip to build the test topology")
	}
}

// lab is one test's private network: an underlay netns holding a bridge,
// and hosts (netns) on it. Every name starts with a prefix unique to the
// run; everything is removed at cleanup, failed test or not.
type lab struct {
	tb     testing.TB
	prefix string // "wgt" + 6 hex chars
	ul     string // underlay netns name
}

// host is a simulated host: a netns with an underlay veth (eth) and,
// once opened, a WireGuard device.
type host struct {
	lab      *lab
	i        int
	ns       string // netns name
	eth      string // underlay veth inside ns
	underlay netip.Addr
	wgAddr   netip.Prefix
	wgName   string
	key      wgtypes.Key
	dev      *Device
}

func newLab(tb testing.TB) *lab {
	tb.Helper()
	requireRoot(tb)
	l := &lab{tb: tb, prefix: netnstest.Prefix("wgt", 3)}
	// Registered first, so it runs last.
	tb.Cleanup(func() { l.checkNoLeak(tb) })
	l.ul = l.netns("ul")
	l.ip(l.ul, "link", "add", l.prefix+"br", "type", "bridge")
	l.ip(l.ul, "link", "set", l.prefix+"br", "up")
	return l
}

// netns creates <prefix>-<suffix> and deletes it at cleanup (which takes
// its links with it). It returns the name.
func (l *lab) netns(suffix string) string {
	l.tb.Helper()
	name := l.prefix + "-" + suffix
	netnstest.NewNamed(l.tb, name)
	l.ip(name, "link", "set", "lo", "up")
	return name
}

// ip runs `ip -n ns args...`.
func (l *lab) ip(ns string, args ...string) {
	l.tb.Helper()
	run(l.tb, "ip", append([]string{"-n", ns}, args...)...)
}

// sysctl sets a sysctl inside ns.
func (l *lab) sysctl(ns, key, val string) {
	l.tb.Helper()
	run(l.tb, "ip", "netns", "exec", ns, "sysctl", "-qw", key+"="+val)
}

func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func nsPath(name string) string { return filepath.Join("/run/netns", name) }

// addHost makes host i (1..250): underlay 10.201.0.i/24 on the lab bridge,
// WireGuard address 10.202.0.i/24 once opened. underlayMTU 0 keeps 1500.
func (l *lab) addHost(i, underlayMTU int) *host {
	l.tb.Helper()
	h := &host{
		lab:      l,
		i:        i,
		ns:       l.netns(fmt.Sprintf("h%d", i)),
		eth:      fmt.Sprintf("%se%d", l.prefix, i),
		underlay: netip.AddrFrom4([4]byte{10, 201, 0, byte(i)}),
		wgAddr:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 202, 0, byte(i)}), 24),
		wgName:   fmt.Sprintf("%sw%d", l.prefix, i),
	}
	port := fmt.Sprintf("%sp%d", l.prefix, i)
	l.ip(l.ul, "link", "add", port, "type", "veth", "peer", "name", h.eth, "netns", h.ns)
	l.ip(l.ul, "link", "set", port, "master", l.prefix+"br", "up")
	if underlayMTU != 0 {
		mtu := fmt.Sprint(underlayMTU)
		l.ip(l.ul, "link", "set", l.prefix+"br", "mtu", mtu)
		l.ip(l.ul, "link", "set", port, "mtu", mtu)
		l.ip(h.ns, "link", "set", h.eth, "mtu", mtu)
	}
	l.ip(h.ns, "addr", "add", h.underlay.String()+"/24", "dev", h.eth)
	l.ip(h.ns, "link", "set", h.eth, "up")
	key, err := GenerateKey()
	if err != nil {
		l.tb.Fatal(err)
	}
	h.key = key
	return h
}

// config is the host's device configuration.
func (h *host) config(mtu int) Config {
	return Config{
		Name:       h.wgName,
		PrivateKey: h.key,
		ListenPort: DefaultListenPort,
		Address:    h.wgAddr,
		MTU:        mtu,
		NetNS:      nsPath(h.ns),
		Kind:       KindUserspace,
		Logger:     testLogger(h.lab.tb),
	}
}

// open opens the host's device in this process and closes it at cleanup.
func (h *host) open(mtu int) *Device {
	h.lab.tb.Helper()
	d, err := Open(context.Background(), h.config(mtu))
	if err != nil {
		h.lab.tb.Fatalf("Open on host %d: %v", h.i, err)
	}
	h.lab.tb.Cleanup(func() {
		if err := d.Close(); err != nil {
			h.lab.tb.Errorf("Close on host %d: %v", h.i, err)
		}
	})
	h.dev = d
	return d
}

// peer is host h as its peers configure it, routing extra prefixes to it.
func (h *host) peer(extra ...netip.Prefix) Peer {
	return Peer{
		PublicKey:  h.key.PublicKey(),
		Endpoint:   netip.AddrPortFrom(h.underlay, DefaultListenPort),
		AllowedIPs: append([]netip.Prefix{netip.PrefixFrom(h.wgAddr.Addr(), 32)}, extra...),
	}
}

func (h *host) setPeers(peers ...Peer) {
	h.lab.tb.Helper()
	if err := h.dev.SetPeers(context.Background(), peers); err != nil {
		h.lab.tb.Fatalf("SetPeers on host %d: %v", h.i, err)
	}
}

// testLogger logs to the test log at Info and above (Debug with -v and
// SHOAL_WG_DEBUG=1).
func testLogger(tb testing.TB) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("SHOAL_WG_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: level}))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// listenIn listens on TCP addr inside netns ns and echoes every connection
// back until cleanup, which closes the listener and every connection.
func listenIn(tb testing.TB, ns string, addr netip.AddrPort) {
	tb.Helper()
	var ln net.Listener
	if err := inNetNS(nsPath(ns), func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		tb.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards conns
		conns = map[net.Conn]bool{}
	)
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		conns = nil
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if conns == nil {
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// dialIn dials TCP addr from inside netns ns.
func dialIn(ns string, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNetNS(nsPath(ns), func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), timeout)
		return err
	})
	return c, err
}

// roundTrip writes msg on c and reads it back from the echo server.
func roundTrip(c net.Conn, msg []byte) error {
	c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo differs")
	}
	return nil
}

// capture reads every frame on one interface of a netns from a raw
// AF_PACKET socket, counting frames and those containing a marker.
type capture struct {
	fd     int
	marker []byte
	done   chan struct{}
	wg     sync.WaitGroup

	mu      sync.Mutex // guards following
	frames  int
	udpToWG int // frames carrying UDP to DefaultListenPort
	marked  int
}

func startCapture(tb testing.TB, ns, ifname string, marker []byte) *capture {
	tb.Helper()
	c := &capture{marker: marker, done: make(chan struct{})}
	proto := int(htons(unix.ETH_P_ALL))
	if err := inNetNS(nsPath(ns), func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		c.fd = fd
		tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index})
	}); err != nil {
		if c.fd != 0 {
			unix.Close(c.fd)
		}
		tb.Fatalf("raw capture on %s in %s: %v", ifname, ns, err)
	}
	c.wg.Add(1)
	go c.loop()
	tb.Cleanup(c.stop)
	return c
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *capture) loop() {
	defer c.wg.Done()
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-c.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			continue // timeout: look at done again
		}
		f := buf[:n]
		c.mu.Lock()
		c.frames++
		if isUDPTo(f, DefaultListenPort) {
			c.udpToWG++
		}
		if bytes.Contains(f, c.marker) {
			c.marked++
		}
		c.mu.Unlock()
	}
}

// isUDPTo reports whether an Ethernet frame carries IPv4 UDP to port.
func isUDPTo(f []byte, port uint16) bool {
	if len(f) < 14+20+8 || f[12] != 0x08 || f[13] != 0x00 || f[14+9] != unix.IPPROTO_UDP {
		return false
	}
	ihl := int(f[14]&0x0f) * 4
	if len(f) < 14+ihl+8 {
		return false
	}
	return uint16(f[14+ihl+2])<<8|uint16(f[14+ihl+3]) == port
}

// counts returns frames seen, WireGuard UDP frames and marker sightings.
func (c *capture) counts() (frames, wgFrames, marked int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames, c.udpToWG, c.marked
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

// helperSpec tells a helper process (the test binary re-executed, see
// runHelper) which device to open as a simulated host's daemon would.
type helperSpec struct {
	Name    string
	Key     wgtypes.Key
	Address netip.Prefix
	MTU     int
	NetNS   string
	Peers   []Peer
}

// runHelper opens the device in spec, sets its peers, prints "ready", and
// keeps it until its stdin closes (then closes it) or it is killed.
func runHelper(specJSON string) int {
	var spec helperSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "helper spec:", err)
		return 2
	}
	ctx := context.Background()
	d, err := Open(ctx, Config{Name: spec.Name, PrivateKey: spec.Key, Address: spec.Address,
		MTU: spec.MTU, NetNS: spec.NetNS, Kind: KindUserspace,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper open:", err)
		return 1
	}
	defer d.Close()
	if err := d.SetPeers(ctx, spec.Peers); err != nil {
		fmt.Fprintln(os.Stderr, "helper set peers:", err)
		return 1
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// helperProc is a helper process serving one host's device.
type helperProc struct {
	cmd    *exec.Cmd
	stdin  io.Closer
	exited chan struct{} // closed once the process has been waited for
}

// startHelper runs host h's device in a process of its own started with
// `ip netns exec`, as the e2e harness starts shoald (so Config.NetNS is
// empty: the production path), and returns it once the device is up. Cleanup closes its
// stdin and waits (it then closes the device), killing it if it hangs.
func (h *host) startHelper(mtu int, peers ...Peer) *helperProc {
	h.lab.tb.Helper()
	spec, err := json.Marshal(helperSpec{Name: h.wgName, Key: h.key, Address: h.wgAddr,
		MTU: mtu, Peers: peers})
	if err != nil {
		h.lab.tb.Fatal(err)
	}
	// ip netns exec execs the binary: the process is the helper itself.
	cmd := exec.Command("ip", "netns", "exec", h.ns, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"="+string(spec))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		h.lab.tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		h.lab.tb.Fatal(err)
	}
	stderr, err := os.CreateTemp(h.lab.tb.TempDir(), "helper-stderr")
	if err != nil {
		h.lab.tb.Fatal(err)
	}
	defer stderr.Close()
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		h.lab.tb.Fatal(err)
	}
	p := &helperProc{cmd: cmd, stdin: stdin, exited: make(chan struct{})}
	h.lab.tb.Cleanup(func() {
		stdin.Close()
		select {
		case <-p.exited:
		case <-time.After(ioTimeout):
			p.kill()
		}
	})
	ready := make(chan bool, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line == "ready\n"
		io.Copy(io.Discard, stdout)
		cmd.Wait()
		close(p.exited)
	}()
	select {
	case ok := <-ready:
		if !ok {
			<-p.exited
			out, _ := os.ReadFile(stderr.Name())
			h.lab.tb.Fatalf("helper for host %d failed: %s", h.i, out)
		}
	case <-time.After(ioTimeout):
		out, _ := os.ReadFile(stderr.Name())
		h.lab.tb.Fatalf("helper for host %d not ready: %s", h.i, out)
	}
	return p
}

// kill SIGKILLs the helper, as a crash would, and waits for it.
func (p *helperProc) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}
