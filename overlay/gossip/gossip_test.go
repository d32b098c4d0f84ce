package gossip

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// waitTimeout bounds every wait: detection takes about 2 s.
const waitTimeout = 15 * time.Second

var loopback = netip.MustParseAddr("127.0.0.1")

// running is a Member under Run, with the events it delivered.
type running struct {
	*Member
	cancel context.CancelFunc
	done   chan struct{} // closed when Run and the event reader returned

	mu     sync.Mutex // guards events
	events []Event
}

// start creates a member on a free loopback port and runs it until the
// test ends (or stop).
func start(t *testing.T, name string, cfg Config) *running {
	t.Helper()
	cfg.Name = name
	cfg.BindAddr = loopback
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", name, err)
	}
	return run(t, m)
}

func run(t *testing.T, m *Member) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Member: m, cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for ev := range m.Events() {
			r.mu.Lock()
			r.events = append(r.events, ev)
			r.mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		if err := m.Run(ctx); err != nil {
			t.Errorf("Run(%s): %v", m.cfg.Name, err)
		}
	}()
	go func() {
		wg.Wait()
		close(r.done)
	}()
	t.Cleanup(r.stop)
	return r
}

// stop ends Run (the member leaves) and waits for it.
func (r *running) stop() {
	r.cancel()
	<-r.done
}

// saw reports whether the member delivered an event of kind about node.
func (r *running) saw(kind EventKind, node string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.events, func(ev Event) bool { return ev.Kind == kind && ev.Node == node })
}

// list returns the events delivered so far.
func (r *running) list() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func names(m *Member) []string {
	var ns []string
	for _, n := range m.Members() {
		ns = append(ns, n.Name)
	}
	return ns
}

