package gossip

import (
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func TestVersionClock(t *testing.T) {
	ms := uint64(t0.UnixMilli()) << 16
	tests := []struct {
		name  string
		last  uint64 // the clock's last version
		now   time.Time
		floor uint64
		want  uint64
	}{
		{name: "first version is the wall clock", now: t0, want: ms},
		{name: "same millisecond counts up", last: ms, now: t0, want: ms + 1},
		{name: "later millisecond", last: ms + 5, now: t0.Add(time.Millisecond), want: ms + 1<<16},
		{name: "clock set back counts up", last: ms, now: t0.Add(-time.Hour), want: ms + 1},
		{name: "restart after a clock set back goes above what others hold", now: t0.Add(-time.Hour), floor: ms + 3, want: ms + 4},
		{name: "floor below the clock changes nothing", now: t0, floor: 12, want: ms},
		{name: "clock before 1970", now: time.Unix(-5, 0), want: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := versionClock{last: tc.last}
			if got := c.next(tc.now, tc.floor); got != tc.want {
				t.Errorf("next = %#x, want %#x", got, tc.want)
			}
		})
	}
	// A restarted daemon (a new clock) issues versions above the last run's.
	var c1 versionClock
	for range 1000 {
		c1.next(t0, 0)
	}
	var c2 versionClock
	if v1, v2 := c1.last, c2.next(t0.Add(time.Second), 0); v2 <= v1 {
		t.Errorf("after a restart 1 s later: version %#x, not above %#x", v2, v1)
	}
}

// stateAt is a small state of node at version.
func stateAt(node string, version uint64) (NodeState, []byte) {
	st := normalized(testState(node, 1, 1), version)
	return st, encodeState(st)
}

func TestTableApply(t *testing.T) {
	tests := []struct {
		name     string
		have     uint64 // version held of node x, 0 for none
		node     string
		version  uint64
		wantKept uint64 // version held of node after apply
		applied  bool
	}{
		{name: "first state", node: "x", version: 5, wantKept: 5, applied: true},
		{name: "newer replaces", have: 5, node: "x", version: 6, wantKept: 6, applied: true},
		{name: "same version ignored", have: 5, node: "x", version: 5, wantKept: 5},
		{name: "older ignored", have: 5, node: "x", version: 3, wantKept: 5},
		{name: "own state never taken from others", node: "self", version: 9, wantKept: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab := newTable("self")
			tab.setAlive("x")
			if tc.have > 0 {
				applyAt("x", tc.have, 0)(tab)
			}
			st, raw := stateAt(tc.node, tc.version)
			if got := tab.apply(st, raw, t0); got != tc.applied {
				t.Errorf("apply = %v, want %v", got, tc.applied)
			}
			if got := tab.version(tc.node); got != tc.wantKept {
				t.Errorf("version held %d, want %d", got, tc.wantKept)
			}
		})
	}
}

func TestTableGrace(t *testing.T) {
	tests := []struct {
		name string
		// steps, each at t0 + its offset
		steps []func(tab *table)
		at    time.Duration // when expire runs
		kept  bool
	}{
		{
			name:  "alive member is kept",
			steps: []func(*table){func(tab *table) { tab.setAlive("x") }, applyAt("x", 1, 0)},
			at:    time.Hour,
			kept:  true,
		},
		{
			name:  "gone member is kept within the grace",
			steps: []func(*table){func(tab *table) { tab.setAlive("x") }, applyAt("x", 1, 0), goneAt("x", time.Second)},
			at:    time.Second + goneGrace - time.Millisecond,
			kept:  true,
		},
		{
			name:  "gone member is dropped after the grace",
			steps: []func(*table){func(tab *table) { tab.setAlive("x") }, applyAt("x", 1, 0), goneAt("x", time.Second)},
			at:    time.Second + goneGrace,
		},
		{
			name:  "member back before the grace ends is kept",
			steps: []func(*table){func(tab *table) { tab.setAlive("x") }, applyAt("x", 1, 0), goneAt("x", 0), func(tab *table) { tab.setAlive("x") }},
			at:    time.Hour,
			kept:  true,
		},
		{
			name:  "newer version of a gone member does not extend the grace",
			steps: []func(*table){func(tab *table) { tab.setAlive("x") }, applyAt("x", 1, 0), goneAt("x", 0), applyAt("x", 2, goneGrace-time.Second)},
			at:    goneGrace,
		},
		{
			name:  "state of a member never seen alive is dropped after the grace",
			steps: []func(*table){applyAt("x", 1, time.Second)},
			at:    time.Second + goneGrace,
		},
		{
			name:  "state of a member not yet seen alive is kept until it is",
			steps: []func(*table){applyAt("x", 1, 0), func(tab *table) { tab.setAlive("x") }},
			at:    time.Hour,
			kept:  true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab := newTable("self")
			for _, step := range tc.steps {
				step(tab)
			}
			dropped := tab.expire(t0.Add(tc.at))
			if kept := tab.version("x") != 0; kept != tc.kept {
				t.Errorf("kept = %v, want %v", kept, tc.kept)
			}
			if want := !tc.kept; want != slices.Equal(dropped, []string{"x"}) {
				t.Errorf("expire returned %v", dropped)
			}
		})
	}
}

