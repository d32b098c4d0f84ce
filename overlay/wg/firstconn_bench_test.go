package wg

import (
	"net/netip"
	"testing"
	"time"
)

// firstConnStall is where a first connection counts as stalled: a
// handshake that has to wait for WireGuard's retry (REKEY_TIMEOUT, 5 s)
// takes at least this long, a working one milliseconds.
const firstConnStall = time.Second

// BenchmarkFirstConnection measures how long the first TCP connection
// between two hosts takes once each has been given the other as a peer,
// both at the same moment (as hosts that learn of each other from one
// gossip round do). "together" dials at once; "after-100ms" dials 100 ms
// later, as a container's first connection usually comes after its host
// configured the peer. Reports the mean time and the share of iterations
// that waited for WireGuard's handshake retry. Run with
//
//	go test -run '^$' -bench FirstConnection -benchtime 12x ./overlay/wg/
func BenchmarkFirstConnection(b *testing.B) {
	for _, bc := range []struct {
		name string
		gap  time.Duration
	}{{"together", 0}, {"after-100ms", 100 * time.Millisecond}} {
		b.Run(bc.name, func(b *testing.B) {
			requireRoot(b)
			var total time.Duration
			stalled := 0
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				l := newLab(b)
				h1, h2 := l.addHost(1, 0), l.addHost(2, 0)
				h1.open(0)
				h2.open(0)
				srv := netip.AddrPortFrom(h2.wgAddr.Addr(), 7000)
				listenIn(b, h2.ns, srv)
				b.StartTimer()
				start := time.Now()
				done := make(chan struct{})
				go func() {
					defer close(done)
					h2.setPeers(h1.peer())
				}()
				h1.setPeers(h2.peer())
				<-done
				time.Sleep(bc.gap)
				for {
					c, err := dialIn(h1.ns, srv, 200*time.Millisecond)
					if err == nil {
						c.Close()
						break
					}
					if time.Since(start) > 4*rekeyTimeout {
						b.Fatalf("no connection within %s: %v", 4*rekeyTimeout, err)
					}
				}
				took := time.Since(start)
				total += took
				if took >= firstConnStall {
					stalled++
				}
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/first-conn")
			b.ReportMetric(float64(stalled)/float64(b.N), "stalled/op")
		})
	}
}

// rekeyTimeout is WireGuard's handshake retry interval (REKEY_TIMEOUT).
const rekeyTimeout = 5 * time.Second
