package dispatcher

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
)

// waitTimeout bounds every wait so a broken dispatcher fails the test
// instead of hanging it.
const waitTimeout = 5 * time.Second

// testPeriod is the heartbeat period of the tests: short, so the expiry
// checks (every half period, real time) come quickly; deadlines themselves
// follow the fake clock.
const testPeriod = 20 * time.Millisecond

const (
	nodeReady        = shoalpb.NodeState_NODE_STATE_READY
	nodeDown         = shoalpb.NodeState_NODE_STATE_DOWN
	nodeDisconnected = shoalpb.NodeState_NODE_STATE_DISCONNECTED
	stAssigned       = shoalpb.TaskState_TASK_STATE_ASSIGNED
	stStarting       = shoalpb.TaskState_TASK_STATE_STARTING
	stRunning        = shoalpb.TaskState_TASK_STATE_RUNNING
	stPending        = shoalpb.TaskState_TASK_STATE_PENDING
	stShutdown       = shoalpb.TaskState_TASK_STATE_SHUTDOWN
)

type fakeClock struct {
	mu sync.Mutex // guards following
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type harness struct {
	t      *testing.T
	s      *store.Store
	d      *Dispatcher
	clock  *fakeClock
	client shoalpb.DispatcherClient
}

// newHarness serves a dispatcher over bufconn. preload runs on the store
// before the dispatcher starts; run=false leaves Run unstarted.
func newHarness(t *testing.T, run bool, preload func(b *store.Batch)) *harness {
	t.Helper()
	s := store.New()
	s.SetProposer(store.NewLocalProposer(s))
	h := &harness{t: t, s: s, clock: &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}}
	if preload != nil {
		h.update(func(_ store.ReadTx, b *store.Batch) error { preload(b); return nil })
	}
	d := New(s, Config{HeartbeatPeriod: testPeriod, Clock: h.clock.Now})
	h.d = d

	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	shoalpb.RegisterDispatcherServer(srv, d)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = srv.Serve(lis)
	}()
	ctx, cancel := context.WithCancel(context.Background())
	if run {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.Run(ctx); err != nil {
				t.Errorf("Run: %v", err)
			}
		}()
	}
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial bufconn: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		srv.Stop()
		wg.Wait()
	})
	h.client = shoalpb.NewDispatcherClient(conn)
	return h
}

func (h *harness) update(fn func(tx store.ReadTx, b *store.Batch) error) {
	h.t.Helper()
	if err := h.s.Update(context.Background(), fn); err != nil {
		h.t.Fatalf("update store: %v", err)
	}
}

func (h *harness) node(id string) *shoalpb.Node {
	var n *shoalpb.Node
	h.s.View(func(tx store.ReadTx) { n = tx.GetNode(id) })
	return n
}

func (h *harness) task(id string) *shoalpb.Task {
	var t *shoalpb.Task
	h.s.View(func(tx store.ReadTx) { t = tx.GetTask(id) })
	return t
}

// eventually polls cond until it returns nil, failing with its last error.
func (h *harness) eventually(cond func() error) {
	h.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) waitNodeState(id string, want shoalpb.NodeState) {
	h.t.Helper()
	h.eventually(func() error {
		if got := h.node(id).GetStatus().GetState(); got != want {
			return errors.New("node " + id + " is " + got.String() + ", want " + want.String())
		}
		return nil
	})
}

// agentSession is an open session as the agent sees it.
type agentSession struct {
	id     string
	node   *shoalpb.Node
	stream grpc.ServerStreamingClient[shoalpb.SessionMessage]
	cancel context.CancelFunc
}

