package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/shoal-project/shoal/internal/ca"
	"github.com/shoal-project/shoal/manager"
	"github.com/shoal-project/shoal/manager/nodeca"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// forwardedServices are served by the Raft leader: a follower manager hands
// their calls to it, so any manager (and any manager's local socket) serves
// every call. Writes must go to the leader anyway; reads forwarded there see
// every acknowledged write.
var forwardedServices = map[string]bool{
	shoalpb.Control_ServiceDesc.ServiceName:    true,
	shoalpb.Dispatcher_ServiceDesc.ServiceName: true,
}

// methodDescriptor finds the descriptor of a full gRPC method name
// ("/shoal.v1.Control/CreateService").
func methodDescriptor(fullMethod string) (protoreflect.MethodDescriptor, error) {
	name := strings.ReplaceAll(strings.TrimPrefix(fullMethod, "/"), "/", ".")
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		return nil, fmt.Errorf("method %s: %w", fullMethod, err)
	}
	md, ok := d.(protoreflect.MethodDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a method", fullMethod)
	}
	return md, nil
}

func newMessage(d protoreflect.MessageDescriptor) (proto.Message, error) {
	t, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName())
	if err != nil {
		return nil, err
	}
	return t.New().Interface(), nil
}

func serviceOf(fullMethod string) string {
	s, _, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	return s
}

// StaleHeader is the response header a manager sets on a read it answered
// from its own state because no leader could be reached: the answer may
// miss the latest writes.
const StaleHeader = "shoal-stale"

// isRead reports whether a Control method only reads.
func isRead(fullMethod string) bool {
	_, name, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	return strings.HasPrefix(name, "Get") && name != "GetJoinToken" || strings.HasPrefix(name, "List")
}

// OperatorTokenHeader carries an operator's token: from the CLI to any
// daemon, and from a worker to the manager it forwards a control call to.
const OperatorTokenHeader = "shoal-operator-token"

func operatorToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(OperatorTokenHeader); len(v) > 0 {
		return v[0]
	}
	return ""
}

// operatorCheck lets a worker's certificate call the control API only with
// the cluster's operator token: the worker is relaying an operator's call.
// Without one, a worker is refused as if the policy named managers only.
func (d *Daemon) operatorCheck(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if serviceOf(info.FullMethod) != shoalpb.Control_ServiceDesc.ServiceName {
		return handler(ctx, req)
	}
	id, ok := ca.IdentityFromContext(ctx)
	if !ok || id.Role == ca.RoleManager {
		return handler(ctx, req)
	}
	m, err := d.manager()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	if !nodeca.CheckOperatorToken(m.Store(), operatorToken(ctx)) {
		return nil, status.Errorf(codes.PermissionDenied, "node %s (%s) may not call %s: requires manager, or a valid operator token", id.NodeID, id.Role, info.FullMethod)
	}
	return handler(ctx, req)
}

// workerForward relays a control call made on a worker's socket to the
// managers, with the operator's token; without a token it refuses.
func (d *Daemon) workerForward(ctx context.Context, req any, info *grpc.UnaryServerInfo) (any, bool, error) {
	d.mu.Lock()
	conn, isWorker := d.workerConn, d.worker && d.mgr == nil
	d.mu.Unlock()
	if !isWorker || conn == nil || serviceOf(info.FullMethod) != shoalpb.Control_ServiceDesc.ServiceName {
		return nil, false, nil
	}
	tok := operatorToken(ctx)
	if tok == "" {
		return nil, true, status.Error(codes.FailedPrecondition, errWorker.Error())
	}
	md, err := methodDescriptor(info.FullMethod)
	if err != nil {
		return nil, true, status.Error(codes.Internal, err.Error())
	}
	out, err := newMessage(md.Output())
	if err != nil {
		return nil, true, status.Error(codes.Internal, err.Error())
	}
	octx := metadata.AppendToOutgoingContext(ctx, OperatorTokenHeader, tok)
	if err := conn.Invoke(octx, info.FullMethod, req, out); err != nil {
		return nil, true, err
	}
	return out, true, nil
}

// leaderConn returns a connection to the leader when this host runs a
// manager that is not the leader; (nil, nil) when the call is to be served
// here.
func (d *Daemon) leaderConn() (*grpc.ClientConn, error) {
	d.mu.Lock()
	m := d.mgr
	d.mu.Unlock()
	if m == nil || m.IsLeader() {
		return nil, nil
	}
	addr, ok := m.LeaderAddr()
	if !ok {
		return nil, status.Error(codes.Unavailable, "no manager is the leader right now (an election is running, or the managers lost their quorum); try again")
	}
	d.fwdMu.Lock()
	defer d.fwdMu.Unlock()
	if c, ok := d.fwdConns[addr]; ok {
		return c, nil
	}
	creds, err := d.tlsMaterial()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "forward to the leader: %v", err)
	}
	c, err := d.dialManager(addr, creds)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "forward to the leader at %s: %v", addr, err)
	}
	if d.fwdConns == nil {
		d.fwdConns = map[string]*grpc.ClientConn{}
	}
	d.fwdConns[addr] = c
	return c, nil
}

