package gossip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// The endpoint table's wire format. Every message and push/pull state
// starts with wireVersion and a kind; a member ignores (and logs at
// debug) a payload of a version or kind it does not know, or one that
// does not decode. A release that changes the format must keep sending
// version 1 until every member understands the next one.
//
// The format is hand-written binary, not JSON nor protobuf: a state goes
// out in UDP packets of about 1,200 bytes, and what fills it is
// endpoints, which repeat the same service and network ids. Here an
// endpoint costs its task id (25 bytes) plus about 25 (ids, names and
// aliases other than the task id are indexes into a per-state string
// table, addresses and MACs are raw bytes, lengths are varints): about
// 50 bytes, 20 endpoints a packet; in JSON it takes about 250. The
// format is not shared with anything but other members, so protobuf's
// schema evolution buys nothing that the version byte does not, and
// proto/ stays the control plane's.
//
//	message  = wireVersion kind body
//	fragment = node:str version:uvarint index:uvarint count:uvarint part:rest
//	table    = n:uvarint (len:uvarint state){n}
//	state    = node:str version:uvarint flags:byte vtep:addr [wgKey:32]
//	           [wgAddr:addr wgPort:uint16] n:uvarint str{n}
//	           n:uvarint endpoint{n}
//	endpoint = task:str serviceID:ref serviceName:ref network:ref
//	           addr:addr mac:bytes eflags:byte n:uvarint ref{n}
//	str, bytes = len:uvarint raw;  ref = uvarint index into the strings
//	addr     = len:byte (0, 4 or 16) raw
//
// Integers are unsigned varints, but wgPort (big endian).
const wireVersion uint8 = 1

// Message kinds.
const (
	// kindFragment is one part of a node's encoded state, broadcast.
	kindFragment uint8 = 1
	// kindTable is a member's whole table, in push/pull.
	kindTable uint8 = 2
)

// State flags.
const (
	stateHasWGKey      uint8 = 1 << 0
	stateHasWGEndpoint uint8 = 1 << 1
)

// Endpoint flags.
const endpointReady uint8 = 1 << 0

// errDecode wraps every decoding error.
var errDecode = errors.New("decode endpoint table payload")

// encodeState encodes a normalized, valid state.
func encodeState(s NodeState) []byte {
	var strs []string
	index := make(map[string]uint64)
	ref := func(str string) uint64 {
		i, ok := index[str]
		if !ok {
			i = uint64(len(strs))
			index[str] = i
			strs = append(strs, str)
		}
		return i
	}
	// Endpoints first, into their own buffer, to build the string table
	// the state lists before them.
	var eps []byte
	for _, e := range s.Endpoints {
		eps = appendString(eps, e.TaskID)
		eps = binary.AppendUvarint(eps, ref(e.ServiceID))
		eps = binary.AppendUvarint(eps, ref(e.ServiceName))
		eps = binary.AppendUvarint(eps, ref(e.NetworkID))
		eps = appendAddr(eps, e.Addr)
		eps = appendString(eps, string(e.MAC))
		var f uint8
		if e.Ready {
			f |= endpointReady
		}
		eps = append(eps, f)
		eps = binary.AppendUvarint(eps, uint64(len(e.Aliases)))
		for _, a := range e.Aliases {
			eps = binary.AppendUvarint(eps, ref(a))
		}
	}

	b := make([]byte, 0, 64+len(eps)+16*len(strs))
	b = appendString(b, s.NodeID)
	b = binary.AppendUvarint(b, s.Version)
	var f uint8
	if s.WireGuardKey != [32]byte{} {
		f |= stateHasWGKey
	}
	if s.WireGuardEndpoint.IsValid() {
		f |= stateHasWGEndpoint
	}
	b = append(b, f)
	b = appendAddr(b, s.VTEP)
	if f&stateHasWGKey != 0 {
		b = append(b, s.WireGuardKey[:]...)
	}
	if f&stateHasWGEndpoint != 0 {
		b = appendAddr(b, s.WireGuardEndpoint.Addr())
		b = binary.BigEndian.AppendUint16(b, s.WireGuardEndpoint.Port())
	}
	b = binary.AppendUvarint(b, uint64(len(strs)))
	for _, str := range strs {
		b = appendString(b, str)
	}
	b = binary.AppendUvarint(b, uint64(len(s.Endpoints)))
	return append(b, eps...)
}

