package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/harness"
	"github.com/shoal-project/shoal/overlay/wg"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

const (
	// iperfSeconds is each iperf3 run: long enough to leave TCP slow start
	// behind and average out a shared 2-core machine's noise, short enough
	// for -count 3 of both variants (four runs each) in a few minutes.
	iperfSeconds = 5
	// warmupSeconds is the run that shows a path is up before it is
	// measured.
	warmupSeconds = 1
	// iperfConnectTimeout bounds an iperf3 client's connect, so that a path
	// not up yet fails fast and is retried instead of waiting out TCP's
	// SYN retries.
	iperfConnectTimeout = 3 * time.Second
	// iperfRunTimeout bounds one iperf3 run, connect and test.
	iperfRunTimeout = iperfSeconds*time.Second + 30*time.Second

	// encryptedAttachTimeout is how long the encrypted variant waits for its
	// tasks to run before it concludes encrypted networks cannot run here
	// (then it skips, if the tasks say why).
	encryptedAttachTimeout = 30 * time.Second

	// refWGPort is the reference tunnel's UDP port, not WireGuard's 51820,
	// so that it never meets a daemon's own WireGuard in a host namespace.
	refWGPort = 51830
)

// refWGAddr is host i's address on the reference tunnel: outside the
// underlay, the overlay pool (10.10.0.0/16) and the node-local bridge
// (172.29.0.0/16).
func refWGAddr(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 254, 0, byte(i)}), 24)
}

// BenchmarkOverlayIperf3 measures overlay throughput against the path
// beneath it, between the same two simulated hosts, with iperf3 (TCP, one
// stream):
//
//	plain      containers on an overlay network (VXLAN), the server on
//	           host 1 and the client on host 2, vs iperf3 between the
//	           hosts' underlay addresses;
//	encrypted  containers on an --encrypted overlay network vs iperf3
//	           between the hosts' addresses on a bare WireGuard tunnel.
//
// Run with
//
//	SHOAL_BIN=$PWD/bin SHOAL_IMAGES=$PWD/bin/images \
//	  go test -run '^$' -bench OverlayIperf3 -benchtime 1x -count 3 ./e2e/
//
// Each iteration runs the overlay and its reference in turn (see measure),
// so that both see the same machine. Services are pinned by node ID: the
// simulated hosts share the machine's hostname. The reference tunnel is
// built with overlay/wg, the package the daemon's WireGuard comes from:
// the one use of Shoal's internals in e2e, and only for a baseline, never
// for what is measured.
func BenchmarkOverlayIperf3(b *testing.B) {
	b.Run("plain", func(b *testing.B) {
		p := newIperfPair(b)
		overlay := p.overlay(b, false)
		p.measure(b, "overlay", overlay, "underlay", p.hostPath(p.h1.Addr))
	})
	b.Run("encrypted", func(b *testing.B) {
		p := newIperfPair(b)
		overlay := p.overlay(b, true)
		tunnel := startRefTunnel(b, p.c, p.h1, p.h2)
		p.measure(b, "overlay", overlay, "wg", p.hostPath(tunnel))
	})
}

// iperfPair is a two-host cluster with the iperf3 image on both hosts and
// an iperf3 server listening in host 1's network namespace.
type iperfPair struct {
	c        *harness.Cluster
	h1, h2   *harness.Host
	id1, id2 string // node IDs
}

// iperfRun runs one iperf3 client test of the given length and returns
// what it measured, in Gbit/s.
type iperfRun func(ctx context.Context, seconds int) (float64, error)

func newIperfPair(b *testing.B) *iperfPair {
	b.Helper()
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("needs iperf3 on PATH (make deps installs it)")
	}
	c := harness.New(b, 2)
	images := harness.Images(b)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	for _, h := range c.Hosts {
		h.Start()
	}
	h1.MustShoal("cluster", "init")
	tok := strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "worker"))
	h2.MustShoal("cluster", "join", "--token", tok, h1.Addr.String()+":4242")
	waitReady(c, h1, 2)
	for _, h := range c.Hosts {
		h.MustShoal("image", "load", "-i", filepath.Join(images, "iperf3.tar"))
	}
	p := &iperfPair{c: c, h1: h1, h2: h2, id1: nodeIDOf(b, h1), id2: nodeIDOf(b, h2)}

	// The reference server: iperf3 in host 1's namespace, on every address.
	srv := exec.Command("nsenter", "--net=/run/netns/"+h1.NetNS, "--", "iperf3", "-s")
	if err := srv.Start(); err != nil {
		b.Fatalf("start iperf3 server in %s: %v", h1.Name, err)
	}
	b.Cleanup(func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
	})
	return p
}