// closeForwarding closes the connections to leaders.
func (d *Daemon) closeForwarding() {
	d.fwdMu.Lock()
	defer d.fwdMu.Unlock()
	for addr, c := range d.fwdConns {
		_ = c.Close()
		delete(d.fwdConns, addr)
	}
}

// forwardUnary is a unary server interceptor that hands leader-only calls
// to the leader.
func (d *Daemon) forwardUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !forwardedServices[serviceOf(info.FullMethod)] {
		return handler(ctx, req)
	}
	if out, handled, err := d.workerForward(ctx, req, info); handled {
		return out, err
	}
	conn, err := d.leaderConn()
	if err != nil && isRead(info.FullMethod) && serviceOf(info.FullMethod) == shoalpb.Control_ServiceDesc.ServiceName {
		// Without a leader, a read is still worth answering, labelled.
		_ = grpc.SetHeader(ctx, metadata.Pairs(StaleHeader, "no leader: this manager's state may miss the latest writes"))
		return handler(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	controlRead := isRead(info.FullMethod) && serviceOf(info.FullMethod) == shoalpb.Control_ServiceDesc.ServiceName
	if conn == nil {
		if controlRead {
			d.confirmRead(ctx)
		}
		out, err := handler(ctx, req)
		if !errors.Is(err, manager.ErrLeadershipMoved) {
			return out, err
		}
		// This manager handed leadership over so the call can proceed
		// (demoting it): the new leader finishes it.
		if conn, err = d.leaderConn(); err != nil {
			return nil, err
		}
		if conn == nil {
			return nil, status.Error(codes.Unavailable, "leadership moved and came back here: try again")
		}
	}
	if controlRead && d.followerRead(ctx) {
		// ReadIndex through the leader confirmed this follower has applied
		// every acknowledged write: answer here, linearizably.
		return handler(ctx, req)
	}
	md, err := methodDescriptor(info.FullMethod)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	out, err := newMessage(md.Output())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := conn.Invoke(ctx, info.FullMethod, req, out); err != nil {
		return nil, err
	}
	return out, nil
}

// forwardStream is the stream interceptor for server-streaming leader-only
// calls (dispatcher sessions and assignments).
func (d *Daemon) forwardStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !forwardedServices[serviceOf(info.FullMethod)] || info.IsClientStream {
		return handler(srv, ss)
	}
	conn, err := d.leaderConn()
	if err != nil {
		return err
	}
	if conn == nil {
		return handler(srv, ss)
	}
	md, err := methodDescriptor(info.FullMethod)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	in, err := newMessage(md.Input())
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if err := ss.RecvMsg(in); err != nil {
		return err
	}
	cs, err := conn.NewStream(ss.Context(), &grpc.StreamDesc{ServerStreams: true}, info.FullMethod)
	if err != nil {
		return err
	}
	if err := cs.SendMsg(in); err != nil {
		return err
	}
	if err := cs.CloseSend(); err != nil {
		return err
	}
	for {
		out, err := newMessage(md.Output())
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if err := cs.RecvMsg(out); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := ss.SendMsg(out); err != nil {
			return err
		}
	}
}

// readIndexTimeout bounds the wait for a quorum to confirm a read: past it,
// the read is answered anyway, labelled as possibly stale.
const readIndexTimeout = 2 * time.Second

// confirmRead makes a read on the leader linearizable: ReadIndex checks
// with a quorum that this manager still leads and has applied every
// acknowledged write. When that fails (the leader lost its quorum and does
// not know it yet), the read is still answered, with the staleness header.
func (d *Daemon) confirmRead(ctx context.Context) {
	m, err := d.manager()
	if err != nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, readIndexTimeout)
	defer cancel()
	if err := m.ReadIndex(rctx); err != nil {
		_ = grpc.SetHeader(ctx, metadata.Pairs(StaleHeader, "no quorum confirmed this read: this manager's state may miss the latest writes"))
	}
}

// followerRead reports whether this follower may answer a read itself: its
// ReadIndex (a round trip to the leader, no log write) returned.
func (d *Daemon) followerRead(ctx context.Context) bool {
	m, err := d.manager()
	if err != nil {
		return false
	}
	rctx, cancel := context.WithTimeout(ctx, readIndexTimeout)
	defer cancel()
	return m.ReadIndex(rctx) == nil
}
