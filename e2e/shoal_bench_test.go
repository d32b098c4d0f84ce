package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/bench"
	"github.com/shoal-project/shoal/e2e/harness"
)

// BenchmarkShoalWrites measures committed writes through the control API on
// 3 managers, with 1 and 64 concurrent clients running in the leader's
// namespace, the same layout as BenchmarkEtcdWrites.
func BenchmarkShoalWrites(b *testing.B) {
	c := harness.New(b, 3)
	for _, h := range c.Hosts {
		h.Start()
	}
	h1 := c.Hosts[0]
	h1.MustShoal("cluster", "init")
	leader := h1.Addr.String() + ":4242"
	mtok := strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "manager"))
	for _, h := range c.Hosts[1:] {
		h.MustShoal("cluster", "join", "--token", mtok, leader)
	}
	c.Eventually(waitConverge, "3 managers", func() error {
		out, err := h1.Shoal("node", "ls")
		if err != nil {
			return err
		}
		if strings.Count(out, "Reachable") != 2 {
			return fmt.Errorf("managers not all reachable:\n%s", out)
		}
		return nil
	})
	var rows []bench.Row
	for _, clients := range []int{bench.LowConcurrency, bench.HighConcurrency} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			out, err := h1.Exec(filepath.Join(c.Bin, "shoal"), "--host", "tcp://"+leader,
				"--tls-dir", filepath.Join(h1.DataDir, "certificates"),
				"debug", "write-load", "--clients", fmt.Sprint(clients),
				"--duration", bench.DefaultDuration.String(), "--format", "json")
			if err != nil {
				b.Fatal(err)
			}
			var r struct {
				Writes    int     `json:"writes"`
				Seconds   float64 `json:"seconds"`
				PerSecond float64 `json:"writesPerSecond"`
				P50       float64 `json:"p50Ms"`
				P99       float64 `json:"p99Ms"`
			}
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				b.Fatalf("parse write-load output: %v\n%s", err, out)
			}
			b.ReportMetric(r.PerSecond, "writes/s")
			b.ReportMetric(r.P50, "p50-ms")
			b.ReportMetric(r.P99, "p99-ms")
			rows = append(rows, bench.Row{System: "shoal (control API, mTLS gRPC)", Result: bench.Result{
				Clients: clients, Ops: r.Writes, Duration: secs(r.Seconds), P50: millis(r.P50), P99: millis(r.P99),
			}})
			if len(rows) == 2 {
				b.Log("\n" + bench.Table(rows))
			}
		})
	}
}

func secs(s float64) time.Duration   { return time.Duration(s * float64(time.Second)) }
func millis(m float64) time.Duration { return time.Duration(m * float64(time.Millisecond)) }
