package gossip

// delegateVersion is the version of what Shoal carries over gossip
// besides membership. It is memberlist's delegate protocol version
// (exchanged in every alive message) and the first byte of the metadata,
// so that a member can tell what a member of another release sends.
//
// Version 1: the metadata is [version, flags]. The endpoint table, added
// since (user messages, broadcasts and push/pull state), did not change
// it: members of the first release ignore all three, and the table has
// its own format version (wireVersion) in every payload. Bumping the
// delegate version would have cost a rolling upgrade: memberlist refuses
// to merge with a member whose current version is outside the range every
// member understands, so a cluster mixing the releases would split.
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

// delegate is the memberlist.Delegate of a Member: the metadata, and the
// endpoint table's broadcasts (GetBroadcasts, NotifyMsg) and full
// exchange (LocalState, MergeRemoteState). None of its methods may block:
// memberlist calls them from its network loops.
type delegate struct{ m *Member }

// NodeMeta is this member's metadata, sent in every alive message.
func (d delegate) NodeMeta(limit int) []byte {
	var m meta
	if d.m.isLeaving.Load() {
		m.flags |= flagLeaving
	}
	if b := m.encode(); len(b) <= limit {
		return b
	}
	return nil
}

func (d delegate) NotifyMsg(b []byte) { d.m.receive(b) }

func (d delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.m.bcast.GetBroadcasts(overhead, limit)
}

func (d delegate) LocalState(bool) []byte { return d.m.localState() }

func (d delegate) MergeRemoteState(b []byte, _ bool) { d.m.mergeRemote(b) }