// openSession opens a session for nodeID, retrying while the dispatcher's
// Run has not started yet.
func (h *harness) openSession(nodeID string) *agentSession {
	h.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		ctx, cancel := context.WithCancel(context.Background())
		stream, err := h.client.Session(ctx, &shoalpb.SessionRequest{
			NodeId:      nodeID,
			Description: &shoalpb.NodeDescription{Hostname: "host-" + nodeID},
		})
		if err == nil {
			var msg *shoalpb.SessionMessage
			msg, err = stream.Recv()
			if err == nil {
				h.t.Cleanup(cancel)
				return &agentSession{id: msg.GetSessionId(), node: msg.GetNode(), stream: stream, cancel: cancel}
			}
		}
		cancel()
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			h.t.Fatalf("open session of %s: %v", nodeID, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSessionRegistersNode(t *testing.T) {
	tests := []struct {
		name      string
		existing  *shoalpb.Node
		wantRole  shoalpb.NodeRole
		wantAvail shoalpb.NodeAvailability
	}{
		{
			name:      "new node becomes an active worker",
			wantRole:  shoalpb.NodeRole_NODE_ROLE_WORKER,
			wantAvail: shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
		},
		{
			name: "existing node keeps its role and availability",
			existing: &shoalpb.Node{
				Id:     "n1",
				Role:   shoalpb.NodeRole_NODE_ROLE_MANAGER,
				Spec:   &shoalpb.NodeSpec{Availability: shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN},
				Status: &shoalpb.NodeStatus{State: nodeDown},
			},
			wantRole:  shoalpb.NodeRole_NODE_ROLE_MANAGER,
			wantAvail: shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, true, func(b *store.Batch) {
				if tc.existing != nil {
					b.CreateNode(tc.existing)
				}
			})
			sess := h.openSession("n1")
			if sess.id == "" || sess.node.GetId() != "n1" {
				t.Fatalf("first message: session %q node %q, want a session id and node n1", sess.id, sess.node.GetId())
			}
			n := h.node("n1")
			if n.GetStatus().GetState() != nodeReady || n.GetStatus().GetAddr() == "" {
				t.Errorf("node status %v addr %q, want READY with the peer address", n.GetStatus().GetState(), n.GetStatus().GetAddr())
			}
			if n.GetRole() != tc.wantRole || n.GetSpec().GetAvailability() != tc.wantAvail {
				t.Errorf("node role %v availability %v, want %v %v", n.GetRole(), n.GetSpec().GetAvailability(), tc.wantRole, tc.wantAvail)
			}
			if got := n.GetDescription().GetHostname(); got != "host-n1" {
				t.Errorf("node hostname %q, want the reported host-n1", got)
			}
			if sess.node.GetMeta().GetVersion() != n.GetMeta().GetVersion() {
				t.Errorf("session message carries node version %d, store has %d", sess.node.GetMeta().GetVersion(), n.GetMeta().GetVersion())
			}

			// The agent goes away: the node is disconnected.
			sess.cancel()
			h.waitNodeState("n1", nodeDisconnected)
		})
	}
}

func TestNewSessionReplacesOld(t *testing.T) {
	h := newHarness(t, true, nil)
	old := h.openSession("n1")
	cur := h.openSession("n1")
	if old.id == cur.id {
		t.Fatalf("second session reused id %s", old.id)
	}
	if _, err := old.stream.Recv(); status.Code(err) != codes.NotFound {
		t.Errorf("old session stream ended with %v, want NotFound", err)
	}
	// The old stream has fully ended: the node must still be READY.
	if got := h.node("n1").GetStatus().GetState(); got != nodeReady {
		t.Errorf("node %v after its old session ended, want READY", got)
	}
	_, err := h.client.Heartbeat(context.Background(), &shoalpb.HeartbeatRequest{NodeId: "n1", SessionId: old.id})
	if status.Code(err) != codes.NotFound {
		t.Errorf("heartbeat with the replaced session: %v, want NotFound", err)
	}
}

func TestHeartbeat(t *testing.T) {
	h := newHarness(t, true, nil)
	sess := h.openSession("n1")
	h.openSession("n2")
	tests := []struct {
		name     string
		req      *shoalpb.HeartbeatRequest
		wantCode codes.Code
	}{
		{name: "current session", req: &shoalpb.HeartbeatRequest{NodeId: "n1", SessionId: sess.id}, wantCode: codes.OK},
		{name: "unknown session", req: &shoalpb.HeartbeatRequest{NodeId: "n1", SessionId: "nope"}, wantCode: codes.NotFound},
		{name: "another node's session", req: &shoalpb.HeartbeatRequest{NodeId: "n2", SessionId: sess.id}, wantCode: codes.NotFound},
		{name: "unknown node", req: &shoalpb.HeartbeatRequest{NodeId: "n9", SessionId: sess.id}, wantCode: codes.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := h.client.Heartbeat(context.Background(), tc.req)
			if status.Code(err) != tc.wantCode {
				t.Fatalf("Heartbeat: %v, want %v", err, tc.wantCode)
			}
			if err != nil {
				if !strings.Contains(status.Convert(err).Message(), "open a new session") {
					t.Errorf("error %q does not tell the agent to open a new session", err)
				}
				return
			}
			if got := resp.GetPeriod().AsDuration(); got != testPeriod {
				t.Errorf("period %v, want %v", got, testPeriod)
			}
		})
	}
}

