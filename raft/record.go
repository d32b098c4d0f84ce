package raft

import (
	"encoding/binary"
	"hash/crc32"
)

// WAL record types (see the package doc for the layout).
const (
	recEntry     byte = 1 // raftpb.Entry
	recHardState byte = 2 // raftpb.HardState
	recSnapshot  byte = 3 // raftpb.SnapshotMetadata of a durable snapshot
)

const (
	recordHeaderLen = 13
	// maxRecordLen is the largest payload a record may declare. Nothing
	// larger is ever written (Propose refuses bigger commands), so a larger
	// declared length is a damaged header, not a big record.
	maxRecordLen = 64 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// appendRecord appends one framed record to buf.
func appendRecord(buf []byte, typ byte, payload []byte) []byte {
	var h [recordHeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:4], uint32(len(payload)))
	crc := crc32.Update(crc32.Update(0, crcTable, []byte{typ}), crcTable, payload)
	binary.LittleEndian.PutUint32(h[4:8], crc)
	h[8] = typ
	binary.LittleEndian.PutUint32(h[9:13], crc32.Checksum(h[:9], crcTable))
	buf = append(buf, h[:]...)
	return append(buf, payload...)
}

// record is one decoded record and where it starts in its file.
type record struct {
	typ     byte
	payload []byte
	off     int64
}

func typeName(typ byte) string {
	switch typ {
	case recEntry:
		return "entry"
	case recHardState:
		return "hard state"
	case recSnapshot:
		return "snapshot marker"
	}
	return "unknown"
}

// decodeRecords splits a segment's bytes into records, verifying every
// checksum. In the final segment (last), a record cut short by the end of
// the file, or a tail of zero bytes, is a torn write: decoding stops there
// and tornAt is its offset (else -1). Anything else that does not check out
// is corruption, reported with the file name and offset.
func decodeRecords(file string, data []byte, last bool) (recs []record, tornAt int64, err error) {
	off := 0
	for off < len(data) {
		rest := data[off:]
		torn := func(format string, args ...any) ([]record, int64, error) {
			if last {
				return recs, int64(off), nil
			}
			// Only the final write can be torn: earlier segments were
			// fsync'd complete before the next one was created.
			return nil, -1, corruptf(file, int64(off), format, args...)
		}
		if len(rest) < recordHeaderLen {
			return torn("file ends %d bytes into a record header; expected a %d-byte header", len(rest), recordHeaderLen)
		}
		h := rest[:recordHeaderLen]
		wantH := binary.LittleEndian.Uint32(h[9:13])
		if gotH := crc32.Checksum(h[:9], crcTable); gotH != wantH {
			if allZero(rest) {
				return torn("zero bytes from here to the end of the file; expected a record header")
			}
			return nil, -1, corruptf(file, int64(off), "record header checksum mismatch: header says crc32c %#08x, computed %#08x", wantH, gotH)
		}
		n := binary.LittleEndian.Uint32(h[0:4])
		typ := h[8]
		if typ != recEntry && typ != recHardState && typ != recSnapshot {
			return nil, -1, corruptf(file, int64(off), "unknown record type %d; expected %d (entry), %d (hard state) or %d (snapshot marker)", typ, recEntry, recHardState, recSnapshot)
		}
		if n > maxRecordLen {
			return nil, -1, corruptf(file, int64(off), "record declares %d payload bytes; expected at most %d", n, maxRecordLen)
		}
		if uint64(len(rest)) < recordHeaderLen+uint64(n) {
			return torn("file ends %d bytes into a %d-byte %s record payload", len(rest)-recordHeaderLen, n, typeName(typ))
		}
		payload := rest[recordHeaderLen : recordHeaderLen+int(n)]
		want := binary.LittleEndian.Uint32(h[4:8])
		if got := crc32.Update(crc32.Update(0, crcTable, []byte{typ}), crcTable, payload); got != want {
			return nil, -1, corruptf(file, int64(off), "%s record checksum mismatch: header says crc32c %#08x, computed %#08x over %d payload bytes", typeName(typ), want, got, n)
		}
		recs = append(recs, record{typ: typ, payload: payload, off: int64(off)})
		off += recordHeaderLen + int(n)
	}
	return recs, -1, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