// decodeState decodes what encodeState encoded.
func decodeState(b []byte) (NodeState, error) {
	r := reader{b: b}
	var s NodeState
	s.NodeID = r.str()
	s.Version = r.uvarint()
	f := r.byte()
	s.VTEP = r.addr()
	if f&stateHasWGKey != 0 {
		copy(s.WireGuardKey[:], r.raw(32))
	}
	if f&stateHasWGEndpoint != 0 {
		a := r.addr()
		s.WireGuardEndpoint = netip.AddrPortFrom(a, binary.BigEndian.Uint16(r.raw(2)))
	}
	// Every string costs at least its length byte, every endpoint at
	// least 8 bytes: counts beyond what is left are corrupt, and checking
	// them first keeps a bad count from allocating much.
	strs := make([]string, r.count(1))
	for i := range strs {
		strs[i] = r.str()
	}
	ref := func() string {
		i := r.uvarint()
		if i >= uint64(len(strs)) {
			r.fail(fmt.Errorf("string %d of %d", i, len(strs)))
			return ""
		}
		return strs[i]
	}
	if n := r.count(8); n > 0 {
		s.Endpoints = make([]Endpoint, n)
	}
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		e.TaskID = r.str()
		e.ServiceID = ref()
		e.ServiceName = ref()
		e.NetworkID = ref()
		e.Addr = r.addr()
		if mac := r.str(); mac != "" {
			e.MAC = net.HardwareAddr(mac)
		}
		e.Ready = r.byte()&endpointReady != 0
		if n := r.count(1); n > 0 {
			e.Aliases = make([]string, n)
		}
		for j := range e.Aliases {
			e.Aliases[j] = ref()
		}
	}
	if r.err == nil && len(r.b) > 0 {
		r.fail(fmt.Errorf("%d trailing bytes", len(r.b)))
	}
	if r.err != nil {
		return NodeState{}, r.err
	}
	// What another member sends is held to what SetLocal accepts.
	s.normalize()
	if err := s.validate(); err != nil {
		return NodeState{}, fmt.Errorf("%w: %w", errDecode, err)
	}
	return s, nil
}

// fragment is a part of a node's encoded state, as broadcast.
type fragment struct {
	node    string
	version uint64
	index   int
	count   int
	part    []byte
}

// fragmentHeaderMax bounds a fragment's header: wire version, kind, the
// node id (maxNameLen) and three varints.
const fragmentHeaderMax = 2 + 2 + maxNameLen + 3*binary.MaxVarintLen64

// maxFragments bounds the parts of one state a member reassembles.
const maxFragments = maxStateSize/(maxBroadcastSize-fragmentHeaderMax) + 1

// splitState cuts an encoded state into broadcast messages of at most
// maxBroadcastSize bytes each.
func splitState(node string, version uint64, state []byte) [][]byte {
	var header []byte
	header = append(header, wireVersion, kindFragment)
	header = appendString(header, node)
	header = binary.AppendUvarint(header, version)
	size := maxBroadcastSize - len(header) - 2*binary.MaxVarintLen32
	count := (len(state) + size - 1) / size
	count = max(count, 1)
	msgs := make([][]byte, 0, count)
	for i := range count {
		part := state[i*size : min((i+1)*size, len(state))]
		m := make([]byte, 0, len(header)+2*binary.MaxVarintLen32+len(part))
		m = append(m, header...)
		m = binary.AppendUvarint(m, uint64(i))
		m = binary.AppendUvarint(m, uint64(count))
		msgs = append(msgs, append(m, part...))
	}
	return msgs
}

