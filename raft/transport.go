package raft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"go.etcd.io/raft/v3/raftpb"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Transport tuning.
const (
	// DefaultPeerQueue messages wait per peer before new ones are dropped:
	// about maxInflightMsgs appends plus heartbeats, so a healthy peer
	// never loses one, and a dead one costs bounded memory.
	DefaultPeerQueue = 512
	// chunkSize splits large messages (snapshots, big appends): well under
	// gRPC's default 4 MiB receive limit.
	chunkSize = 1 << 20
	// maxMessageBytes bounds a reassembled message, so a broken or hostile
	// sender cannot make a member buffer without end.
	maxMessageBytes = 1 << 30
	// redialBackoff: after a failed connection attempt messages to that
	// peer are dropped (and it is reported unreachable) for this long,
	// instead of dialling on every heartbeat.
	redialBackoff = 100 * time.Millisecond
	// snapshotSendTimeout bounds one snapshot transfer; raft sends another
	// after a failure.
	snapshotSendTimeout = 5 * time.Minute
	// reportTimeout bounds how long a peer goroutine waits to hand a report
	// to a busy node loop.
	reportTimeout = time.Second
)

// errBackingOff: a message was dropped because the peer failed recently.
var errBackingOff = errors.New("raft transport: waiting to reconnect")

// TransportConfig configures a GRPCTransport.
type TransportConfig struct {
	Self uint64 // this member's raft id
	// Addr is this member's advertised address, sent with every message
	// so that a member that just joined can answer before it has learned
	// the address book from the log.
	Addr string
	// Dial connects to a peer; it supplies the credentials (mTLS in
	// production). Required.
	Dial func(ctx context.Context, addr string) (*grpc.ClientConn, error)
	// QueueSize is each peer's send queue; default DefaultPeerQueue.
	QueueSize int
	Logger    *slog.Logger // nil: discard
}

// GRPCTransport sends raft messages to peers over gRPC (the Raft service in
// proto/raft.proto) and serves incoming ones to a Node. Each peer has one
// sending goroutine with a bounded queue: Send never blocks, and drops a
// message when the queue is full (raft retransmits). Peers are found by
// id in the node's Members, or by the address their own messages carried.
// Create it with NewGRPCTransport, pass it as Config.Transport, Register
// it with the gRPC server and the opened Node, and Close it after Run
// returns.
type GRPCTransport struct {
	cfg    TransportConfig
	log    *slog.Logger
	ctx    context.Context // cancelled by Close: ends every peer goroutine
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex // guards following
	node   *Node
	peers  map[uint64]*peer
	hints  map[uint64]string // addresses learned from incoming messages
	closed bool
}

// NewGRPCTransport returns a transport; it starts no goroutine until
// messages are sent.
func NewGRPCTransport(cfg TransportConfig) *GRPCTransport {
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultPeerQueue
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &GRPCTransport{
		cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel,
		peers: make(map[uint64]*peer), hints: make(map[uint64]string),
	}
}

// Register serves the Raft service on s, stepping incoming messages into
// n, and makes n the node that peers' addresses and reports concern.
// Call it before n.Run (messages are only sent once it runs).
func (t *GRPCTransport) Register(s grpc.ServiceRegistrar, n *Node) {
	t.mu.Lock()
	t.node = n
	t.mu.Unlock()
	shoalpb.RegisterRaftServer(s, &raftServer{t: t})
}

// Close stops every peer goroutine and closes their connections; messages
// still queued are dropped. Send after Close drops everything.
func (t *GRPCTransport) Close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.cancel()
	t.wg.Wait()
}

// Send implements Transport: it queues each message for its peer.
func (t *GRPCTransport) Send(_ context.Context, msgs []*raftpb.Message) {
	for _, m := range msgs {
		if m.GetTo() == t.cfg.Self || m.GetTo() == 0 {
			continue
		}
		p := t.peer(m.GetTo())
		if p == nil {
			return // closed
		}
		if m.GetType() == raftpb.MsgSnap {
			select {
			case p.snapq <- m:
			default:
				// One snapshot at a time; raft must hear that this one
				// failed, or the peer stays waiting for it.
				select {
				case p.snapDropped <- struct{}{}:
				default:
				}
			}
			continue
		}
		select {
		case p.q <- m:
		default:
			t.log.Debug("raft peer queue full: dropping message", "peer", m.GetTo(), "type", m.GetType().String())
		}
	}
}

