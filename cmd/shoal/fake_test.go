package main

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeDaemon serves Control and Local on a unix socket, from canned state
// and per-test hooks, so the CLI runs end to end without shoald.
type fakeDaemon struct {
	shoalpb.UnimplementedControlServer
	shoalpb.UnimplementedLocalServer

	mu sync.Mutex // guards following
	// Canned state.
	nodeID   string
	nodes    []*shoalpb.Node
	services []*shoalpb.Service
	tasks    []*shoalpb.Task
	logs     []*shoalpb.LogLine
	images   []*shoalpb.ImageSummary
	// Hooks, when set, replace the canned answer.
	createErr  error
	listTasks  func(call int) []*shoalpb.Task
	updateHook func(call int, r *shoalpb.UpdateServiceRequest) error
	removeErr  map[string]error
	// Recorded requests.
	created        []*shoalpb.ServiceSpec
	listTasksCalls int
	updates        []*shoalpb.UpdateServiceRequest
	loadChunks     int
	loaded         []byte
	// Attachments: ConnectNetwork records its request and answers with
	// a NEW task "att1"; GetTask answers getTask(call), NotFound for nil.
	connects     []*shoalpb.ConnectNetworkRequest
	getTask      func(call int) *shoalpb.Task
	getTaskCalls int
}

func (f *fakeDaemon) ConnectNetwork(_ context.Context, r *shoalpb.ConnectNetworkRequest) (*shoalpb.ConnectNetworkResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.connects = append(f.connects, r)
	return &shoalpb.ConnectNetworkResponse{Attachment: &shoalpb.Task{
		Id: "att1", NodeId: r.GetNode(), Status: &shoalpb.TaskStatus{State: shoalpb.TaskState_TASK_STATE_NEW},
		Attachment: &shoalpb.Attachment{Netns: r.GetNetns(), Name: "dbg", Interfaces: []string{"eth1"}},
	}}, nil
}

func (f *fakeDaemon) GetTask(_ context.Context, r *shoalpb.GetTaskRequest) (*shoalpb.GetTaskResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.getTaskCalls++
	t := f.getTask(f.getTaskCalls)
	if t == nil {
		return nil, status.Errorf(codes.NotFound, "no such task: %s", r.GetTask())
	}
	return &shoalpb.GetTaskResponse{Task: t}, nil
}

func (f *fakeDaemon) ListNetworks(context.Context, *shoalpb.ListNetworksRequest) (*shoalpb.ListNetworksResponse, error) {
	return &shoalpb.ListNetworksResponse{Networks: []*shoalpb.Network{{Id: "net1", Spec: &shoalpb.NetworkSpec{Name: "tools"}}}}, nil
}

// startFake serves f on a socket in a directory of the test's own and
// returns the socket path.
func startFake(t *testing.T, f *fakeDaemon) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "shoal.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	shoalpb.RegisterControlServer(srv, f)
	shoalpb.RegisterLocalServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return sock
}

func (f *fakeDaemon) Info(context.Context, *shoalpb.InfoRequest) (*shoalpb.InfoResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &shoalpb.InfoResponse{NodeId: f.nodeID, Manager: true, ClusterId: "c1", Version: "9.9.9"}, nil
}

func (f *fakeDaemon) InitCluster(_ context.Context, r *shoalpb.InitClusterRequest) (*shoalpb.InitClusterResponse, error) {
	return &shoalpb.InitClusterResponse{ClusterId: "cluster-" + r.GetName(), NodeId: "node-1"}, nil
}

func (f *fakeDaemon) CreateService(_ context.Context, r *shoalpb.CreateServiceRequest) (*shoalpb.CreateServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.createErr != nil {
		return nil, f.createErr
	}
	f.created = append(f.created, r.GetSpec())
	svc := &shoalpb.Service{Id: "svc0123456789abcdef", Meta: &shoalpb.Meta{Version: 1}, Spec: r.GetSpec()}
	f.services = append(f.services, svc)
	return &shoalpb.CreateServiceResponse{Service: svc}, nil
}