func TestHeartbeatExpiry(t *testing.T) {
	h := newHarness(t, true, nil)
	alive := h.openSession("alive")
	silent := h.openSession("silent")
	// Four periods pass; only "alive" heartbeats in each.
	for range HeartbeatGraceMultiplier + 1 {
		h.clock.Advance(testPeriod)
		if _, err := h.client.Heartbeat(context.Background(), &shoalpb.HeartbeatRequest{NodeId: "alive", SessionId: alive.id}); err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
	}
	h.waitNodeState("silent", nodeDown)
	if msg := h.node("silent").GetStatus().GetMessage(); msg != "heartbeat expired" {
		t.Errorf("down node message %q", msg)
	}
	if got := h.node("alive").GetStatus().GetState(); got != nodeReady {
		t.Errorf("heartbeating node is %v, want READY", got)
	}
	if _, err := silent.stream.Recv(); status.Code(err) != codes.NotFound {
		t.Errorf("expired session stream ended with %v, want NotFound", err)
	}
	_, err := h.client.Heartbeat(context.Background(), &shoalpb.HeartbeatRequest{NodeId: "silent", SessionId: silent.id})
	if status.Code(err) != codes.NotFound {
		t.Errorf("heartbeat after expiry: %v, want NotFound", err)
	}
}

func TestReadyNodeWithoutSessionMarkedDownAfterLeaderChange(t *testing.T) {
	// A node READY when this dispatcher starts (the previous leader saw
	// it) that never opens a session goes DOWN after the grace period.
	h := newHarness(t, true, func(b *store.Batch) {
		b.CreateNode(&shoalpb.Node{Id: "gone", Status: &shoalpb.NodeStatus{State: nodeReady}})
	})
	h.openSession("other") // Run has started
	h.clock.Advance(HeartbeatGraceMultiplier*testPeriod + time.Millisecond)
	h.waitNodeState("gone", nodeDown)
}

