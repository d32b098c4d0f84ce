// Package bench measures a write path under a fixed number of concurrent
// clients and prints the figures side by side, so Shoal's control API and
// the etcd baseline are measured by the same loop and read from the same
// table.
//
// Latencies are recorded for every operation and the percentiles are taken
// exactly from the sorted samples (nearest-rank), not from a histogram, so
// a p99 over a few hundred samples means what it says.
package bench

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Client counts and duration the write benchmarks use on both systems, so
// their rows compare like with like. One client shows the latency of a
// single committed write (a Raft round trip plus fsync); 64 shows how far
// batching of concurrent proposals carries throughput.
const (
	LowConcurrency  = 1
	HighConcurrency = 64
	// DefaultDuration is long enough for thousands of samples at one
	// client (so p99 rests on tens of samples) and short enough that a
	// full `make bench` stays within a couple of minutes.
	DefaultDuration = 5 * time.Second
)

// Op is one operation of a benchmark: client is the issuing client's index
// in [0, clients), seq counts that client's operations from 0, so
// (client, seq) is unique within one Measure call (e.g. for keys). A
// non-nil error ends the whole measurement.
type Op func(ctx context.Context, client int, seq int) error

// Result is one measurement.
type Result struct {
	Clients  int
	Ops      int           // operations completed without error
	Duration time.Duration // from start until the last client finished
	P50, P99 time.Duration
}

// OpsPerSec is the completed operations per second of wall time; 0 for an
// empty measurement.
func (r Result) OpsPerSec() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Duration.Seconds()
}

// Measure runs clients goroutines, each issuing op back to back until
// duration has passed since the start, and records every operation's
// latency. An operation started before the deadline is waited for and
// counted, so Duration may slightly exceed duration.
//
// The first error from op (or ctx ending) stops every client: the context
// passed to op is cancelled, Measure waits for all clients to return and
// returns the error, with the Result of what completed until then.
func Measure(ctx context.Context, clients int, duration time.Duration, op func(ctx context.Context, client int, seq int) error) (Result, error) {
	return measure(ctx, time.Now, clients, duration, op)
}

// measure is Measure with the clock injected, so tests control latencies.
func measure(ctx context.Context, now func() time.Time, clients int, duration time.Duration, op Op) (Result, error) {
	if clients < 1 {
		return Result{}, fmt.Errorf("measure: %d clients, need at least 1", clients)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		mu       sync.Mutex // guards following
		firstErr error
	)
	samples := make([][]time.Duration, clients) // one slice per client: no lock on the hot path
	start := now()
	deadline := start.Add(duration)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for seq := 0; ; seq++ {
				if ctx.Err() != nil {
					return
				}
				t0 := now()
				if !t0.Before(deadline) {
					return
				}
				if err := op(ctx, c, seq); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("client %d op %d: %w", c, seq, err)
					}
					mu.Unlock()
					cancel()
					return
				}
				samples[c] = append(samples[c], now().Sub(t0))
			}
		})
	}
	wg.Wait()
	end := now()

	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	slices.Sort(all)
	res := Result{
		Clients:  clients,
		Ops:      len(all),
		Duration: end.Sub(start),
		P50:      Percentile(all, 50),
		P99:      Percentile(all, 99),
	}
	if firstErr != nil {
		return res, firstErr
	}
	// ctx ending is an error only if the caller's context ended; our own
	// cancel runs only after an op failed, handled above.
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("measure: %w", err)
	}
	return res, nil
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted, ascending samples: the smallest sample such that at least p% of
// samples are less than or equal to it. It returns 0 for no samples.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Row is one line of the comparison table. System names the system and
// the client path measured (e.g. "etcd 3.4 (HTTP/JSON gateway)"), since
// the path is part of what the figure means.
type Row struct {
	System string
	Result Result
}

// Table formats rows as an aligned text table: system left-aligned, then
// clients, writes/s, p50 and p99 (milliseconds) right-aligned, one line per
// row in the given order, every line padded to the same width.
func Table(rows []Row) string {
	header := []string{"system", "clients", "writes/s", "p50 (ms)", "p99 (ms)"}
	cells := [][]string{header}
	for _, r := range rows {
		cells = append(cells, []string{
			r.System,
			fmt.Sprint(r.Result.Clients),
			fmt.Sprintf("%.0f", r.Result.OpsPerSec()),
			ms(r.Result.P50),
			ms(r.Result.P99),
		})
	}
	widths := make([]int, len(header))
	for _, line := range cells {
		for i, cell := range line {
			widths[i] = max(widths[i], len(cell))
		}
	}
	var sb strings.Builder
	for _, line := range cells {
		for i, cell := range line {
			if i == 0 {
				fmt.Fprintf(&sb, "%-*s", widths[i], cell)
				continue
			}
			fmt.Fprintf(&sb, "  %*s", widths[i], cell)
		}
		sb.WriteByte('\n')
	}
	return sb.String()
}

// ms formats d as milliseconds with microsecond resolution.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.3f", float64(d)/float64(time.Millisecond))
}