// overlay creates an overlay network (encrypted or not), an iperf3 server
// service on it pinned to host 1 and a client service pinned to host 2,
// and returns a run from the client container to the server's address.
// An encrypted network that does not come up skips the benchmark when the
// daemon says encryption is why.
func (p *iperfPair) overlay(b *testing.B, encrypted bool) iperfRun {
	b.Helper()
	network, timeout := "perfnet", waitConverge
	args := []string{"network", "create", "-d", "overlay"}
	if encrypted {
		network, timeout = "perfnet-enc", encryptedAttachTimeout
		args = append(args, "--encrypted")
	}
	if _, err := p.h1.Shoal(append(args, network)...); err != nil {
		skipIfEncryption(b, encrypted, err)
		b.Fatal(err)
	}
	// `service create` waits up to --timeout for the task to run and fails
	// at once if it is rejected, with the reason.
	image := "shoal/iperf3:latest"
	for _, svc := range [][]string{
		{network + "-server", p.id1, image}, // the image's command: iperf3 -s
		{network + "-client", p.id2, image, "sleep", "1d"},
	} {
		if _, err := p.h1.Shoal(append([]string{"service", "create", "--timeout", timeout.String(),
			"--name", svc[0], "--network", network, "--constraint", "node.id==" + svc[1]}, svc[2:]...)...); err != nil {
			skipIfEncryption(b, encrypted, err)
			b.Fatal(err)
		}
	}
	server, err := waitOneRunning(p.h1, network+"-server", timeout)
	if err != nil {
		skipIfEncryption(b, encrypted, err)
		b.Fatal(err)
	}
	client, err := waitOneRunning(p.h1, network+"-client", timeout)
	if err != nil {
		skipIfEncryption(b, encrypted, err)
		b.Fatal(err)
	}
	addr := addrIn(b, p.h1, network, server)
	b.Logf("%s: server task %s at %s on %s, client task %s on %s", network, server.ID[:8], addr, p.h1.Name, client.ID[:8], p.h2.Name)
	return func(ctx context.Context, seconds int) (float64, error) {
		cmd := p.h2.RuncCmd(append([]string{"exec", client.ID}, iperfClientArgs(addr, seconds)...)...)
		return runIperf(ctx, cmd)
	}
}

// hostPath returns a run from host 2's namespace to the reference server
// at addr in host 1's.
func (p *iperfPair) hostPath(addr netip.Addr) iperfRun {
	return func(ctx context.Context, seconds int) (float64, error) {
		cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + p.h2.NetNS, "--"}, iperfClientArgs(addr, seconds)...)...)
		return runIperf(ctx, cmd)
	}
}

// measure runs both paths in the order path, reference, reference, path
// b.N times, and reports their mean rates and the ratio of the first to
// the second. The symmetric order cancels a load that rises or falls
// steadily across an iteration (the hosts share the machine's cores with
// whatever else runs). A short run of each first waits until the path
// carries traffic (endpoint tables, neighbour entries, a WireGuard
// handshake), so that what is measured is the steady state and not the
// path coming up.
func (p *iperfPair) measure(b *testing.B, name string, run iperfRun, refName string, ref iperfRun) {
	b.Helper()
	waitIperf(b, name, run)
	waitIperf(b, refName, ref)
	var sum, refSum float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		sum += mustIperf(b, name, run)
		refSum += mustIperf(b, refName, ref)
		refSum += mustIperf(b, refName, ref)
		sum += mustIperf(b, name, run)
	}
	b.StopTimer()
	n := float64(2 * b.N)
	b.ReportMetric(sum/n, name+"-Gbit/s")
	b.ReportMetric(refSum/n, refName+"-Gbit/s")
	b.ReportMetric(sum/refSum, name+"/"+refName)
	b.ReportMetric(0, "ns/op") // the iperf3 durations, not a result
}

// waitIperf runs one-second iperf3 tests until one completes, for as long
// as a fresh path may take to come up.
func waitIperf(b *testing.B, what string, run iperfRun) {
	b.Helper()
	deadline := time.Now().Add(waitConverge)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), iperfRunTimeout)
		_, err := run(ctx, warmupSeconds)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: no iperf3 test completed within %s: %v", what, waitConverge, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// mustIperf runs one measured iperf3 test.