// decodeFragment decodes a kindFragment message, wire version and kind
// included. part aliases b.
func decodeFragment(b []byte) (fragment, error) {
	r := reader{b: b}
	if v, k := r.byte(), r.byte(); r.err == nil && (v != wireVersion || k != kindFragment) {
		return fragment{}, fmt.Errorf("%w: version %d kind %d, want a version %d fragment", errDecode, v, k, wireVersion)
	}
	var f fragment
	f.node = r.str()
	f.version = r.uvarint()
	index, count := r.uvarint(), r.uvarint()
	f.part = r.b
	if r.err != nil {
		return fragment{}, r.err
	}
	if f.node == "" || len(f.node) > maxNameLen || count == 0 || count > maxFragments || index >= count || len(f.part) == 0 {
		return fragment{}, fmt.Errorf("%w: fragment %d/%d of node %q (%d bytes)", errDecode, index, count, f.node, len(f.part))
	}
	f.index, f.count = int(index), int(count)
	return f, nil
}

// encodeTable encodes encoded states as a kindTable message.
func encodeTable(states [][]byte) []byte {
	n := 2 + binary.MaxVarintLen64
	for _, s := range states {
		n += binary.MaxVarintLen64 + len(s)
	}
	b := make([]byte, 0, n)
	b = append(b, wireVersion, kindTable)
	b = binary.AppendUvarint(b, uint64(len(states)))
	for _, s := range states {
		b = appendString(b, string(s))
	}
	return b
}

// decodeTable splits a kindTable message, wire version and kind included,
// into encoded states (aliasing b), which the caller decodes one by one.
func decodeTable(b []byte) ([][]byte, error) {
	r := reader{b: b}
	if v, k := r.byte(), r.byte(); r.err == nil && (v != wireVersion || k != kindTable) {
		return nil, fmt.Errorf("%w: version %d kind %d, want a version %d table", errDecode, v, k, wireVersion)
	}
	states := make([][]byte, r.count(1))
	for i := range states {
		states[i] = r.raw(r.length())
	}
	if r.err == nil && len(r.b) > 0 {
		r.fail(fmt.Errorf("%d trailing bytes", len(r.b)))
	}
	if r.err != nil {
		return nil, r.err
	}
	return states, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendAddr(b []byte, a netip.Addr) []byte {
	switch {
	case !a.IsValid():
		return append(b, 0)
	case a.Is4():
		a4 := a.As4()
		return append(append(b, 4), a4[:]...)
	default:
		a16 := a.As16()
		return append(append(b, 16), a16[:]...)
	}
}

// reader decodes the wire format. Its first error sticks: later reads
// return zero values, so a decoder checks err once at the end.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %w", errDecode, err)
	}
	r.b = nil
}

func (r *reader) raw(n int) []byte {
	if r.err != nil {
		return make([]byte, n)
	}
	if n < 0 || n > len(r.b) {
		r.fail(fmt.Errorf("%d bytes wanted, %d left", n, len(r.b)))
		return make([]byte, max(n, 0))
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() uint8 { return r.raw(1)[0] }

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(errors.New("bad varint"))
		return 0
	}
	r.b = r.b[n:]
	return v
}

// length reads a byte count, which must fit in what is left.
func (r *reader) length() int {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail(fmt.Errorf("length %d, %d bytes left", n, len(r.b)))
		return 0
	}
	return int(n)
}

// count reads a number of items of at least minSize bytes each, which
// must fit in what is left.
func (r *reader) count(minSize int) int {
	n := r.uvarint()
	if n > uint64(len(r.b)/minSize) {
		r.fail(fmt.Errorf("%d items, %d bytes left", n, len(r.b)))
		return 0
	}
	return int(n)
}

func (r *reader) str() string { return string(r.raw(r.length())) }

func (r *reader) addr() netip.Addr {
	switch n := r.byte(); n {
	case 0:
		return netip.Addr{}
	case 4:
		return netip.AddrFrom4([4]byte(r.raw(4)))
	case 16:
		return netip.AddrFrom16([16]byte(r.raw(16)))
	default:
		r.fail(fmt.Errorf("address of %d bytes", n))
		return netip.Addr{}
	}
}
