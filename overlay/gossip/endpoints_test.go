package gossip

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// holds checks that m's table holds want as node want.NodeID's state.
func holds(m *Member, want NodeState) error {
	got, ok := m.Table()[want.NodeID]
	switch {
	case !ok:
		return fmt.Errorf("%s holds no state of %s", m.cfg.Name, want.NodeID)
	case got.Version != want.Version:
		return fmt.Errorf("%s holds %s's version %d, want %d", m.cfg.Name, want.NodeID, got.Version, want.Version)
	case !reflect.DeepEqual(got, want):
		return fmt.Errorf("%s holds %s's version %d with other content", m.cfg.Name, want.NodeID, want.Version)
	}
	return nil
}

// allHold waits until every member holds want.
func allHold(t *testing.T, want NodeState, ms ...*Member) time.Duration {
	t.Helper()
	return eventually(t, fmt.Sprintf("state of %s version %d everywhere", want.NodeID, want.Version), func() error {
		for _, m := range ms {
			if err := holds(m, want); err != nil {
				return err
			}
		}
		return nil
	})
}

// publish sets st as m's state and returns it as others should hold it.
func publish(t *testing.T, m *Member, st NodeState) NodeState {
	t.Helper()
	v, err := m.SetLocal(st)
	if err != nil {
		t.Fatalf("%s: SetLocal: %v", m.cfg.Name, err)
	}
	st.NodeID = m.cfg.Name
	return normalized(st, v)
}

// cluster starts n members (named a, b, c…) joined through the first.
func cluster(t *testing.T, n int) []*running {
	t.Helper()
	var rs []*running
	var ms []*Member
	var names []string
	for i := range n {
		name := string(rune('a' + i))
		r := start(t, name, Config{})
		if i > 0 {
			r.SetSeeds([]string{rs[0].Addr().String()})
		}
		rs, ms, names = append(rs, r), append(ms, r.Member), append(names, name)
	}
	seeAll(t, names, ms...)
	return rs
}

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

func TestTableSpreadsAndUpdates(t *testing.T) {
	rs := cluster(t, 3)
	a, b, c := rs[0], rs[1], rs[2]
	drain(b.TableChanges())

	s1 := publish(t, a.Member, testState("a", 4, 2))
	took := allHold(t, s1, a.Member, b.Member, c.Member)
	t.Logf("a's state reached b and c in %s", took.Round(time.Millisecond))
	select {
	case <-b.TableChanges():
	case <-time.After(waitTimeout):
		t.Fatal("b's TableChanges did not signal")
	}

	// An update replaces the older state everywhere.
	st := testState("a", 4, 4)
	st.Endpoints = st.Endpoints[1:]
	s2 := publish(t, a.Member, st)
	if s2.Version <= s1.Version {
		t.Fatalf("update has version %d, not above %d", s2.Version, s1.Version)
	}
	took = allHold(t, s2, a.Member, b.Member, c.Member)
	t.Logf("a's update reached b and c in %s", took.Round(time.Millisecond))

	// The same state again is no change: same version, nothing sent.
	if v, err := a.SetLocal(st); err != nil || v != s2.Version {
		t.Errorf("SetLocal(same state) = %d, %v; want %d", v, err, s2.Version)
	}

	// Every member publishes; every member holds all three.
	sb := publish(t, b.Member, testState("b", 2, 2))
	sc := publish(t, c.Member, NodeState{}) // a host without endpoints
	for _, s := range []NodeState{s2, sb, sc} {
		allHold(t, s, a.Member, b.Member, c.Member)
	}
}

func TestTableLargeState(t *testing.T) {
	rs := cluster(t, 3)
	a, b, c := rs[0], rs[1], rs[2]
	s := publish(t, a.Member, testState("a", 300, 150))
	frags := len(splitState("a", s.Version, encodeState(s)))
	if frags < 2 {
		t.Fatalf("300 endpoints fit in %d broadcast: the test does not test fragments", frags)
	}
	took := allHold(t, s, b.Member, c.Member)
	t.Logf("300 endpoints (%d bytes, %d fragments) reached b and c in %s", len(encodeState(s)), frags, took.Round(time.Millisecond))

	// A change of one readiness flag is a new whole state.
	st := testState("a", 300, 151)
	s2 := publish(t, a.Member, st)
	took = allHold(t, s2, b.Member, c.Member)
	t.Logf("the update reached b and c in %s", took.Round(time.Millisecond))
}

