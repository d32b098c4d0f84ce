package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// measureReturnTimeout bounds how long a test waits for measure to return
// after an op failed; it only keeps a broken stop path from hanging the test.
const measureReturnTimeout = 10 * time.Second

// fakeClock is a clock that moves only when an op advances it.
type fakeClock struct {
	mu  sync.Mutex // guards following
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func msList(ms ...int) []time.Duration {
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		out[i] = time.Duration(m) * time.Millisecond
	}
	return out
}

func seq(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

// slowEvery returns latencies of 9 ms with every n-th op taking 100 ms.
func slowEvery(n int) func(seq int) time.Duration {
	return func(seq int) time.Duration {
		if seq%n == n-1 {
			return 100 * time.Millisecond
		}
		return 9 * time.Millisecond
	}
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"single sample is every percentile", msList(7), 99, 7 * time.Millisecond},
		{"p50 of 1..100", msList(seq(1, 100)...), 50, 50 * time.Millisecond},
		{"p99 of 1..100", msList(seq(1, 100)...), 99, 99 * time.Millisecond},
		{"p100 is the maximum", msList(seq(1, 100)...), 100, 100 * time.Millisecond},
		{"p50 of 1..10", msList(seq(1, 10)...), 50, 5 * time.Millisecond},
		{"p99 of 1..10 is the slowest", msList(seq(1, 10)...), 99, 10 * time.Millisecond},
		{"p99 of 1..1000 ignores the slowest 1%", msList(seq(1, 1000)...), 99, 990 * time.Millisecond},
		{"one outlier in 200 stays out of p99", append(msList(seq(1, 199)...), time.Hour), 99, 198 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.samples, tt.p); got != tt.want {
				t.Errorf("Percentile(%d samples, %v) = %v, want %v", len(tt.samples), tt.p, got, tt.want)
			}
		})
	}
}

func TestMeasureFakeClock(t *testing.T) {
	tests := []struct {
		name     string
		duration time.Duration
		latency  func(seq int) time.Duration
		wantOps  int
		wantP50  time.Duration
		wantP99  time.Duration
		wantDur  time.Duration
		wantRate float64
	}{
		{
			name:     "constant 10ms for 1s",
			duration: time.Second,
			latency:  func(int) time.Duration { return 10 * time.Millisecond },
			wantOps:  100, wantP50: 10 * time.Millisecond, wantP99: 10 * time.Millisecond,
			wantDur: time.Second, wantRate: 100,
		},
		{
			// Latencies 1..100 ms sum to 5050 ms: op 100 starts at 4950 ms,
			// before the 5 s deadline, and is waited for.
			name:     "rising latencies, last op overruns the deadline",
			duration: 5 * time.Second,
			latency:  func(s int) time.Duration { return time.Duration(s+1) * time.Millisecond },
			wantOps:  100, wantP50: 50 * time.Millisecond, wantP99: 99 * time.Millisecond,
			wantDur: 5050 * time.Millisecond, wantRate: 100 / 5.05,
		},
		{
			// Cycles of 99×9 ms + 100 ms = 991 ms; at 1982 ms two more 9 ms
			// ops reach the deadline: 2 slow of 202 (<1%) stay out of p99.
			name:     "slow ops under 1% stay out of p99",
			duration: 2 * time.Second,
			latency:  slowEvery(100),
			wantOps:  202, wantP50: 9 * time.Millisecond, wantP99: 9 * time.Millisecond,
			wantDur: 2000 * time.Millisecond, wantRate: 101,
		},
		{
			// Cycles of 49×9 ms + 100 ms = 541 ms; two cycles end exactly
			// at the deadline: 2 slow of 100 (2%) set p99.
			name:     "slow ops over 1% set p99",
			duration: 1082 * time.Millisecond,
			latency:  slowEvery(50),
			wantOps:  100, wantP50: 9 * time.Millisecond, wantP99: 100 * time.Millisecond,
			wantDur: 1082 * time.Millisecond, wantRate: 100 / 1.082,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{now: time.Unix(1000, 0)}
			res, err := measure(context.Background(), clock.Now, 1, tt.duration, func(_ context.Context, client, seq int) error {
				clock.Advance(tt.latency(seq))
				return nil
			})
			if err != nil {
				t.Fatalf("measure: %v", err)
			}
			want := Result{Clients: 1, Ops: tt.wantOps, Duration: tt.wantDur, P50: tt.wantP50, P99: tt.wantP99}
			if res != want {
				t.Errorf("result = %+v, want %+v", res, want)
			}
			if got := res.OpsPerSec(); got < tt.wantRate*0.999 || got > tt.wantRate*1.001 {
				t.Errorf("OpsPerSec = %v, want %v", got, tt.wantRate)
			}
		})
	}
}

