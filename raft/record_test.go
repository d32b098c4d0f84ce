package raft

import (
	"errors"
	"testing"
)

func TestDecodeRecords(t *testing.T) {
	var two []byte
	two = appendRecord(two, recHardState, []byte("hs"))
	two = appendRecord(two, recEntry, []byte("entry payload"))
	second := int64(recordHeaderLen + 2)

	flip := func(i int) []byte {
		b := append([]byte(nil), two...)
		b[i] ^= 0x01
		return b
	}
	tests := []struct {
		name    string
		data    []byte
		last    bool
		records int
		tornAt  int64 // -1: none
		corrupt bool
	}{
		{"clean", two, true, 2, -1, false},
		{"empty", nil, true, 0, -1, false},
		{"torn header in the last segment", two[:second+5], true, 1, second, false},
		{"torn payload in the last segment", two[:len(two)-3], true, 1, second, false},
		{"zero tail in the last segment", append(append([]byte(nil), two...), make([]byte, 40)...), true, 2, int64(len(two)), false},
		{"torn payload in an earlier segment", two[:len(two)-3], false, 0, -1, true},
		{"flipped payload byte", flip(len(two) - 2), true, 0, -1, true},
		{"flipped length byte", flip(int(second)), true, 0, -1, true},
		{"flipped type byte", flip(int(second) + 8), true, 0, -1, true},
		{"non-zero garbage tail", append(append([]byte(nil), two...), []byte("garbage garbage garbage")...), true, 0, -1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			recs, torn, err := decodeRecords("seg", tc.data, tc.last)
			if tc.corrupt {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("err %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("err %v", err)
			}
			if len(recs) != tc.records || torn != tc.tornAt {
				t.Errorf("%d records, torn at %d; want %d, %d", len(recs), torn, tc.records, tc.tornAt)
			}
			if len(recs) == 2 && string(recs[1].payload) != "entry payload" {
				t.Errorf("second payload %q", recs[1].payload)
			}
		})
	}
}
