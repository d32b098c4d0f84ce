package wg

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Throughput benchmarks: two simulated hosts (netns on a bridge), iperf3
// TCP from host 1's side to host 2's side, one run of benchSeconds per
// iteration, reported as Gbit/s. Run them with
//
//	go test -run '^$' -bench . -benchtime 1x -count 3 ./overlay/wg/
//
// Each host's wireguard-go runs in a process of its own (the test binary
// re-executed), as two daemons on one machine would; SHOAL_WG_BENCH_INPROC=1
// runs both in the test process instead. SHOAL_WG_BENCH_SECONDS changes the
// iperf3 duration (default 5).

// benchCase is one data path.
type benchCase struct {
	name        string
	path        string // "underlay", "wg", "l3", "vxlan", "vxlan-wg"
	wgMTU       int    // 0: DefaultMTU
	underlayMTU int    // 0: 1500
}

var benchCases = []benchCase{
	// References without encryption.
	{name: "underlay", path: "underlay"},
	{name: "vxlan-plain", path: "vxlan"},
	// (a) host to host through WireGuard.
	{name: "a-wg-tunnel", path: "wg"},
	// (b) containers routed over WireGuard, no VXLAN.
	{name: "b-wg-l3", path: "l3"},
	// (c) VXLAN carried inside WireGuard.
	{name: "c-vxlan-over-wg", path: "vxlan-wg"},
	// Attempts at a faster (c): a WireGuard MTU above the underlay's, so the
	// kernel fragments WireGuard's UDP (fewer, larger packets through the
	// TUN and the cipher), and a jumbo-frame underlay.
	{name: "c-vxlan-over-wg-mtu8920-fragmenting", path: "vxlan-wg", wgMTU: 8920},
	{name: "c-vxlan-over-wg-mtu60000-fragmenting", path: "vxlan-wg", wgMTU: 60000},
	{name: "c-vxlan-over-wg-jumbo-underlay", path: "vxlan-wg", wgMTU: 8920, underlayMTU: 9000},
	{name: "b-wg-l3-jumbo-underlay", path: "l3", wgMTU: 8920, underlayMTU: 9000},
	// The trap: routed traffic arrives from the TUN as TSO super-packets,
	// wireguard-go sends their segments with UDP GSO, and the kernel refuses
	// a GSO segment larger than the route MTU (EMSGSIZE): almost nothing
	// gets through.
	{name: "b-wg-l3-mtu8920-fragmenting", path: "l3", wgMTU: 8920},
}

func BenchmarkThroughput(b *testing.B) {
	for _, bc := range benchCases {
		b.Run(bc.name, func(b *testing.B) {
			requireRoot(b)
			if _, err := exec.LookPath("iperf3"); err != nil {
				b.Skip("needs iperf3 (make deps installs it)")
			}
			client, server, addr := buildPath(b, bc)
			secs := benchSeconds()
			var total float64
			for i := 0; i < b.N; i++ {
				total += iperf(b, client, server, addr, secs)
			}
			b.ReportMetric(total/float64(b.N), "Gbit/s")
		})
	}
}

func benchSeconds() int {
	if s, err := strconv.Atoi(os.Getenv("SHOAL_WG_BENCH_SECONDS")); err == nil && s > 0 {
		return s
	}
	return 5
}