func TestCallsRefusedWhenNotRunning(t *testing.T) {
	h := newHarness(t, false, nil)
	stream, err := h.client.Session(context.Background(), &shoalpb.SessionRequest{NodeId: "n1"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("Session on a dispatcher not running: %v, want Unavailable", err)
	}
	if h.node("n1") != nil {
		t.Errorf("node registered by a dispatcher not running")
	}
}

// assignedTask returns a task of node in state.
func assignedTask(id, nodeID string, state shoalpb.TaskState) *shoalpb.Task {
	return &shoalpb.Task{
		Id:           id,
		ServiceId:    "svc",
		NodeId:       nodeID,
		DesiredState: stRunning,
		Spec:         &shoalpb.ServiceSpec{Name: "web", Container: &shoalpb.ContainerSpec{Image: "busybox"}},
		Status:       &shoalpb.TaskStatus{State: state},
	}
}

// recvTasks receives one assignments message and returns its task ids and
// desired states, "id:STATE" sorted by id.
func recvTasks(t *testing.T, stream grpc.ServerStreamingClient[shoalpb.AssignmentsMessage]) string {
	t.Helper()
	msg, err := stream.Recv()
	if err != nil {
		t.Fatalf("receive assignments: %v", err)
	}
	var parts []string
	for _, task := range msg.GetTasks() {
		parts = append(parts, task.GetId()+":"+strings.TrimPrefix(task.GetDesiredState().String(), "TASK_STATE_"))
	}
	return strings.Join(parts, ",")
}

func TestAssignments(t *testing.T) {
	h := newHarness(t, true, nil)
	sess := h.openSession("n1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := h.client.Assignments(ctx, &shoalpb.AssignmentsRequest{NodeId: "n1", SessionId: sess.id})
	if err != nil {
		t.Fatalf("Assignments: %v", err)
	}
	if got := recvTasks(t, stream); got != "" {
		t.Fatalf("first message %q, want no tasks", got)
	}

	// Assigned to n1: sent. Another node's, or not yet assigned: not.
	h.update(func(_ store.ReadTx, b *store.Batch) error {
		b.CreateTask(assignedTask("t1", "n1", stAssigned))
		b.CreateTask(assignedTask("other", "n2", stAssigned))
		b.CreateTask(assignedTask("waiting", "n1", stPending))
		return nil
	})
	if got, want := recvTasks(t, stream), "t1:RUNNING"; got != want {
		t.Fatalf("after assignment got %q, want %q", got, want)
	}

	// The agent's own status report is not echoed back; the next
	// message is the desired state change that follows it.
	if _, err := h.client.UpdateTaskStatus(context.Background(), &shoalpb.UpdateTaskStatusRequest{
		NodeId: "n1", SessionId: sess.id,
		Updates: []*shoalpb.TaskStatusUpdate{{TaskId: "t1", Status: &shoalpb.TaskStatus{State: stRunning}}},
	}); err != nil {
		t.Fatalf("UpdateTaskStatus: %v", err)
	}
	// Leave an echo time to be sent, so it is not coalesced with the
	// change below. (The test passes whatever the timing when there is
	// no echo.)
	time.Sleep(4 * AssignmentsBatchDelay)
	h.update(func(tx store.ReadTx, b *store.Batch) error {
		task := proto.Clone(tx.GetTask("t1")).(*shoalpb.Task)
		task.DesiredState = stShutdown
		b.UpdateTask(task)
		return nil
	})
	if got, want := recvTasks(t, stream), "t1:SHUTDOWN"; got != want {
		t.Fatalf("after desired state change got %q, want %q", got, want)
	}

	h.update(func(_ store.ReadTx, b *store.Batch) error {
		b.DeleteTask("t1", 0)
		return nil
	})
	if got := recvTasks(t, stream); got != "" {
		t.Fatalf("after delete got %q, want no tasks", got)
	}
}

func TestUpdateTaskStatus(t *testing.T) {
	tests := []struct {
		name     string
		updates  []*shoalpb.TaskStatusUpdate
		wantCode codes.Code
		want     map[string]shoalpb.TaskState // task -> state after
	}{
		{
			name:    "forward",
			updates: []*shoalpb.TaskStatusUpdate{{TaskId: "starting", Status: &shoalpb.TaskStatus{State: stRunning}}},
			want:    map[string]shoalpb.TaskState{"starting": stRunning},
		},
		{
			name:    "backwards ignored",
			updates: []*shoalpb.TaskStatusUpdate{{TaskId: "running", Status: &shoalpb.TaskStatus{State: stStarting}}},
			want:    map[string]shoalpb.TaskState{"running": stRunning},
		},
		{
			name: "several reports of one task apply in order",
			updates: []*shoalpb.TaskStatusUpdate{
				{TaskId: "starting", Status: &shoalpb.TaskStatus{State: stRunning}},
				{TaskId: "starting", Status: &shoalpb.TaskStatus{State: stStarting}},
				{TaskId: "running", Status: &shoalpb.TaskStatus{State: stShutdown}},
			},
			want: map[string]shoalpb.TaskState{"starting": stRunning, "running": stShutdown},
		},
		{
			name: "another node's task refuses the whole request",
			updates: []*shoalpb.TaskStatusUpdate{
				{TaskId: "starting", Status: &shoalpb.TaskStatus{State: stRunning}},
				{TaskId: "foreign", Status: &shoalpb.TaskStatus{State: stRunning}},
			},
			wantCode: codes.PermissionDenied,
			want:     map[string]shoalpb.TaskState{"starting": stStarting, "foreign": stStarting},
		},
		{
			name:    "deleted task ignored",
			updates: []*shoalpb.TaskStatusUpdate{{TaskId: "deleted", Status: &shoalpb.TaskStatus{State: stRunning}}},
			want:    map[string]shoalpb.TaskState{"starting": stStarting},
		},
		{
			name:     "missing status",
			updates:  []*shoalpb.TaskStatusUpdate{{TaskId: "starting"}},
			wantCode: codes.InvalidArgument,
			want:     map[string]shoalpb.TaskState{"starting": stStarting},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, true, func(b *store.Batch) {
				b.CreateTask(assignedTask("starting", "n1", stStarting))
				b.CreateTask(assignedTask("running", "n1", stRunning))
				b.CreateTask(assignedTask("foreign", "n2", stStarting))
			})
			sess := h.openSession("n1")
			_, err := h.client.UpdateTaskStatus(context.Background(), &shoalpb.UpdateTaskStatusRequest{
				NodeId: "n1", SessionId: sess.id, Updates: tc.updates,
			})
			if status.Code(err) != tc.wantCode {
				t.Fatalf("UpdateTaskStatus: %v, want %v", err, tc.wantCode)
			}
			initial := map[string]shoalpb.TaskState{"starting": stStarting, "running": stRunning, "foreign": stStarting}
			for id, want := range tc.want {
				task := h.task(id)
				if got := task.GetStatus().GetState(); got != want {
					t.Errorf("task %s state %v, want %v", id, got, want)
				}
				if want != initial[id] && task.GetStatus().GetTimestamp() == nil {
					t.Errorf("task %s status recorded without a timestamp", id)
				}
			}
		})
	}
}