// TestMeasureClients checks that every client runs and that (client, seq)
// pairs are unique and dense, which callers rely on to build unique keys.
func TestMeasureClients(t *testing.T) {
	tests := []struct {
		name    string
		clients int
	}{
		{"one client", 1},
		{"eight clients", 8},
		{"sixty-four clients", 64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			seen := map[[2]int]bool{}
			perClient := make([]int, tt.clients)
			res, err := Measure(context.Background(), tt.clients, 50*time.Millisecond, func(_ context.Context, client, seq int) error {
				mu.Lock()
				defer mu.Unlock()
				key := [2]int{client, seq}
				if seen[key] {
					return fmt.Errorf("(client %d, seq %d) issued twice", client, seq)
				}
				seen[key] = true
				perClient[client]++
				time.Sleep(time.Millisecond) // yield so every client gets a turn
				return nil
			})
			if err != nil {
				t.Fatalf("Measure: %v", err)
			}
			if res.Clients != tt.clients {
				t.Errorf("Clients = %d, want %d", res.Clients, tt.clients)
			}
			if res.Ops != len(seen) {
				t.Errorf("Ops = %d, but op ran %d times", res.Ops, len(seen))
			}
			for c, n := range perClient {
				if n == 0 {
					t.Errorf("client %d never ran", c)
				}
				for s := range n {
					if !seen[[2]int{c, s}] {
						t.Errorf("client %d: seq %d missing below %d", c, s, n)
					}
				}
			}
			if res.P50 <= 0 || res.P99 < res.P50 {
				t.Errorf("percentiles p50=%v p99=%v: want 0 < p50 <= p99", res.P50, res.P99)
			}
		})
	}
}

var errBoom = errors.New("boom")

func TestMeasureStopsAtFirstError(t *testing.T) {
	tests := []struct {
		name    string
		clients int
		failAt  int // seq at which client 0 fails
	}{
		{"single client fails on its first op", 1, 0},
		{"single client fails later", 1, 5},
		{"one of many clients fails", 16, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The clock never moves, so only the error can end the run.
			clock := &fakeClock{now: time.Unix(1000, 0)}
			type out struct {
				res Result
				err error
			}
			done := make(chan out, 1)
			go func() {
				res, err := measure(context.Background(), clock.Now, tt.clients, time.Second, func(ctx context.Context, client, seq int) error {
					if client == 0 && seq == tt.failAt {
						return errBoom
					}
					if client != 0 {
						<-ctx.Done() // others block until Measure cancels them
						return ctx.Err()
					}
					return nil
				})
				done <- out{res, err}
			}()
			select {
			case o := <-done:
				if !errors.Is(o.err, errBoom) {
					t.Fatalf("err = %v, want the op's error", o.err)
				}
				if !strings.Contains(o.err.Error(), fmt.Sprintf("client 0 op %d", tt.failAt)) {
					t.Errorf("err = %q, want it to name client 0 op %d", o.err, tt.failAt)
				}
				if o.res.Ops != tt.failAt {
					t.Errorf("Ops = %d, want the %d that succeeded", o.res.Ops, tt.failAt)
				}
			case <-time.After(measureReturnTimeout):
				t.Fatal("measure did not return after an op failed")
			}
		})
	}
}

func TestMeasureCallerCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := 0
	_, err := Measure(ctx, 1, time.Hour, func(context.Context, int, int) error {
		calls++
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if calls != 0 {
		t.Errorf("op ran %d times on a cancelled context", calls)
	}
}

func TestMeasureRejectsNoClients(t *testing.T) {
	if _, err := Measure(context.Background(), 0, time.Second, func(context.Context, int, int) error { return nil }); err == nil {
		t.Error("Measure with 0 clients: want an error")
	}
}

func TestTable(t *testing.T) {
	rows := []Row{
		{System: "shoal (gRPC control API)", Result: Result{Clients: 1, Ops: 1000, Duration: 2 * time.Second, P50: 1500 * time.Microsecond, P99: 4 * time.Millisecond}},
		{System: "etcd 3.4 (HTTP/JSON gateway)", Result: Result{Clients: 64, Ops: 123456, Duration: 5 * time.Second, P50: 2250 * time.Microsecond, P99: 12345678 * time.Nanosecond}},
	}
	got := Table(rows)
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("table has %d lines, want header + 2:\n%s", len(lines), got)
	}
	wantCells := [][]string{
		{"system", "clients", "writes/s", "p50 (ms)", "p99 (ms)"},
		{"shoal (gRPC control API)", "1", "500", "1.500", "4.000"},
		{"etcd 3.4 (HTTP/JSON gateway)", "64", "24691", "2.250", "12.346"},
	}
	for i, line := range lines {
		if len(line) != len(lines[0]) {
			t.Errorf("line %d is %d wide, header %d: columns not aligned:\n%s", i, len(line), len(lines[0]), got)
		}
		if !strings.HasPrefix(line, wantCells[i][0]) {
			t.Errorf("line %d = %q, want it to start with the system %q", i, line, wantCells[i][0])
		}
		// Numbers are right-aligned: each cell ends where its header ends.
		for col, cell := range wantCells[i][1:] {
			hdr := wantCells[0][col+1]
			end := strings.Index(lines[0], hdr) + len(hdr)
			if end > len(line) || line[end-len(cell):end] != cell {
				t.Errorf("line %d column %q: want %q ending at %d, line %q", i, hdr, cell, end, line)
			}
		}
	}
}

func TestOpsPerSecEmpty(t *testing.T) {
	if got := (Result{}).OpsPerSec(); got != 0 {
		t.Errorf("OpsPerSec of an empty result = %v, want 0", got)
	}
}
