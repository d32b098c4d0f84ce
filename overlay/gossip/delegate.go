package gossip

import "sync/atomic"

// delegateVersion is the version of what Shoal carries over gossip
// besides membership: node metadata now, the endpoint table later. It is
// memberlist's delegate protocol version (exchanged in every alive message)
// and the first byte of the metadata, so that a member can tell what a
// member of another release sends.
//
// Version 1: the metadata is [version, flags]; no user messages,
// broadcasts or push/pull state.
const delegateVersion uint8 = 1

// delegateVersionMin is the oldest version this release understands.
const delegateVersionMin uint8 = 1

// Metadata flags.
const (
	// flagLeaving says the member is about to leave on purpose. memberlist
	// tells its callbacks that a member is gone but not whether it left or
	// failed, so a member announces its leave in its metadata first.
	flagLeaving uint8 = 1 << 0
)

// meta is the metadata a member announces in its alive messages. Keep it
// small: it is in every one of them (memberlist caps it at 512 bytes).
type meta struct {
	flags uint8
}

func (m meta) encode() []byte { return []byte{delegateVersion, m.flags} }

// decodeMeta reads the metadata of a member of this or a later release;
// ok is false for anything else (nothing to learn from it).
func decodeMeta(b []byte) (m meta, ok bool) {
	if len(b) < 2 || b[0] < delegateVersionMin {
		return meta{}, false
	}
	return meta{flags: b[1]}, true
}

// delegate is the memberlist.Delegate of a Member. The endpoint table
// will plug in here: GetBroadcasts and NotifyMsg for incremental updates,
// LocalState and MergeRemoteState for the periodic full exchange. None of
// its methods may block: memberlist calls them from its network loops.
type delegate struct {
	leaving *atomic.Bool // this member is leaving
}

// NodeMeta is this member's metadata, sent in every alive message.
func (d delegate) NodeMeta(limit int) []byte {
	var m meta
	if d.leaving.Load() {
		m.flags |= flagLeaving
	}
	if b := m.encode(); len(b) <= limit {
		return b
	}
	return nil
}

func (delegate) NotifyMsg([]byte)                  {}
func (delegate) GetBroadcasts(_, _ int) [][]byte   { return nil }
func (delegate) LocalState(bool) []byte            { return nil }
func (delegate) MergeRemoteState(_ []byte, _ bool) {}
