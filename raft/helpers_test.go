package raft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// errRefused is listSM's deterministic refusal of the command "bad".
var errRefused = errors.New("listSM: command refused")

// listSM appends every command to a list; "bad" is refused.
type listSM struct {
	mu      sync.Mutex // guards following
	items   []string
	indexes []uint64 // log index of each item
}

func (s *listSM) Apply(index uint64, data []byte) error {
	if string(data) == "bad" {
		return errRefused
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items = append(s.items, string(data))
	s.indexes = append(s.indexes, index)
	return nil
}

func (s *listSM) Snapshot() ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return []byte(strings.Join(s.items, "\n")), nil
}

func (s *listSM) Restore(data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items, s.indexes = nil, nil
	if len(data) > 0 {
		s.items = strings.Split(string(data), "\n")
	}
	return nil
}

func (s *listSM) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.items...)
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testConfig bootstraps a one-member group in a fresh directory of the
// test's own (t.TempDir: unique per test, removed even on failure).
func testConfig(t *testing.T) (Config, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg := Config{
		ID:               1,
		DataDir:          filepath.Join(t.TempDir(), "raft"),
		TickInterval:     10 * time.Millisecond,
		SnapshotInterval: 1000,
		Logger:           slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if err := Bootstrap(cfg); err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	return cfg, logs
}

// running is a node whose Run goroutine the test owns.
type running struct {
	n      *Node
	sm     *listSM
	cancel context.CancelFunc
	done   chan error
	runErr error
}

// open opens cfg.DataDir with a fresh listSM.
func open(t *testing.T, cfg Config) (*Node, *listSM) {
	t.Helper()
	sm := &listSM{}
	n, err := Open(cfg, sm)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return n, sm
}

// run starts n.Run; the test's cleanup stops it.
func run(t *testing.T, n *Node, sm *listSM) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{n: n, sm: sm, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- n.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// start opens and runs a node and waits until it leads.
func start(t *testing.T, cfg Config) *running {
	t.Helper()
	n, sm := open(t, cfg)
	r := run(t, n, sm)
	waitLeader(t, n)
	return r
}

func waitLeader(t *testing.T, n *Node) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second) // against hangs, not a speed bound
	for !n.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("the only member never became leader")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// stop cancels Run and waits for it; it reports a Run error.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case r.runErr = <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if r.runErr != nil {
		t.Errorf("Run: %v", r.runErr)
	}
}

func propose(t *testing.T, n *Node, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := n.Propose(ctx, []byte(c))
		cancel()
		if err != nil {
			t.Fatalf("propose %q: %v", c, err)
		}
	}
}

func seq(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

// files lists the base names in dir starting with prefix, sorted.
func files(t *testing.T, dir, prefix string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if strings.HasPrefix(de.Name(), prefix) && !strings.HasSuffix(de.Name(), tmpSuffix) {
			out = append(out, de.Name())
		}
	}
	return out
}

// newest returns the path of the last file in dir starting with prefix.
func newest(t *testing.T, dir, prefix string) string {
	t.Helper()
	names := files(t, dir, prefix)
	if len(names) == 0 {
		t.Fatalf("no %s* file in %s", prefix, dir)
	}
	return filepath.Join(dir, names[len(names)-1])
}
