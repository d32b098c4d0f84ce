package vxlan

import (
	"net"
	"net/netip"
	"testing"
)

// benchChunk is the size of each write: large enough that the loop measures
// the data path, not the syscall rate.
const benchChunk = 128 << 10

// BenchmarkOverlayTCP measures container-to-container TCP throughput over
// the overlay between two simulated hosts (both on this machine's cores, so
// sender, receiver and both kernels' VXLAN work share them). It reports
// Gbit/s; PLATFORM.md measured ~11 Gbit/s for plain VXLAN with iperf3.
func BenchmarkOverlayTCP(b *testing.B) {
	s := setupTwoHosts(b)
	addr := serve(b, s.b, ap(s.epB.Addr, 7100), discard)
	benchTCP(b, s.a, addr)
}

// BenchmarkEncryptedTCP is the same over an encrypted network: routed at
// layer 3 over each host's WireGuard interface (wireguard-go on a machine
// without the kernel module, in this process). overlay/wg's doc measured
// ~1.4 Gbit/s for that path with iperf3, 3.3x VXLAN inside WireGuard.
func BenchmarkEncryptedTCP(b *testing.B) {
	s := setupEncrypted(b)
	addr := serve(b, s.b, ap(s.epB.Addr, 7100), discard)
	benchTCP(b, s.a, addr)
}

// BenchmarkUnderlayTCP is the baseline: the same loop between the two
// simulated hosts' underlay addresses, without VXLAN.
func BenchmarkUnderlayTCP(b *testing.B) {
	w := newWorld(b, 2)
	h1, h2 := w.hosts[0], w.hosts[1]
	addr := serve(b, h2.ns, netip.AddrPortFrom(h2.vtep, 7100), discard)
	benchTCP(b, h1.ns, addr)
}

// benchTCP sends benchChunk-byte writes from the netns at from to addr for
// the benchmark's duration and reports the throughput in Gbit/s.
func benchTCP(b *testing.B, from, addr string) {
	c, err := dialIn(from, addr, ioTimeout)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	var sent int64
	for b.Loop() {
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(sent)*8/b.Elapsed().Seconds()/1e9, "Gbit/s")
}

// discard reads c until EOF with a large buffer (io.Discard's ReadFrom reads
// 8 KiB at a time and would be the bottleneck).
func discard(c net.Conn) {
	buf := make([]byte, 1<<20)
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}
