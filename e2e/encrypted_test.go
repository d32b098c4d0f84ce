package e2e

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/harness"
)

// TestEncryptedOverlay runs the same pair of services, a server on one
// host and a client on another, over a plain and over an encrypted
// network. While a capture runs on the client host's underlay, the client
// sends a marker to the server by name (DNS, VIP) on each network: the
// capture holds the plain network's marker and never the encrypted one's,
// which crossed as WireGuard. Then a cleartext VXLAN packet is forged on
// the underlay for each network, addressed to the server: it reaches the
// server on the plain network (so the forgery is well-formed) and never on
// the encrypted one. Last, the server host's daemon crashes and restarts,
// and the encrypted network carries traffic to the same task again.
func TestEncryptedOverlay(t *testing.T) {
	tcpdump, err := exec.LookPath("tcpdump")
	if err != nil {
		t.Fatalf("needs tcpdump on PATH: `make deps` installs it")
	}
	c := harness.New(t, 2)
	images := harness.Images(t)
	reg := c.StartRegistry()
	app := c.PushImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest")
	bb := c.PushImage(filepath.Join(images, "busybox.oci.tar"), "shoal/busybox:latest")
	for _, h := range c.Hosts {
		h.Start("--insecure-registry", reg)
	}
	h1, h2 := c.Hosts[0], c.Hosts[1]
	h1.MustShoal("cluster", "init")
	tok := strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "worker"))
	h2.MustShoal("cluster", "join", "--token", tok, h1.Addr.String()+":4242")
	waitReady(c, h1, 2)
	id1, id2 := nodeID(t, h1), nodeID(t, h2)

	h1.MustShoal("network", "create", "plain")
	h1.MustShoal("network", "create", "--encrypted", "secret")
	nets := []string{"plain", "secret"}
	for _, n := range nets {
		h1.MustShoal("service", "create", "--name", "srv-"+n, "--network", n, "--env", "UDP_PORT=9999",
			"--constraint", "node.id=="+id2, app)
		h1.MustShoal("service", "create", "--name", "cli-"+n, "--network", n,
			"--constraint", "node.id=="+id1, bb, "sleep", "3600")
	}
	servers, clients := map[string]task{}, map[string]task{}
	for _, n := range nets {
		servers[n] = waitRunning(c, h1, "srv-"+n, 1)[0]
		clients[n] = waitRunning(c, h1, "cli-"+n, 1)[0]
	}
	get := func(n, path string) (string, error) {
		return h1.Runc("exec", clients[n].ID, "timeout", "5", "wget", "-qO-", "http://srv-"+n+":8080"+path)
	}
	for _, n := range nets {
		c.Eventually(waitConverge, "cli-"+n+" reaches srv-"+n+" by name", func() error {
			out, err := get(n, "/")
			if err != nil {
				return err
			}
			if !strings.Contains(out, servers[n].ID) {
				return fmt.Errorf("answer %q does not name task %s", out, servers[n].ID)
			}
			return nil
		})
	}

	// Capture the client host's underlay while each client sends its
	// marker in a request line.
	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	capture := exec.Command("nsenter", "--net=/run/netns/"+h1.NetNS, "--",
		tcpdump, "-i", "eth0", "--immediate-mode", "-U", "-n", "-s", "0", "-Z", "root", "-w", pcap)
	capErr := &lockedBuffer{}
	capture.Stderr = capErr
	if err := capture.Start(); err != nil {
		t.Fatalf("start tcpdump: %v", err)
	}
	stopped := false
	stopCapture := func() {
		if stopped {
			return
		}
		stopped = true
		capture.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- capture.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			capture.Process.Kill()
			<-done
		}
	}
	t.Cleanup(stopCapture)
	c.Eventually(10*time.Second, "tcpdump listening", func() error {
		if !strings.Contains(capErr.String(), "listening on") {
			return fmt.Errorf("tcpdump says %q", capErr.String())
		}
		return nil
	})
	markers := map[string]string{}
	for _, n := range nets {
		markers[n] = "shoal-marker-" + n + "-" + randomHex(t, 8)
		out, err := get(n, "/?"+markers[n])
		if err != nil || !strings.Contains(out, servers[n].ID) {
			t.Fatalf("request with the marker over %s: %q, %v", n, out, err)
		}
	}
	time.Sleep(500 * time.Millisecond) // let tcpdump write the last packets out
	stopCapture()
	raw, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatalf("read capture: %v (tcpdump: %s)", err, capErr.String())
	}
	if !strings.Contains(string(raw), markers["plain"]) {
		t.Errorf("the plain network's marker is not in the underlay capture (%d bytes): the capture missed the traffic (tcpdump: %s)", len(raw), capErr)
	}
	if strings.Contains(string(raw), markers["secret"]) {
		t.Errorf("the encrypted network's marker crossed the underlay in cleartext")
	}
	wgOut, _ := exec.Command(tcpdump, "-r", pcap, "-n", "udp port 51820").CombinedOutput()
	wgPackets := strings.Count(string(wgOut), "\n")
	t.Logf("underlay capture: %d bytes, %d WireGuard packets", len(raw), wgPackets)
	if wgPackets == 0 {
		t.Errorf("no WireGuard packets on the underlay while the encrypted network carried a request:\n%s", wgOut)
	}

	// Forge cleartext VXLAN from the client host's underlay for each
	// network, addressed to the server container.
	forged := map[string]string{}
	for _, n := range nets {
		forged[n] = "shoal-forged-" + n + "-" + randomHex(t, 8)
		frame := forgeVXLAN(t, h1, networkVNI(t, h1, n), servers[n], n, forged[n])
		conn, err := h1.Dial(context.Background(), "udp", net.JoinHostPort(h2.Addr.String(), "4789"))
		if err != nil {
			t.Fatalf("dial VXLAN port from %s: %v", h1.Name, err)
		}
		for range 5 {
			if _, err := conn.Write(frame); err != nil {
				t.Fatalf("send forged VXLAN: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		conn.Close()
	}
	c.Eventually(10*time.Second, "the forged packet reaches the server on the plain network", func() error {
		out, err := get("plain", "/udp")
		if err != nil {
			return err
		}
		if !strings.Contains(out, forged["plain"]) {
			return fmt.Errorf("srv-plain received %q", out)
		}
		return nil
	})
	// The plain network delivered its copy; the encrypted one's, sent at
	// the same time, has had as long.
	out, err := get("secret", "/udp")
	if err != nil {
		t.Fatalf("read what srv-secret received: %v", err)
	}
	if strings.Contains(out, forged["secret"]) {
		t.Errorf("a forged cleartext VXLAN packet reached a container on the encrypted network: %q", out)
	}

	// The server host's daemon crashes: its WireGuard interface (in the
	// daemon, where the kernel has no module) goes with it, its containers
	// stay. Started again, it reopens the interface with the same key and
	// reprograms peers and routes: the encrypted network carries traffic
	// again to the same server task.
	h2.KillDaemon()
	h2.Start("--insecure-registry", reg)
	c.Eventually(waitConverge, "cli-secret reaches srv-secret after srv's daemon crashed and restarted", func() error {
		out, err := get("secret", "/")
		if err != nil {
			return err
		}
		if !strings.Contains(out, servers["secret"].ID) {
			return fmt.Errorf("answer %q does not name task %s", out, servers["secret"].ID)
		}
		return nil
	})
}

// networkVNI reads a network's VNI through the CLI.
func networkVNI(t *testing.T, h *harness.Host, name string) uint32 {
	t.Helper()
	var nets []struct {
		Vni uint32 `json:"vni"`
	}
	out := h.MustShoal("network", "inspect", name)
	if err := json.Unmarshal([]byte(out), &nets); err != nil || len(nets) != 1 || nets[0].Vni == 0 {
		t.Fatalf("network inspect %s: %v\n%s", name, err, out)
	}
	return nets[0].Vni
}

// forgeVXLAN builds what an attacker on the underlay would send: a VXLAN
// header with the network's VNI around an Ethernet frame to the task's
// MAC, carrying IPv4/UDP to port 9999 of its address with payload.
func forgeVXLAN(t *testing.T, h *harness.Host, vni uint32, tk task, network, payload string) []byte {
	t.Helper()
	var full []struct {
		Networks []struct {
			NetworkID string   `json:"networkId"`
			Addresses []string `json:"addresses"`
			Mac       string   `json:"mac"`
		} `json:"networks"`
	}
	out := h.MustShoal("service", "ps", "--format", "json", "srv-"+network)
	if err := json.Unmarshal([]byte(out), &full); err != nil || len(full) == 0 || len(full[0].Networks) != 1 {
		t.Fatalf("service ps srv-%s: %v\n%s", network, err, out)
	}
	att := full[0].Networks[0]
	dstMAC, err := net.ParseMAC(att.Mac)
	if err != nil {
		t.Fatalf("task %s MAC %q: %v", tk.ID, att.Mac, err)
	}
	dst, err := netip.ParsePrefix(att.Addresses[0])
	if err != nil {
		t.Fatalf("task %s address: %v", tk.ID, err)
	}
	// A source inside the network's subnet, as a container would have.
	src := dst.Masked().Addr().As4()
	src[3] = 250

	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 5555)
	binary.BigEndian.PutUint16(udp[2:], 9999)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload) // checksum 0: none, valid over IPv4
	ip := make([]byte, 20, 20+len(udp))
	ip[0], ip[8], ip[9] = 0x45, 64, syscall.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	copy(ip[12:16], src[:])
	d4 := dst.Addr().As4()
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	ip = append(ip, udp...)
	eth := append(append(append([]byte{}, dstMAC...), 0x02, 0x42, 0xde, 0xad, 0xbe, 0xef), 0x08, 0x00)
	vx := []byte{0x08, 0, 0, 0, byte(vni >> 16), byte(vni >> 8), byte(vni), 0}
	return append(append(vx, eth...), ip...)
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