// buildPath builds bc's topology and returns the client netns, the server
// netns and the address iperf3 connects to.
func buildPath(tb testing.TB, bc benchCase) (client, server string, addr netip.Addr) {
	tb.Helper()
	wgMTU := bc.wgMTU
	if wgMTU == 0 {
		wgMTU = DefaultMTU
	}
	l := newLab(tb)
	h1, h2 := l.addHost(1, bc.underlayMTU), l.addHost(2, bc.underlayMTU)
	hosts := []*host{h1, h2}
	switch bc.path {
	case "underlay":
		return h1.ns, h2.ns, h2.underlay
	case "wg":
		startWG(tb, hosts, wgMTU, nil)
		return h1.ns, h2.ns, h2.wgAddr.Addr()
	case "l3":
		// Host i routes its containers' subnet 10.210.i.0/24 from a bridge;
		// the remote subnet goes to wg, and is in the peer's AllowedIPs.
		subnet := func(h *host) netip.Prefix {
			return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 210, byte(h.i), 0}), 24)
		}
		startWG(tb, hosts, wgMTU, func(h *host) []netip.Prefix { return []netip.Prefix{subnet(h)} })
		var ctrs []string
		for _, h := range hosts {
			br := fmt.Sprintf("%sb%d", l.prefix, h.i)
			l.ip(h.ns, "link", "add", br, "type", "bridge")
			gw := netip.AddrFrom4([4]byte{10, 210, byte(h.i), 1})
			l.ip(h.ns, "addr", "add", gw.String()+"/24", "dev", br)
			l.ip(h.ns, "link", "set", br, "up")
			l.sysctl(h.ns, "net.ipv4.ip_forward", "1")
			ctr := attachContainer(l, h, br, fmt.Sprintf("c%d", h.i),
				netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 210, byte(h.i), 2}), 24), wgMTU)
			l.ip(ctr, "route", "add", "default", "via", gw.String())
			ctrs = append(ctrs, ctr)
		}
		l.ip(h1.ns, "route", "add", subnet(h2).String(), "dev", h1.wgName)
		l.ip(h2.ns, "route", "add", subnet(h1).String(), "dev", h2.wgName)
		return ctrs[0], ctrs[1], netip.AddrFrom4([4]byte{10, 210, 2, 2})
	case "vxlan", "vxlan-wg":
		// One VNI; its VTEPs are the underlay addresses (plain) or the
		// WireGuard addresses (so VXLAN travels inside WireGuard).
		vtep := func(h *host) netip.Addr { return h.underlay }
		mtu := 1500 - 50
		if bc.underlayMTU != 0 {
			mtu = bc.underlayMTU - 50
		}
		if bc.path == "vxlan-wg" {
			startWG(tb, hosts, wgMTU, nil)
			vtep = func(h *host) netip.Addr { return h.wgAddr.Addr() }
			mtu = wgMTU - 50
		}
		var ctrs []string
		for _, h := range hosts {
			other := hosts[2-h.i]
			vx, br := fmt.Sprintf("%sx%d", l.prefix, h.i), fmt.Sprintf("%sv%d", l.prefix, h.i)
			l.ip(h.ns, "link", "add", vx, "type", "vxlan", "id", "4096", "dstport", "4789",
				"local", vtep(h).String(), "remote", vtep(other).String())
			l.ip(h.ns, "link", "add", br, "type", "bridge")
			for _, dev := range []string{vx, br} {
				l.ip(h.ns, "link", "set", dev, "mtu", strconv.Itoa(mtu))
			}
			l.ip(h.ns, "link", "set", vx, "master", br, "up")
			l.ip(h.ns, "link", "set", br, "up")
			ctrs = append(ctrs, attachContainer(l, h, br, fmt.Sprintf("d%d", h.i),
				netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 220, 0, byte(h.i + 1)}), 24), mtu))
		}
		return ctrs[0], ctrs[1], netip.AddrFrom4([4]byte{10, 220, 0, 3})
	}
	tb.Fatalf("unknown path %q", bc.path)
	return "", "", netip.Addr{}
}

// startWG runs a WireGuard device on every host, each peered with the
// others; routed(h) are extra prefixes reached through host h.
func startWG(tb testing.TB, hosts []*host, mtu int, routed func(*host) []netip.Prefix) {
	tb.Helper()
	peersOf := func(h *host) []Peer {
		var ps []Peer
		for _, o := range hosts {
			if o == h {
				continue
			}
			var extra []netip.Prefix
			if routed != nil {
				extra = routed(o)
			}
			ps = append(ps, o.peer(extra...))
		}
		return ps
	}
	for _, h := range hosts {
		if os.Getenv("SHOAL_WG_BENCH_INPROC") != "" {
			h.open(mtu)
			h.setPeers(peersOf(h)...)
		} else {
			h.startHelper(mtu, peersOf(h)...)
		}
	}
}

// attachContainer makes a "container" netns joined to bridge br of host h by
// a veth, with address addr and the given MTU. It returns the netns name.
func attachContainer(l *lab, h *host, br, suffix string, addr netip.Prefix, mtu int) string {
	ctr := l.netns(suffix)
	outer, inner := l.prefix+suffix+"h", l.prefix+suffix+"c"
	l.ip(h.ns, "link", "add", outer, "mtu", strconv.Itoa(mtu), "type", "veth",
		"peer", "name", inner, "mtu", strconv.Itoa(mtu), "netns", ctr)
	l.ip(h.ns, "link", "set", outer, "master", br, "up")
	l.ip(ctr, "addr", "add", addr.String(), "dev", inner)
	l.ip(ctr, "link", "set", inner, "up")
	return ctr
}

// iperf runs one iperf3 TCP test from client to addr in server and returns
// the received rate in Gbit/s.
func iperf(tb testing.TB, client, server string, addr netip.Addr, secs int) float64 {
	tb.Helper()
	srv := exec.Command("ip", "netns", "exec", server, "iperf3", "-s", "-1", "-B", addr.String())
	if err := srv.Start(); err != nil {
		tb.Fatalf("start iperf3 server: %v", err)
	}
	defer func() {
		srv.Process.Kill()
		srv.Wait()
	}()
	var out []byte
	var err error
	// The server needs a moment to listen; the client fails fast until then.
	for try := 0; try < 50; try++ {
		out, err = exec.Command("ip", "netns", "exec", client, "iperf3", "-c", addr.String(),
			"-t", strconv.Itoa(secs), "-J").Output()
		// iperf3 -J may exit 0 on a refused connection: look at its output.
		if !strings.Contains(string(out), "Connection refused") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		tb.Fatalf("iperf3 client: %v: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		tb.Fatalf("iperf3 output: %v: %s", err, out)
	}
	if res.End.SumReceived.BitsPerSecond == 0 {
		tb.Fatalf("iperf3 measured nothing: %s", out)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9
}
