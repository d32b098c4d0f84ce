package manager

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// testTimeout bounds every wait of these tests: generous for a loaded
// 2-core machine, only there so a broken manager fails instead of hanging.
const testTimeout = 30 * time.Second

func testConfig(t *testing.T) Config {
	return Config{
		DataDir:      t.TempDir(),
		NodeID:       store.NewID(),
		TickInterval: 10 * time.Millisecond,
	}
}

// eventually polls cond until it holds or testTimeout passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", testTimeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// running is one manager Run in the background, served on loopback.
type running struct {
	m      *Manager
	client shoalpb.ControlClient
	stop   func() error // stops Run and the server; returns Run's error
}

func start(t *testing.T, cfg Config) *running {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	m.Register(srv)
	go func() { _ = srv.Serve(lis) }() // returns when srv stops
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	stopped := false
	var runErr error
	stop := func() error {
		if stopped {
			return runErr
		}
		stopped = true
		cancel()
		select {
		case runErr = <-done:
		case <-time.After(testTimeout):
			t.Fatalf("Run did not return within %v of cancellation", testTimeout)
		}
		conn.Close()
		srv.Stop()
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return &running{m: m, client: shoalpb.NewControlClient(conn), stop: stop}
}

func TestManagerLifecycle(t *testing.T) {
	cfg := testConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := Init(ctx, cfg, &shoalpb.ClusterSpec{Name: "prod"}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	if has, err := HasState(cfg.DataDir); err != nil || !has {
		t.Errorf("HasState after Init = %v, %v; want true", has, err)
	}
	if err := Init(ctx, cfg, &shoalpb.ClusterSpec{Name: "prod"}); !errors.Is(err, ErrAlreadyInitialized) {
		t.Errorf("second Init = %v, want ErrAlreadyInitialized", err)
	}

	r := start(t, cfg)
	eventually(t, "leadership", r.m.IsLeader)

	cl, err := r.client.GetCluster(ctx, &shoalpb.GetClusterRequest{})
	if err != nil || cl.GetCluster().GetSpec().GetName() != "prod" || cl.GetCluster().GetId() == "" {
		t.Fatalf("GetCluster = %v, %v; want cluster prod with an id", cl, err)
	}
	var self *shoalpb.Node
	eventually(t, "this node recorded as leader", func() bool {
		resp, err := r.client.GetNode(ctx, &shoalpb.GetNodeRequest{Node: cfg.NodeID})
		self = resp.GetNode()
		return err == nil && self.GetManagerStatus().GetLeader()
	})
	if self.GetRole() != shoalpb.NodeRole_NODE_ROLE_MANAGER ||
		self.GetSpec().GetAvailability() != shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE {
		t.Errorf("this node = role %v availability %v, want manager, active", self.GetRole(), self.GetSpec().GetAvailability())
	}

	created, err := r.client.CreateService(ctx, &shoalpb.CreateServiceRequest{Spec: &shoalpb.ServiceSpec{
		Name:      "web",
		Container: &shoalpb.ContainerSpec{Image: "busybox:1.36"},
		Mode:      &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 2}},
	}})
	if err != nil {
		t.Fatalf("CreateService: %v", err)
	}
	svcID := created.GetService().GetId()
	// The orchestrator creates the tasks, the allocator moves them to
	// PENDING; with no agent connected no node is ready, so they wait
	// there.
	var tasks []*shoalpb.Task
	eventually(t, "2 allocated tasks of the service", func() bool {
		resp, err := r.client.ListTasks(ctx, &shoalpb.ListTasksRequest{ServiceIds: []string{svcID}})
		if err != nil {
			return false
		}
		tasks = resp.GetTasks()
		pending := 0
		for _, tk := range tasks {
			if tk.GetStatus().GetState() >= shoalpb.TaskState_TASK_STATE_PENDING {
				pending++
			}
		}
		return pending == 2
	})
	if err := r.stop(); err != nil {
		t.Fatalf("Run returned %v after cancellation, want nil", err)
	}

	// Reopened, the manager has everything: New replays the Raft state.
	r2 := start(t, cfg)
	r2.m.Store().View(func(tx store.ReadTx) {
		if svc := tx.ServiceByName("web"); svc.GetId() != svcID {
			t.Errorf("after restart, service web = %v, want id %s", svc, svcID)
		}
		if n := len(tx.TasksByService(svcID)); n != len(tasks) {
			t.Errorf("after restart, %d tasks, want %d", n, len(tasks))
		}
		if tx.GetCluster().GetId() != cl.GetCluster().GetId() {
			t.Errorf("after restart, cluster = %v, want %v", tx.GetCluster(), cl.GetCluster())
		}
	})

	// And it serves writes again once it leads.
	eventually(t, "leadership after restart", r2.m.IsLeader)
	_, err = r2.client.RemoveService(ctx, &shoalpb.RemoveServiceRequest{Service: "web"})
	if err != nil {
		t.Fatalf("RemoveService after restart: %v", err)
	}
	_, err = r2.client.GetService(ctx, &shoalpb.GetServiceRequest{Service: "web"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetService after removal = %v, want NotFound", err)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no node id", Config{DataDir: t.TempDir()}},
		{"no data dir", Config{NodeID: "n1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Errorf("New(%+v) succeeded, want an error", tc.cfg)
			}
			if err := Init(context.Background(), tc.cfg, nil); err == nil {
				t.Errorf("Init(%+v) succeeded, want an error", tc.cfg)
			}
		})
	}
}

func TestRaftIDFor(t *testing.T) {
	a, b := RaftIDFor("node-a"), RaftIDFor("node-b")
	if a == 0 || b == 0 || a == b {
		t.Errorf("RaftIDFor = %d, %d; want distinct non-zero ids", a, b)
	}
	if RaftIDFor("node-a") != a {
		t.Errorf("RaftIDFor is not stable across calls")
	}
}
