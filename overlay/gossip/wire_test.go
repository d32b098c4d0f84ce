package gossip

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"testing"
)

// testState is a state of node with n endpoints on two networks, of
// services of three tasks each, the first ready ones ready.
func testState(node string, n, ready int) NodeState {
	st := NodeState{
		NodeID:            node,
		VTEP:              netip.MustParseAddr("192.0.2.10"),
		WireGuardEndpoint: netip.MustParseAddrPort("192.0.2.10:51820"),
	}
	copy(st.WireGuardKey[:], bytes.Repeat([]byte{0xab}, 32))
	for i := range n {
		st.Endpoints = append(st.Endpoints, Endpoint{
			TaskID:      fmt.Sprintf("task%021d", i),
			ServiceID:   fmt.Sprintf("svc%022d", i/3),
			ServiceName: fmt.Sprintf("web-%d", i/3),
			NetworkID:   fmt.Sprintf("net%022d", i%2),
			Addr:        netip.AddrFrom4([4]byte{10, 10, byte(i % 2), byte(2 + i/2)}),
			MAC:         net.HardwareAddr{0x02, 0x42, 10, 10, byte(i % 2), byte(2 + i/2)},
			Ready:       i < ready,
			Aliases:     []string{fmt.Sprintf("web-%d", i/3), "www"},
		})
	}
	return st
}

// normalized is st as SetLocal publishes it, at version.
func normalized(st NodeState, version uint64) NodeState {
	st = st.clone()
	st.Version = version
	st.normalize()
	return st
}

func TestStateEncoding(t *testing.T) {
	full := testState("node1", 5, 3)
	full.Version = 1<<63 + 7
	v6 := NodeState{
		NodeID:            "node6",
		Version:           1,
		VTEP:              netip.MustParseAddr("2001:db8::1"),
		WireGuardEndpoint: netip.MustParseAddrPort("[2001:db8::1]:51820"),
		Endpoints: []Endpoint{{
			TaskID:    "t",
			NetworkID: "n",
			Addr:      netip.MustParseAddr("fd00::2"),
			MAC:       net.HardwareAddr{0, 1, 2, 3, 4, 5, 6, 7},
		}},
	}
	tests := []struct {
		name string
		st   NodeState
		max  int // bytes the encoding may take
	}{
		{name: "no endpoints", st: NodeState{NodeID: "n", Version: 1}, max: 16},
		{name: "identity only", st: NodeState{NodeID: "n", Version: 2, VTEP: full.VTEP, WireGuardKey: full.WireGuardKey, WireGuardEndpoint: full.WireGuardEndpoint}, max: 64},
		{name: "endpoints", st: full, max: 450},
		{name: "IPv6, no MAC, no names", st: v6, max: 100},
		{name: "4-in-6 addresses are unmapped", st: NodeState{NodeID: "n", Version: 3, VTEP: netip.MustParseAddr("::ffff:192.0.2.1")}, max: 20},
		{name: "many endpoints", st: testState("big", 300, 300), max: 300 * 60},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := normalized(tc.st, tc.st.Version)
			if err := want.validate(); err != nil {
				t.Fatal(err)
			}
			b := encodeState(want)
			if len(b) > tc.max {
				t.Errorf("%d bytes, want at most %d", len(b), tc.max)
			}
			got, err := decodeState(b)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
			}
			if again := encodeState(got); !bytes.Equal(again, b) {
				t.Errorf("encoding is not canonical")
			}
			t.Logf("%d endpoints: %d bytes", len(want.Endpoints), len(b))
		})
	}
}

func TestDecodeRefusesCorruptState(t *testing.T) {
	good := encodeState(normalized(testState("n", 2, 1), 9))
	// A state whose endpoint refers to a string the table does not hold.
	badRef := encodeState(NodeState{NodeID: "n", Version: 1})
	badRef = badRef[:len(badRef)-1] // the endpoint count
	badRef = append(badRef, 1)
	badRef = appendString(badRef, "task")
	badRef = append(badRef, 5, 0, 0) // refs: 5 is out of range
	badRef = appendAddr(badRef, netip.MustParseAddr("10.0.0.1"))
	badRef = append(badRef, 0, 0, 0)

	tests := []struct {
		name string
		b    []byte
	}{
		{name: "empty", b: nil},
		{name: "truncated", b: good[:len(good)-3]},
		{name: "trailing bytes", b: append(bytes.Clone(good), 0)},
		{name: "string ref out of range", b: badRef},
		{name: "huge string count", b: append(encodeState(NodeState{NodeID: "n", Version: 1})[:5], binary.AppendUvarint(nil, 1<<40)...)},
		{name: "address of 5 bytes", b: append([]byte{1, 'n', 1, 0, 5}, make([]byte, 10)...)},
		{name: "no node id", b: encodeState(NodeState{Version: 1})},
		{name: "endpoint without address", b: encodeState(NodeState{NodeID: "n", Version: 1, Endpoints: []Endpoint{{TaskID: "t"}}})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if st, err := decodeState(tc.b); err == nil {
				t.Errorf("decoded %+v", st)
			} else if !errors.Is(err, errDecode) {
				t.Errorf("error %v is not errDecode", err)
			}
		})
	}
}