func (f *fakeDaemon) GetService(_ context.Context, r *shoalpb.GetServiceRequest) (*shoalpb.GetServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.services {
		if s.GetId() == r.GetService() || s.GetSpec().GetName() == r.GetService() {
			return &shoalpb.GetServiceResponse{Service: proto.Clone(s).(*shoalpb.Service)}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "service %s not found", r.GetService())
}

func (f *fakeDaemon) ListServices(context.Context, *shoalpb.ListServicesRequest) (*shoalpb.ListServicesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &shoalpb.ListServicesResponse{Services: f.services}, nil
}

func (f *fakeDaemon) UpdateService(_ context.Context, r *shoalpb.UpdateServiceRequest) (*shoalpb.UpdateServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updates = append(f.updates, r)
	if f.updateHook != nil {
		if err := f.updateHook(len(f.updates), r); err != nil {
			return nil, err
		}
	}
	return &shoalpb.UpdateServiceResponse{Service: &shoalpb.Service{Id: r.GetServiceId(), Spec: r.GetSpec()}}, nil
}

func (f *fakeDaemon) RemoveService(_ context.Context, r *shoalpb.RemoveServiceRequest) (*shoalpb.RemoveServiceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.removeErr[r.GetService()]; err != nil {
		return nil, err
	}
	return &shoalpb.RemoveServiceResponse{}, nil
}

func (f *fakeDaemon) ListTasks(context.Context, *shoalpb.ListTasksRequest) (*shoalpb.ListTasksResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listTasksCalls++
	if f.listTasks != nil {
		return &shoalpb.ListTasksResponse{Tasks: f.listTasks(f.listTasksCalls)}, nil
	}
	return &shoalpb.ListTasksResponse{Tasks: f.tasks}, nil
}

func (f *fakeDaemon) ListNodes(context.Context, *shoalpb.ListNodesRequest) (*shoalpb.ListNodesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &shoalpb.ListNodesResponse{Nodes: f.nodes}, nil
}

func (f *fakeDaemon) GetNode(_ context.Context, r *shoalpb.GetNodeRequest) (*shoalpb.GetNodeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		if n.GetId() == r.GetNode() || n.GetDescription().GetHostname() == r.GetNode() {
			return &shoalpb.GetNodeResponse{Node: n}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "node %s not found", r.GetNode())
}

func (f *fakeDaemon) LoadImage(stream shoalpb.Local_LoadImageServer) error {
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.loadChunks++
		f.loaded = append(f.loaded, m.GetChunk()...)
		f.mu.Unlock()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.loaded) == 0 {
		return status.Error(codes.InvalidArgument, "load image archive: empty archive")
	}
	return stream.SendAndClose(&shoalpb.LoadImageResponse{Images: f.images})
}

func (f *fakeDaemon) ListImages(context.Context, *shoalpb.ListImagesRequest) (*shoalpb.ListImagesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &shoalpb.ListImagesResponse{Images: f.images}, nil
}

func (f *fakeDaemon) PullImage(r *shoalpb.PullImageRequest, stream shoalpb.Local_PullImageServer) error {
	if r.GetRef() == "shoal/nope" {
		return status.Error(codes.Unavailable, "pull shoal/nope: manifest unknown")
	}
	if err := stream.Send(&shoalpb.PullImageProgress{Message: "fetching manifest"}); err != nil {
		return err
	}
	return stream.Send(&shoalpb.PullImageProgress{Message: "pulled sha256:abc", Image: &shoalpb.ImageSummary{Digest: "sha256:abc"}})
}

func (f *fakeDaemon) ServiceLogs(_ *shoalpb.ServiceLogsRequest, stream shoalpb.Local_ServiceLogsServer) error {
	f.mu.Lock()
	logs := f.logs
	f.mu.Unlock()
	for _, l := range logs {
		if err := stream.Send(l); err != nil {
			return err
		}
	}
	return nil
}
