package orchestrator_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/shoal-project/shoal/manager/allocator"
	"github.com/shoal-project/shoal/manager/dispatcher"
	"github.com/shoal-project/shoal/manager/orchestrator"
	"github.com/shoal-project/shoal/manager/placement"
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
)

// TestLeaderComponentsTogether runs the orchestrator, allocator, placement
// and dispatcher on one store, with two agents played over gRPC: a service
// goes from spec to tasks assigned to the agents, and a failed task is
// replaced and reassigned.
func TestLeaderComponentsTogether(t *testing.T) {
	const timeout = 10 * time.Second
	s := store.New()
	s.SetProposer(store.NewLocalProposer(s))

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	d := dispatcher.New(s, dispatcher.Config{})
	for _, run := range []func(context.Context) error{
		orchestrator.New(s, orchestrator.Config{}).Run,
		allocator.New(s, nil).Run,
		placement.New(s, nil).Run,
		d.Run,
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				t.Errorf("component Run: %v", err)
			}
		}()
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	shoalpb.RegisterDispatcherServer(srv, d)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = srv.Serve(lis)
	}()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		srv.Stop()
		wg.Wait()
	})
	client := shoalpb.NewDispatcherClient(conn)

	// Two agents connect and follow their assignments.
	type agent struct {
		session string
		mu      sync.Mutex // guards following
		tasks   []*shoalpb.Task
	}
	agents := map[string]*agent{"n1": {}, "n2": {}}
	for id, a := range agents {
		deadline := time.Now().Add(timeout)
		for {
			stream, err := client.Session(ctx, &shoalpb.SessionRequest{NodeId: id})
			if err == nil {
				var msg *shoalpb.SessionMessage
				if msg, err = stream.Recv(); err == nil {
					a.session = msg.GetSessionId()
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("open session of %s: %v", id, err)
			}
			time.Sleep(10 * time.Millisecond) // the dispatcher's Run may not have started
		}
		stream, err := client.Assignments(ctx, &shoalpb.AssignmentsRequest{NodeId: id, SessionId: a.session})
		if err != nil {
			t.Fatalf("assignments of %s: %v", id, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				msg, err := stream.Recv()
				if err != nil {
					return
				}
				a.mu.Lock()
				a.tasks = msg.GetTasks()
				a.mu.Unlock()
			}
		}()
	}
	// sent returns how many runnable replicated and global tasks each
	// agent was last sent.
	sent := func(id string) (replicas, global int) {
		a := agents[id]
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, task := range a.tasks {
			switch {
			case task.GetDesiredState() != shoalpb.TaskState_TASK_STATE_RUNNING:
			case task.GetSlot() == 0:
				global++
			default:
				replicas++
			}
		}
		return replicas, global
	}

	err = s.Update(ctx, func(_ store.ReadTx, b *store.Batch) error {
		b.CreateService(&shoalpb.Service{Id: "web", Spec: &shoalpb.ServiceSpec{
			Name:      "web",
			Container: &shoalpb.ContainerSpec{Image: "busybox"},
			Mode:      &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 3}},
		}})
		b.CreateService(&shoalpb.Service{Id: "mon", Spec: &shoalpb.ServiceSpec{
			Name:      "mon",
			Container: &shoalpb.ContainerSpec{Image: "busybox"},
			Mode:      &shoalpb.ServiceSpec_Global{Global: &shoalpb.GlobalService{}},
		}})
		return nil
	})
	if err != nil {
		t.Fatalf("create services: %v", err)
	}
	// Replicas spread over both nodes (2+1, which way depends on which
	// tasks each placement pass saw), plus one global task on each node.
	deadline := time.Now().Add(timeout)
	for {
		r1, g1 := sent("n1")
		r2, g2 := sent("n2")
		if r1+r2 == 3 && r1 >= 1 && r2 >= 1 && g1 == 1 && g2 == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents were sent n1: %d replicas %d global, n2: %d replicas %d global; want 3 replicas on both and 1 global each", r1, g1, r2, g2)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The agent of the node running slot 1 reports it failed: a new slot
	// 1 task is assigned and the failed one is told to shut down.
	var failed *shoalpb.Task
	var failedOn string
	for id, a := range agents {
		a.mu.Lock()
		for _, task := range a.tasks {
			if task.GetSlot() == 1 && task.GetServiceId() == "web" {
				failed, failedOn = task, id
			}
		}
		a.mu.Unlock()
	}
	if _, err := client.UpdateTaskStatus(ctx, &shoalpb.UpdateTaskStatusRequest{
		NodeId: failedOn, SessionId: agents[failedOn].session,
		Updates: []*shoalpb.TaskStatusUpdate{{TaskId: failed.GetId(), Status: &shoalpb.TaskStatus{State: shoalpb.TaskState_TASK_STATE_FAILED}}},
	}); err != nil {
		t.Fatalf("report failure: %v", err)
	}
	deadline = time.Now().Add(timeout)
	for {
		var replaced, shutdown bool
		s.View(func(tx store.ReadTx) {
			for _, task := range tx.TasksByService("web") {
				if task.GetSlot() != 1 {
					continue
				}
				if task.GetId() == failed.GetId() {
					shutdown = task.GetDesiredState() == shoalpb.TaskState_TASK_STATE_SHUTDOWN
				} else if task.GetStatus().GetState() == shoalpb.TaskState_TASK_STATE_ASSIGNED {
					replaced = true
				}
			}
		})
		if replaced && shutdown {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("failed task shut down=%v, replacement assigned=%v; want both", shutdown, replaced)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