func mustIperf(b *testing.B, what string, run iperfRun) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), iperfRunTimeout)
	defer cancel()
	gbps, err := run(ctx, iperfSeconds)
	if err != nil {
		b.Fatalf("%s: %v", what, err)
	}
	return gbps
}

func iperfClientArgs(addr netip.Addr, seconds int) []string {
	return []string{"iperf3", "-c", addr.String(), "-t", strconv.Itoa(seconds), "-J",
		"--connect-timeout", strconv.Itoa(int(iperfConnectTimeout.Milliseconds()))}
}

// runIperf runs an iperf3 client command (-J) and returns the rate the
// server received, in Gbit/s.
func runIperf(ctx context.Context, cmd *exec.Cmd) (float64, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Kill() })
	err := cmd.Wait()
	stop()
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(stdout.Bytes(), &res); jerr != nil {
		return 0, fmt.Errorf("%s: %v, output not iperf3 JSON (%v): %s%s", strings.Join(cmd.Args, " "), err, jerr, stdout.String(), stderr.String())
	}
	switch {
	case res.Error != "":
		return 0, fmt.Errorf("iperf3: %s", res.Error)
	case err != nil:
		return 0, fmt.Errorf("iperf3: %w: %s", err, stderr.String())
	case res.End.SumReceived.BitsPerSecond == 0:
		return 0, errors.New("iperf3 measured nothing")
	}
	return res.End.SumReceived.BitsPerSecond / 1e9, nil
}