func applyAt(node string, version uint64, at time.Duration) func(*table) {
	return func(tab *table) {
		st, raw := stateAt(node, version)
		tab.apply(st, raw, t0.Add(at))
	}
}

func goneAt(node string, at time.Duration) func(*table) {
	return func(tab *table) { tab.setGone(node, t0.Add(at)) }
}

func TestTablePushPullCarriesLiveStatesOnly(t *testing.T) {
	tab := newTable("self")
	tab.local = &entry{state: NodeState{NodeID: "self", Version: 1}, raw: []byte("self")}
	for _, n := range []string{"a", "b", "c"} {
		tab.setAlive(n)
		applyAt(n, 1, 0)(tab)
	}
	tab.setGone("b", t0)
	var nodes []string
	for _, raw := range tab.encoded() {
		if string(raw) == "self" {
			nodes = append(nodes, "self")
			continue
		}
		st, err := decodeState(raw)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, st.NodeID)
	}
	if want := []string{"self", "a", "c"}; !slices.Equal(nodes, want) {
		t.Errorf("push/pull carries %v, want %v", nodes, want)
	}
	if got := len(tab.snapshot()); got != 4 {
		t.Errorf("snapshot holds %d states, want 4 (b within its grace)", got)
	}
}

func TestTableReassembly(t *testing.T) {
	st, raw := stateAt("x", 7)
	st.Endpoints = testState("x", 60, 0).Endpoints // several fragments
	st.normalize()
	raw = encodeState(st)
	frags := func(version uint64) []fragment {
		var fs []fragment
		for _, msg := range splitState("x", version, raw) {
			f, err := decodeFragment(msg)
			if err != nil {
				t.Fatal(err)
			}
			fs = append(fs, f)
		}
		return fs
	}
	v7 := frags(7)
	if len(v7) < 3 {
		t.Fatalf("%d fragments, want at least 3", len(v7))
	}
	tab := newTable("self")

	// Out of order, with a duplicate: fresh once each, whole at the last.
	order := []int{2, 0, 0}
	for i := 3; i < len(v7); i++ {
		order = append(order, i)
	}
	wantFresh := []bool{true, true, false}
	for i := 3; i < len(v7); i++ {
		wantFresh = append(wantFresh, true)
	}
	for i, idx := range order {
		got, fresh := tab.addFragment(v7[idx], t0)
		if fresh != wantFresh[i] || got != nil {
			t.Fatalf("fragment %d: fresh %v, whole %v; want fresh %v, not whole", idx, fresh, got != nil, wantFresh[i])
		}
	}
	// A newer version supersedes the incomplete one.
	v8 := frags(8)
	if _, fresh := tab.addFragment(v8[0], t0); !fresh {
		t.Fatalf("first fragment of a newer version is not fresh")
	}
	if _, fresh := tab.addFragment(v7[1], t0); fresh {
		t.Errorf("fragment of a superseded version is fresh")
	}
	var whole []byte
	for _, f := range v8[1:] {
		whole, _ = tab.addFragment(f, t0)
	}
	if string(whole) != string(raw) {
		t.Fatalf("reassembled state differs")
	}
	// Once a version is held, its fragments and older ones are no news.
	tab.live["x"] = true
	st.Version = 8
	tab.apply(st, encodeState(st), t0)
	for _, f := range []fragment{v8[0], v7[0]} {
		if _, fresh := tab.addFragment(f, t0); fresh {
			t.Errorf("fragment of version %d is fresh with version 8 held", f.version)
		}
	}
	// Fragments of this node are never reassembled.
	self := frags(9)
	self[0].node = "self"
	if _, fresh := tab.addFragment(self[0], t0); fresh {
		t.Errorf("own fragment is fresh")
	}
	// An incomplete set is forgotten after fragmentTimeout.
	tab.addFragment(frags(10)[0], t0)
	tab.expire(t0.Add(fragmentTimeout))
	if len(tab.pending) != 0 {
		t.Errorf("incomplete set kept after fragmentTimeout")
	}
}