func TestTableFetchesStateWhoseFragmentsWentMissing(t *testing.T) {
	rs := cluster(t, 2)
	a, b := rs[0], rs[1]
	allHold(t, publish(t, a.Member, testState("a", 1, 1)), b.Member)

	// a's next state is lost on the way, but for one fragment that b
	// got: b's reassembly stalls, and b fetches the state from a.
	s2 := publish(t, a.Member, testState("a", 60, 30))
	a.bcast.Reset()
	frags := fragmentsOf(s2)
	if len(frags) < 3 {
		t.Fatalf("%d fragments; the test needs more than a gossip round sends", len(frags))
	}
	feedMsg(b.Member, frags[len(frags)-1])
	took := allHold(t, s2, b.Member)
	t.Logf("b fetched a's state %s after its fragments stopped (repairDelay %s)", took.Round(time.Millisecond), repairDelay)
}

func TestTableLateJoinerGetsEverythingByPushPull(t *testing.T) {
	rs := cluster(t, 3)
	var want []NodeState
	for i, r := range rs {
		want = append(want, publish(t, r.Member, testState(r.cfg.Name, 10*(i+1), i)))
	}
	for _, s := range want {
		allHold(t, s, rs[0].Member, rs[1].Member, rs[2].Member)
	}
	// Once the broadcasts have run out, only push/pull can bring the
	// states to a newcomer; Join's returns after it.
	eventually(t, "broadcast queues empty", func() error {
		for _, r := range rs {
			if n := r.bcast.NumQueued(); n > 0 {
				return fmt.Errorf("%s has %d broadcasts queued", r.cfg.Name, n)
			}
		}
		return nil
	})
	d, err := New(Config{Name: "d", BindAddr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer d.ml.Shutdown()
	if _, err := d.ml.Join([]string{rs[1].Addr().String()}); err != nil {
		t.Fatalf("d joins b: %v", err)
	}
	for _, s := range want {
		if err := holds(d, s); err != nil {
			t.Error(err)
		}
	}
	if n := len(d.Table()); n != 3 {
		t.Errorf("d holds %d states, want 3", n)
	}
}

func TestTableDropsFailedMemberAfterGrace(t *testing.T) {
	a := start(t, "a", Config{})
	b := start(t, "b", Config{})
	b.SetSeeds([]string{a.Addr().String()})
	// c joins by hand and is shut down without leaving: a crashed host.
	c, err := New(Config{Name: "c", BindAddr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	sc := publish(t, c, testState("c", 3, 3))
	if _, err := c.ml.Join([]string{a.Addr().String()}); err != nil {
		t.Fatalf("c joins a: %v", err)
	}
	allHold(t, sc, a.Member, b.Member)

	if err := c.ml.Shutdown(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a and b see c failed", func() error {
		for _, r := range []*running{a, b} {
			if !r.saw(Failed, "c") {
				return fmt.Errorf("%s has not seen c fail", r.cfg.Name)
			}
		}
		return nil
	})
	failed := time.Now()
	// Within the grace, the state stays: the host might come back.
	for _, r := range []*running{a, b} {
		if err := holds(r.Member, sc); err != nil {
			t.Errorf("just after c failed: %v", err)
		}
	}
	eventually(t, "a and b drop c's state", func() error {
		for _, r := range []*running{a, b} {
			if _, ok := r.Table()["c"]; ok {
				return fmt.Errorf("%s still holds c's state", r.cfg.Name)
			}
		}
		return nil
	})
	t.Logf("c's state dropped %s after its failure was seen (goneGrace %s)", time.Since(failed).Round(time.Millisecond), goneGrace)
	if _, ok := a.Table()["a"]; ok {
		t.Errorf("a holds a state of its own, but never set one")
	}
}

func TestTableRestartedMemberReplacesItsState(t *testing.T) {
	a := start(t, "a", Config{})
	c := start(t, "c", Config{})
	c.SetSeeds([]string{a.Addr().String()})
	seeAll(t, []string{"a", "c"}, a.Member, c.Member)
	s1 := publish(t, c.Member, testState("c", 3, 3))
	allHold(t, s1, a.Member)
	addr := c.Addr()

	// The daemon stops (it leaves) and starts again with its containers
	// still running: meanwhile the others keep its state.
	c.stop()
	eventually(t, "a sees c left", func() error {
		if !a.saw(Left, "c") {
			return fmt.Errorf("events %v", a.list())
		}
		return nil
	})
	if err := holds(a.Member, s1); err != nil {
		t.Errorf("just after c left: %v", err)
	}
	c2 := start(t, "c", Config{Port: int(addr.Port())})
	c2.SetSeeds([]string{a.Addr().String()})
	seeAll(t, []string{"a", "c"}, a.Member, c2.Member)
	s2 := publish(t, c2.Member, testState("c", 2, 1))
	if s2.Version <= s1.Version {
		t.Fatalf("restarted member's version %d is not above %d", s2.Version, s1.Version)
	}
	allHold(t, s2, a.Member, c2.Member)
}

// feedMsg and feedState hand m a broadcast message and a push/pull state,
// as memberlist does.
func feedMsg(m *Member, msg []byte)   { delegate{m: m}.NotifyMsg(msg) }
func feedState(m *Member, buf []byte) { delegate{m: m}.MergeRemoteState(buf, false) }

// fragmentsOf is st (normalized, at its version) as broadcast messages.
func fragmentsOf(st NodeState) [][]byte {
	return splitState(st.NodeID, st.Version, encodeState(st))
}

func pushPullOf(sts ...NodeState) []byte {
	var raws [][]byte
	for _, st := range sts {
		raws = append(raws, encodeState(st))
	}
	return encodeTable(raws)
}

func TestTableIgnoresOlderVersionsAndCorruptPayloads(t *testing.T) {
	m, err := New(Config{Name: "m", BindAddr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer m.ml.Shutdown()
	x := func(version uint64) NodeState { return normalized(testState("x", 30, int(version)), version) }

	for _, msg := range fragmentsOf(x(5)) {
		feedMsg(m, msg)
	}
	if err := holds(m, x(5)); err != nil {
		t.Fatal(err)
	}
	// Older versions, arriving late by either path, are ignored.
	for _, msg := range fragmentsOf(x(3)) {
		feedMsg(m, msg)
	}
	feedState(m, pushPullOf(x(4)))
	if err := holds(m, x(5)); err != nil {
		t.Errorf("after older versions: %v", err)
	}

	bad := NodeState{NodeID: "y", Version: 1}
	// A fragment that names node y but holds x's state.
	liar := splitState("y", 9, encodeState(x(9)))[0]
	tests := []struct {
		name string
		msg  []byte // to NotifyMsg, if set
		pp   []byte // to MergeRemoteState, if set
	}{
		{name: "empty message", msg: []byte{}},
		{name: "one byte", msg: []byte{wireVersion}},
		{name: "unknown wire version", msg: append([]byte{wireVersion + 1}, fragmentsOf(bad)[0][1:]...)},
		{name: "unknown kind", msg: append([]byte{wireVersion, 99}, fragmentsOf(bad)[0][2:]...)},
		{name: "state that does not decode", msg: splitState("y", 1, []byte("garbage"))[0]},
		{name: "state of another node than its fragments", msg: liar},
		{name: "random bytes", msg: []byte(strings.Repeat("\xff\x01", 700))},
		{name: "empty push/pull", pp: []byte{}},
		{name: "push/pull of an unknown wire version", pp: append([]byte{wireVersion + 1}, pushPullOf(bad)[1:]...)},
		{name: "truncated push/pull", pp: pushPullOf(bad)[:6]},
		{name: "push/pull of a state that does not decode", pp: encodeTable([][]byte{[]byte("garbage")})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			drain(m.TableChanges())
			if tc.msg != nil {
				feedMsg(m, tc.msg)
			}
			if tc.pp != nil {
				feedState(m, tc.pp)
			}
			if n := len(m.Table()); n != 1 {
				t.Errorf("table holds %d states, want x's only", n)
			}
			if err := holds(m, x(5)); err != nil {
				t.Error(err)
			}
			select {
			case <-m.TableChanges():
				t.Errorf("TableChanges signalled")
			default:
			}
		})
	}

	// One bad state in a push/pull costs only itself; newer versions apply.
	z := normalized(testState("z", 1, 1), 1)
	feedState(m, encodeTable([][]byte{[]byte("garbage"), encodeState(z), encodeState(x(6))}))
	for _, want := range []NodeState{z, x(6)} {
		if err := holds(m, want); err != nil {
			t.Error(err)
		}
	}
}

func TestTableRefutesOwnHigherVersion(t *testing.T) {
	m, err := New(Config{Name: "m", BindAddr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer m.ml.Shutdown()
	st := testState("m", 2, 1)
	s1 := publish(t, m, st)

	// Its own state coming back is an echo.
	feedState(m, pushPullOf(s1))
	for _, msg := range fragmentsOf(s1) {
		feedMsg(m, msg)
	}
	if got := m.Table()["m"].Version; got != s1.Version {
		t.Errorf("after an echo: version %d, want %d", got, s1.Version)
	}

	// A previous run, its clock ahead, published higher versions: the
	// state is published again above them, and stays this run's.
	for _, tc := range []struct {
		name string
		feed func(NodeState)
	}{
		{name: "push/pull", feed: func(s NodeState) { feedState(m, pushPullOf(s)) }},
		{name: "broadcast", feed: func(s NodeState) { feedMsg(m, fragmentsOf(s)[0]) }},
	} {
		old := normalized(testState("m", 9, 9), m.Table()["m"].Version+1000)
		tc.feed(old)
		got := m.Table()["m"]
		if got.Version <= old.Version {
			t.Errorf("%s: version %d, not above %d", tc.name, got.Version, old.Version)
		}
		if want := normalized(st, got.Version); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: content changed", tc.name)
		}
	}

	// Before its first SetLocal, a member remembers the highest version.
	n, err := New(Config{Name: "n", BindAddr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer n.ml.Shutdown()
	old := normalized(testState("n", 1, 1), 1<<62)
	feedState(n, pushPullOf(old))
	if _, ok := n.Table()["n"]; ok {
		t.Errorf("a member took its own state from others")
	}
	if s := publish(t, n, NodeState{}); s.Version <= old.Version {
		t.Errorf("first version %d is not above %d, seen elsewhere", s.Version, old.Version)
	}
}

func TestTableChangesCoalesce(t *testing.T) {
	m, err := New(Config{Name: "m", BindAddr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer m.ml.Shutdown()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20 {
			if _, err := m.SetLocal(testState("m", 1, i%2)); err != nil {
				t.Error(err)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("SetLocal blocked on TableChanges nobody reads")
	}
	if n := len(m.TableChanges()); n != 1 {
		t.Errorf("%d signals pending, want 1", n)
	}
	<-m.TableChanges()
	select {
	case <-m.TableChanges():
		t.Errorf("a second signal for coalesced changes")
	default:
	}
}

func TestSetLocalRefusesInvalidState(t *testing.T) {
	m, err := New(Config{Name: "m", BindAddr: loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer m.ml.Shutdown()
	with := func(f func(*NodeState)) NodeState {
		st := testState("m", 3, 3)
		f(&st)
		return st
	}
	tests := []struct {
		name string
		st   NodeState
	}{
		{name: "another node's state", st: testState("x", 1, 1)},
		{name: "endpoint without task id", st: with(func(st *NodeState) { st.Endpoints[1].TaskID = "" })},
		{name: "endpoint without address", st: with(func(st *NodeState) { st.Endpoints[1].Addr = netip.Addr{} })},
		{name: "two endpoints of a task on a network", st: with(func(st *NodeState) { st.Endpoints[2] = st.Endpoints[0] })},
		{name: "name too long", st: with(func(st *NodeState) { st.Endpoints[0].Aliases = []string{strings.Repeat("x", maxNameLen+1)} })},
		{name: "MAC too long", st: with(func(st *NodeState) { st.Endpoints[0].MAC = make([]byte, maxMACLen+1) })},
		{name: "state too large", st: testState("m", 12000, 0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if v, err := m.SetLocal(tc.st); !errors.Is(err, ErrInvalidState) {
				t.Errorf("SetLocal = %d, %v; want ErrInvalidState", v, err)
			}
			if n := len(m.Table()); n != 0 {
				t.Errorf("table holds %d states", n)
			}
		})
	}
}