// waitOneRunning waits until one task of the service runs and returns it,
// or returns an error naming what its tasks report.
func waitOneRunning(h *harness.Host, service string, timeout time.Duration) (task, error) {
	deadline := time.Now().Add(timeout)
	for {
		all, err := tasks(h, service)
		if err == nil {
			for _, t := range all {
				if t.running() {
					return t, nil
				}
			}
			err = fmt.Errorf("no task running: %s", describeTasks(all))
		}
		if time.Now().After(deadline) {
			return task{}, fmt.Errorf("%s within %s: %w", service, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// describeTasks is summarize with each task's status message.
func describeTasks(ts []task) string {
	var parts []string
	for _, t := range ts {
		parts = append(parts, fmt.Sprintf("%s state=%s err=%q message=%q", t.ID[:8],
			strings.TrimPrefix(t.Status.State, "TASK_STATE_"), t.Status.Err, t.Status.Message))
	}
	return strings.Join(parts, "; ")
}

// skipIfEncryption skips the encrypted variant when err says encryption
// is what failed: a daemon that cannot carry encrypted networks (a build
// without them, a host with neither kernel WireGuard nor a TUN device for
// wireguard-go) rejects their tasks with the reason.
func skipIfEncryption(b *testing.B, encrypted bool, err error) {
	b.Helper()
	if encrypted && strings.Contains(strings.ToLower(err.Error()), "encrypt") {
		b.Skipf("encrypted overlay networks cannot run here: %v", err)
	}
}

// addrIn returns the task's address in the network's subnet.
func addrIn(b *testing.B, h *harness.Host, network string, t task) netip.Addr {
	b.Helper()
	var nets []struct {
		Subnet string `json:"subnet"`
	}
	out := h.MustShoal("network", "inspect", network)
	if err := json.Unmarshal([]byte(out), &nets); err != nil || len(nets) != 1 {
		b.Fatalf("network inspect %s: %v: %s", network, err, out)
	}
	subnet, err := netip.ParsePrefix(nets[0].Subnet)
	if err != nil {
		b.Fatalf("network %s subnet: %v", network, err)
	}
	for _, a := range t.Status.Addresses {
		if p, err := netip.ParsePrefix(a); err == nil && subnet.Contains(p.Addr()) {
			return p.Addr()
		}
	}
	b.Fatalf("task %s has no address in %s: %v", t.ID, subnet, t.Status.Addresses)
	return netip.Addr{}
}

// nodeIDOf is the host's node ID (nodeID, for any testing.TB).
func nodeIDOf(tb testing.TB, h *harness.Host) string {
	tb.Helper()
	var info struct {
		NodeID string `json:"nodeId"`
	}
	out := h.MustShoal("info", "--format", "json")
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.NodeID == "" {
		tb.Fatalf("shoal info --format json: %v: %s", err, out)
	}
	return info.NodeID
}

// The reference tunnel: one WireGuard device per host, each in a process
// of its own in the host's network namespace, as each host's daemon holds
// its own; two devices in one process share one Go scheduler and measure
// some 15% faster with wireguard-go. The test binary is that process (see
// TestMain).

// wgHelperEnv makes the test binary serve a reference WireGuard device
// (runWGHelper) instead of running tests.
const wgHelperEnv = "SHOAL_E2E_WG_HELPER"

// wgHelperReady is the line a helper prints once its device is configured.
const wgHelperReady = "ready"

// wgHelperStartTimeout bounds how long a helper may take to bring its
// device up.
const wgHelperStartTimeout = 10 * time.Second

// wgHelperSpec is the device a helper opens.
type wgHelperSpec struct {
	Name    string
	Key     wgtypes.Key
	Address netip.Prefix
	Peers   []wg.Peer
}

// startRefTunnel brings up the reference tunnel between h1 and h2 and
// returns h1's address on it. Cleanup stops the helpers, which close the
// devices.
func startRefTunnel(b *testing.B, c *harness.Cluster, h1, h2 *harness.Host) netip.Addr {
	b.Helper()
	hosts := []*harness.Host{h1, h2}
	keys := make([]wgtypes.Key, len(hosts))
	peers := make([]wg.Peer, len(hosts))
	for i, h := range hosts {
		k, err := wg.GenerateKey()
		if err != nil {
			b.Fatal(err)
		}
		keys[i] = k
		peers[i] = wg.Peer{
			PublicKey:  k.PublicKey(),
			Endpoint:   netip.AddrPortFrom(h.Addr, refWGPort),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(refWGAddr(i+1).Addr(), 32)},
		}
	}
	for i, h := range hosts {
		spec := wgHelperSpec{
			// Unique on the machine (wireguard-go's control socket is named
			// after it) and at most 15 bytes: "she" + 6 hex + "wgref" + i.
			Name:    fmt.Sprintf("%swgref%d", c.Prefix, i+1),
			Key:     keys[i],
			Address: refWGAddr(i + 1),
			Peers:   []wg.Peer{peers[1-i]},
		}
		kind := startWGHelper(b, h, spec)
		b.Logf("reference tunnel on %s: %s WireGuard %s at %s", h.Name, kind, spec.Name, spec.Address)
	}
	return refWGAddr(1).Addr()
}

// startWGHelper runs the test binary in h's network namespace as a
// WireGuard helper and returns the kind of device it opened once it is
// configured.
func startWGHelper(b *testing.B, h *harness.Host, spec wgHelperSpec) string {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	js, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+h.NetNS, "--", exe)
	cmd.Env = append(os.Environ(), wgHelperEnv+"="+string(js))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start WireGuard helper on %s: %v", h.Name, err)
	}
	exited := make(chan struct{})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- l
		_, _ = io.Copy(io.Discard, stdout)
		_ = cmd.Wait()
		close(exited)
	}()
	// Closing stdin asks the helper to close its device and exit.
	b.Cleanup(func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(wgHelperStartTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	select {
	case l := <-line:
		kind, ok := strings.CutPrefix(strings.TrimSpace(l), wgHelperReady+" ")
		if !ok {
			<-exited
			b.Fatalf("WireGuard helper on %s failed: %q %s", h.Name, l, stderr.String())
		}
		return kind
	case <-time.After(wgHelperStartTimeout):
		b.Fatalf("WireGuard helper on %s not ready within %s", h.Name, wgHelperStartTimeout)
		return ""
	}
}

// runWGHelper opens the device the JSON spec describes in the process's
// network namespace, sets its peer, prints "ready KIND", and keeps it until
// stdin closes. It returns the exit code.
func runWGHelper(specJSON string) int {
	var spec wgHelperSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "WireGuard helper spec:", err)
		return 2
	}
	ctx := context.Background()
	d, err := wg.Open(ctx, wg.Config{Name: spec.Name, PrivateKey: spec.Key, ListenPort: refWGPort, Address: spec.Address})
	if err != nil {
		fmt.Fprintln(os.Stderr, "WireGuard helper:", err)
		return 1
	}
	defer d.Close()
	if err := d.SetPeers(ctx, spec.Peers); err != nil {
		fmt.Fprintln(os.Stderr, "WireGuard helper:", err)
		return 1
	}
	fmt.Println(wgHelperReady, d.Kind())
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}