func TestCallsWithUnknownSession(t *testing.T) {
	h := newHarness(t, true, nil)
	h.openSession("n1")
	ctx := context.Background()
	_, err := h.client.UpdateTaskStatus(ctx, &shoalpb.UpdateTaskStatusRequest{NodeId: "n1", SessionId: "bogus"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("UpdateTaskStatus with unknown session: %v, want NotFound", err)
	}
	stream, err := h.client.Assignments(ctx, &shoalpb.AssignmentsRequest{NodeId: "n1", SessionId: "bogus"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Errorf("Assignments with unknown session: %v, want NotFound", err)
	}
}

func TestAssignmentsCarryNetworksAndVIPs(t *testing.T) {
	h := newHarness(t, true, nil)
	sess := h.openSession("n1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := h.client.Assignments(ctx, &shoalpb.AssignmentsRequest{NodeId: "n1", SessionId: sess.id})
	if err != nil {
		t.Fatalf("Assignments: %v", err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	attached := assignedTask("t1", "n1", stAssigned)
	attached.Networks = []*shoalpb.NetworkAttachment{{NetworkId: "front", Addresses: []string{"10.10.0.3/24"}}}
	h.update(func(_ store.ReadTx, b *store.Batch) error {
		b.CreateNetwork(&shoalpb.Network{Id: "front", Vni: 4096, Subnet: "10.10.0.0/24", Gateway: "10.10.0.1"})
		b.CreateNetwork(&shoalpb.Network{Id: "other", Vni: 4097, Subnet: "10.10.1.0/24", Gateway: "10.10.1.1"})
		b.CreateService(&shoalpb.Service{Id: "web", Spec: &shoalpb.ServiceSpec{Name: "web", Networks: []*shoalpb.NetworkAttachmentConfig{{Target: "front"}}},
			Endpoint: &shoalpb.ServiceEndpoint{VirtualIps: []*shoalpb.VirtualIP{{NetworkId: "front", Addr: "10.10.0.2/24"}}}})
		b.CreateService(&shoalpb.Service{Id: "db", Spec: &shoalpb.ServiceSpec{Name: "db", Networks: []*shoalpb.NetworkAttachmentConfig{{Target: "other"}}}})
		b.CreateTask(attached)
		return nil
	})
	msg, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.GetNetworks()) != 1 || msg.GetNetworks()[0].GetVni() != 4096 {
		t.Errorf("networks %v, want front only", msg.GetNetworks())
	}
	if len(msg.GetServices()) != 1 || msg.GetServices()[0].GetSpec().GetName() != "web" ||
		msg.GetServices()[0].GetEndpoint().GetVirtualIps()[0].GetAddr() != "10.10.0.2/24" {
		t.Errorf("services %v, want web with its VIP only", msg.GetServices())
	}

	// A new service on the network is pushed although no task changed.
	h.update(func(_ store.ReadTx, b *store.Batch) error {
		b.CreateService(&shoalpb.Service{Id: "api", Spec: &shoalpb.ServiceSpec{Name: "api", Networks: []*shoalpb.NetworkAttachmentConfig{{Target: "front"}}},
			Endpoint: &shoalpb.ServiceEndpoint{VirtualIps: []*shoalpb.VirtualIP{{NetworkId: "front", Addr: "10.10.0.4/24"}}}})
		return nil
	})
	if msg, err = stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if len(msg.GetServices()) != 2 {
		t.Errorf("after api was created: services %v, want api and web", msg.GetServices())
	}
}