func TestFragments(t *testing.T) {
	tests := []struct {
		name      string
		state     []byte
		wantParts int
	}{
		{name: "small state, one fragment", state: bytes.Repeat([]byte{1}, 100), wantParts: 1},
		{name: "two fragments", state: bytes.Repeat([]byte{2}, 2*(maxBroadcastSize-2-2-1-10-10)), wantParts: 2},
		{name: "300 endpoints (17 KB)", state: encodeState(normalized(testState("n", 300, 0), 1)), wantParts: 15},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			msgs := splitState("n", 42, tc.state)
			if len(msgs) != tc.wantParts {
				t.Errorf("%d fragments, want %d", len(msgs), tc.wantParts)
			}
			var joined []byte
			for i, msg := range msgs {
				if len(msg) > maxBroadcastSize {
					t.Errorf("fragment %d: %d bytes, more than %d", i, len(msg), maxBroadcastSize)
				}
				f, err := decodeFragment(msg)
				if err != nil {
					t.Fatalf("fragment %d: %v", i, err)
				}
				if f.node != "n" || f.version != 42 || f.index != i || f.count != len(msgs) {
					t.Errorf("fragment %d: %+v", i, f)
				}
				joined = append(joined, f.part...)
			}
			if !bytes.Equal(joined, tc.state) {
				t.Errorf("fragments do not rebuild the state")
			}
		})
	}
}

func TestDecodeRefusesCorruptMessages(t *testing.T) {
	frag := splitState("n", 1, []byte("state"))[0]
	table := encodeTable([][]byte{[]byte("a"), []byte("bc")})
	tests := []struct {
		name     string
		b        []byte
		fragment bool // decodeFragment, else decodeTable
	}{
		{name: "empty fragment", b: nil, fragment: true},
		{name: "fragment of an unknown wire version", b: append([]byte{wireVersion + 1}, frag[1:]...), fragment: true},
		{name: "table given as a fragment", b: table, fragment: true},
		{name: "fragment index out of range", b: append([]byte{wireVersion, kindFragment, 1, 'n', 1, 3, 3}, 'x'), fragment: true},
		{name: "too many fragments", b: append(append([]byte{wireVersion, kindFragment, 1, 'n', 1, 0}, binary.AppendUvarint(nil, maxFragments+1)...), 'x'), fragment: true},
		{name: "fragment without a part", b: []byte{wireVersion, kindFragment, 1, 'n', 1, 0, 1}, fragment: true},
		{name: "empty table", b: nil},
		{name: "table of an unknown wire version", b: append([]byte{wireVersion + 1}, table[1:]...)},
		{name: "fragment given as a table", b: frag},
		{name: "truncated table", b: table[:len(table)-1]},
		{name: "table count beyond its bytes", b: []byte{wireVersion, kindTable, 200, 1, 'a'}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.fragment {
				_, err = decodeFragment(tc.b)
			} else {
				_, err = decodeTable(tc.b)
			}
			if !errors.Is(err, errDecode) {
				t.Errorf("error %v, want errDecode", err)
			}
		})
	}
	if states, err := decodeTable(table); err != nil || len(states) != 2 || string(states[1]) != "bc" {
		t.Errorf("decodeTable(valid) = %q, %v", states, err)
	}
}

func FuzzDecodeState(f *testing.F) {
	f.Add(encodeState(normalized(testState("n", 3, 1), 1)))
	f.Add(encodeState(NodeState{NodeID: "n", Version: 1}))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b)
		if err != nil {
			return
		}
		// What decodes is valid and encodes back to what decodes the same.
		if err := st.validate(); err != nil {
			t.Fatalf("decoded an invalid state: %v", err)
		}
		again, err := decodeState(encodeState(st))
		if err != nil || !reflect.DeepEqual(again, st) {
			t.Fatalf("re-encoding: %v", err)
		}
	})
}