// peer returns id's peer, starting its goroutine on first use; nil once
// closed.
func (t *GRPCTransport) peer(id uint64) *peer {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	p, ok := t.peers[id]
	if !ok {
		p = &peer{
			t: t, id: id,
			q:           make(chan *raftpb.Message, t.cfg.QueueSize),
			snapq:       make(chan *raftpb.Message, 1),
			snapDropped: make(chan struct{}, 1),
		}
		t.peers[id] = p
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			p.run(t.ctx)
		}()
	}
	return p
}

// addr is where id is reached: the node's address book first, else what
// id's own messages said.
func (t *GRPCTransport) addr(id uint64) string {
	t.mu.Lock()
	n, hint := t.node, t.hints[id]
	t.mu.Unlock()
	if n != nil {
		if a := n.memberAddr(id); a != "" {
			return a
		}
	}
	return hint
}

func (t *GRPCTransport) currentNode() *Node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.node
}

func (t *GRPCTransport) reportUnreachable(id uint64) {
	if n := t.currentNode(); n != nil {
		ctx, cancel := context.WithTimeout(t.ctx, reportTimeout)
		n.ReportUnreachable(ctx, id)
		cancel()
	}
}

func (t *GRPCTransport) reportSnapshot(id uint64, ok bool) {
	if n := t.currentNode(); n != nil {
		ctx, cancel := context.WithTimeout(t.ctx, reportTimeout)
		n.ReportSnapshot(ctx, id, ok)
		cancel()
	}
}

// peer is one remote member: its queues and, owned by its goroutine, its
// connection and stream.
type peer struct {
	t           *GRPCTransport
	id          uint64
	q           chan *raftpb.Message
	snapq       chan *raftpb.Message
	snapDropped chan struct{}

	// Owned by run's goroutine.
	conn      *grpc.ClientConn
	connAddr  string
	stream    grpc.ClientStreamingClient[shoalpb.RaftMessage, shoalpb.RaftAck]
	streamEnd context.CancelFunc
	retryAt   time.Time
}

func (p *peer) run(ctx context.Context) {
	defer p.closeConn()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-p.q:
			p.send(ctx, m)
		case m := <-p.snapq:
			p.sendSnapshot(ctx, m)
		case <-p.snapDropped:
			p.t.reportSnapshot(p.id, false)
		}
	}
}

// client returns a connection to the peer's current address, dialling
// (again) when needed.
func (p *peer) client(ctx context.Context) (shoalpb.RaftClient, error) {
	addr := p.t.addr(p.id)
	if addr == "" {
		return nil, fmt.Errorf("no address known for raft member %d", p.id)
	}
	if p.conn != nil && p.connAddr != addr {
		p.closeConn() // the member moved
	}
	if p.t.cfg.Dial == nil {
		return nil, errors.New("raft transport: TransportConfig.Dial is nil")
	}
	if p.conn == nil {
		if time.Now().Before(p.retryAt) {
			return nil, errBackingOff
		}
		conn, err := p.t.cfg.Dial(ctx, addr)
		if err != nil {
			p.retryAt = time.Now().Add(redialBackoff)
			return nil, fmt.Errorf("dial raft member %d at %s: %w", p.id, addr, err)
		}
		p.conn, p.connAddr = conn, addr
	}
	return shoalpb.NewRaftClient(p.conn), nil
}

// send writes m on the long-lived stream, opening it when needed. On any
// failure the stream and connection are dropped (a later message dials
// again) and raft is told the peer is unreachable.
func (p *peer) send(ctx context.Context, m *raftpb.Message) {
	err := p.trySend(ctx, m)
	if err == nil || errors.Is(err, errBackingOff) {
		return // dropped quietly: the failure that started the wait was reported
	}
	// Dial afresh next time (after redialBackoff) rather than wait out the
	// connection's own reconnect backoff, which grows to minutes while a
	// peer is down and would keep it cut off long after it is back.
	p.closeConn()
	if ctx.Err() != nil {
		return
	}
	p.retryAt = time.Now().Add(redialBackoff)
	p.t.log.Debug("raft message not sent", "peer", p.id, "type", m.GetType().String(), "err", err)
	p.t.reportUnreachable(p.id)
}

func (p *peer) trySend(ctx context.Context, m *raftpb.Message) error {
	if p.stream == nil {
		if time.Now().Before(p.retryAt) {
			return errBackingOff
		}
		c, err := p.client(ctx)
		if err != nil {
			return err
		}
		sctx, cancel := context.WithCancel(ctx)
		st, err := c.Stream(sctx)
		if err != nil {
			cancel()
			return fmt.Errorf("open raft stream to member %d: %w", p.id, err)
		}
		p.stream, p.streamEnd = st, cancel
	}
	return writeMessage(p.stream, m, p.t.cfg.Addr)
}