// eventually polls cond until it returns nil, failing with its last error.
func eventually(t *testing.T, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > waitTimeout {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// seeAll waits until every member lists exactly want.
func seeAll(t *testing.T, want []string, ms ...*Member) {
	t.Helper()
	eventually(t, fmt.Sprintf("members %v", want), func() error {
		for _, m := range ms {
			if got := names(m); !slices.Equal(got, want) {
				return fmt.Errorf("%s sees %v", m.cfg.Name, got)
			}
		}
		return nil
	})
}

func TestFailedMemberIsDetected(t *testing.T) {
	a := start(t, "a", Config{})
	b := start(t, "b", Config{})
	b.SetSeeds([]string{a.Addr().String()})
	// c never runs Run: it joins by hand and is then shut down without
	// leaving, as a crashed host or a cut link looks to the others.
	c, err := New(Config{Name: "c", BindAddr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ml.Join([]string{a.Addr().String()}); err != nil {
		t.Fatalf("c joins a: %v", err)
	}
	seeAll(t, []string{"a", "b", "c"}, a.Member, b.Member, c)
	eventually(t, "a and b see c alive", func() error {
		for _, r := range []*running{a, b} {
			if !r.saw(Alive, "c") {
				return fmt.Errorf("%s: events %v", r.cfg.Name, r.list())
			}
		}
		return nil
	})
	for _, r := range []*running{a, b} {
		if r.saw(Alive, r.cfg.Name) {
			t.Errorf("%s: events %v, want none about itself", r.cfg.Name, r.list())
		}
	}

	if err := c.ml.Shutdown(); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, "a and b see c failed", func() error {
		for _, r := range []*running{a, b} {
			if !r.saw(Failed, "c") {
				return fmt.Errorf("%s has not seen c fail; members %v", r.cfg.Name, names(r.Member))
			}
		}
		return nil
	})
	t.Logf("c failed: seen by a and b after %s", took.Round(time.Millisecond))
	seeAll(t, []string{"a", "b"}, a.Member, b.Member)
	if a.saw(Left, "c") || b.saw(Left, "c") {
		t.Errorf("a crashed member was reported as left")
	}
}

func TestStoppedMemberLeavesAndRejoinsOnSamePort(t *testing.T) {
	a := start(t, "a", Config{})
	c := start(t, "c", Config{})
	c.SetSeeds([]string{a.Addr().String(), c.Addr().String()}) // its own address is ignored
	seeAll(t, []string{"a", "c"}, a.Member, c.Member)
	addr := c.Addr()

	// A daemon that stops leaves: the others see it left, not failed.
	c.stop()
	eventually(t, "a sees c left", func() error {
		if !a.saw(Left, "c") {
			return fmt.Errorf("events %v", a.list())
		}
		return nil
	})
	if a.saw(Failed, "c") {
		t.Errorf("a member that left was reported failed")
	}

	// The restarted daemon binds the same port and is alive again.
	c2 := start(t, "c", Config{Port: int(addr.Port())})
	if c2.Addr() != addr {
		t.Fatalf("restarted member at %s, want %s", c2.Addr(), addr)
	}
	c2.SetSeeds([]string{a.Addr().String()})
	seeAll(t, []string{"a", "c"}, a.Member, c2.Member)
	eventually(t, "a sees c alive again", func() error {
		evs := a.list()
		if last := evs[len(evs)-1]; last.Node != "c" || last.Kind != Alive {
			return fmt.Errorf("last event %v", last)
		}
		return nil
	})
}

func TestReconnectAfterSeedFailed(t *testing.T) {
	// w knows only the seed s. s crashes and comes back on the same
	// address: w, which saw it fail, joins it again by itself.
	s, err := New(Config{Name: "s", BindAddr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	w := start(t, "w", Config{})
	w.SetSeeds([]string{addr.String()})
	seeAll(t, []string{"s", "w"}, w.Member)
	if err := s.ml.Shutdown(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "w sees s failed", func() error {
		if !w.saw(Failed, "s") {
			return fmt.Errorf("events %v", w.list())
		}
		return nil
	})
	s2 := start(t, "s", Config{Port: int(addr.Port())})
	seeAll(t, []string{"s", "w"}, w.Member, s2.Member)
}

func TestReconnectToFailedMember(t *testing.T) {
	// a has no seeds; f joined it by hand, failed, and comes back on the
	// same address knowing nobody: a, which saw it fail, joins it again.
	a := start(t, "a", Config{})
	f, err := New(Config{Name: "f", BindAddr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	addr := f.Addr()
	if _, err := f.ml.Join([]string{a.Addr().String()}); err != nil {
		t.Fatalf("f joins a: %v", err)
	}
	seeAll(t, []string{"a", "f"}, a.Member)
	if err := f.ml.Shutdown(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a sees f failed", func() error {
		if !a.saw(Failed, "f") {
			return fmt.Errorf("events %v", a.list())
		}
		return nil
	})
	f2 := start(t, "f", Config{Port: int(addr.Port())})
	seeAll(t, []string{"a", "f"}, a.Member, f2.Member)
}

func TestSecretKey(t *testing.T) {
	key := []byte("0123456789abcdef")
	a := start(t, "a", Config{SecretKey: key})
	b := start(t, "b", Config{SecretKey: key})
	b.SetSeeds([]string{a.Addr().String()})
	seeAll(t, []string{"a", "b"}, a.Member, b.Member)

	tests := []struct {
		name string
		key  []byte
	}{
		{name: "no key", key: nil},
		{name: "another key", key: []byte("fedcba9876543210")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			x, err := New(Config{Name: "x", BindAddr: loopback, SecretKey: tc.key})
			if err != nil {
				t.Fatal(err)
			}
			defer x.ml.Shutdown()
			if _, err := x.ml.Join([]string{a.Addr().String()}); err == nil {
				t.Errorf("joined a cluster whose key it does not hold")
			}
			if got := names(a.Member); !slices.Equal(got, []string{"a", "b"}) {
				t.Errorf("a sees %v", got)
			}
		})
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{name: "no name", cfg: Config{BindAddr: loopback}},
		{name: "port out of range", cfg: Config{Name: "a", BindAddr: loopback, Port: 70000}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if m, err := New(tc.cfg); err == nil {
				m.ml.Shutdown()
				t.Errorf("New accepted %+v", tc.cfg)
			}
		})
	}
}