// sendSnapshot sends a snapshot on a stream of its own and reports to raft
// whether the peer acknowledged it.
func (p *peer) sendSnapshot(ctx context.Context, m *raftpb.Message) {
	err := func() error {
		c, err := p.client(ctx)
		if err != nil {
			return err
		}
		sctx, cancel := context.WithTimeout(ctx, snapshotSendTimeout)
		defer cancel()
		st, err := c.Stream(sctx)
		if err != nil {
			return fmt.Errorf("open snapshot stream: %w", err)
		}
		if err := writeMessage(st, m, p.t.cfg.Addr); err != nil {
			return err
		}
		ack, err := st.CloseAndRecv()
		if err != nil {
			return fmt.Errorf("finish snapshot stream: %w", err)
		}
		if ack.GetMessages() != 1 {
			return fmt.Errorf("peer acknowledged %d messages, want 1", ack.GetMessages())
		}
		return nil
	}()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		p.t.log.Warn("sending raft snapshot failed", "peer", p.id, "index", m.GetSnapshot().GetMetadata().GetIndex(), "err", err)
		if !errors.Is(err, errBackingOff) {
			p.closeConn()
			p.retryAt = time.Now().Add(redialBackoff)
		}
		p.t.reportUnreachable(p.id)
		p.t.reportSnapshot(p.id, false)
		return
	}
	p.t.log.Info("sent raft snapshot", "peer", p.id, "index", m.GetSnapshot().GetMetadata().GetIndex())
	p.t.reportSnapshot(p.id, true)
}

// writeMessage marshals m and sends it in chunks.
func writeMessage(st grpc.ClientStreamingClient[shoalpb.RaftMessage, shoalpb.RaftAck], m *raftpb.Message, self string) error {
	data, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode raft %s message: %w", m.GetType().String(), err)
	}
	first := true
	for first || len(data) > 0 {
		n := min(len(data), chunkSize)
		rm := &shoalpb.RaftMessage{Chunk: data[:n], More: n < len(data)}
		if first {
			rm.FromAddr = self
		}
		if err := st.Send(rm); err != nil {
			return fmt.Errorf("send raft %s message: %w", m.GetType().String(), err)
		}
		data, first = data[n:], false
	}
	return nil
}

func (p *peer) resetStream() {
	if p.stream != nil {
		_ = p.stream.CloseSend()
		p.streamEnd()
		p.stream, p.streamEnd = nil, nil
	}
}

func (p *peer) closeConn() {
	p.resetStream()
	if p.conn != nil {
		if err := p.conn.Close(); err != nil {
			p.t.log.Debug("close raft peer connection", "peer", p.id, "err", err)
		}
		p.conn, p.connAddr = nil, ""
	}
}

// raftServer serves the Raft service for a GRPCTransport.
type raftServer struct {
	shoalpb.UnimplementedRaftServer
	t *GRPCTransport
}

// Stream reassembles messages from their chunks and steps them into the
// node, in order.
func (s *raftServer) Stream(st grpc.ClientStreamingServer[shoalpb.RaftMessage, shoalpb.RaftAck]) error {
	n := s.t.currentNode()
	if n == nil {
		return errors.New("raft transport: no node registered")
	}
	ctx := st.Context()
	var buf []byte
	var fromAddr string
	var count uint64
	for {
		rm, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return st.SendAndClose(&shoalpb.RaftAck{Messages: count})
		}
		if err != nil {
			return err
		}
		if a := rm.GetFromAddr(); a != "" {
			fromAddr = a
		}
		if len(buf)+len(rm.GetChunk()) > maxMessageBytes {
			return fmt.Errorf("raft transport: message over %d bytes", maxMessageBytes)
		}
		buf = append(buf, rm.GetChunk()...)
		if rm.GetMore() {
			continue
		}
		m := &raftpb.Message{}
		if err := proto.Unmarshal(buf, m); err != nil {
			return fmt.Errorf("raft transport: decode message: %w", err)
		}
		buf = nil
		if fromAddr != "" && m.GetFrom() != 0 {
			s.t.mu.Lock()
			s.t.hints[m.GetFrom()] = fromAddr
			s.t.mu.Unlock()
		}
		if err := n.Step(ctx, m); err != nil {
			return fmt.Errorf("raft transport: step message: %w", err)
		}
		count++
	}
}
