package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	stRunning  = shoalpb.TaskState_TASK_STATE_RUNNING
	stPending  = shoalpb.TaskState_TASK_STATE_PENDING
	stShutdown = shoalpb.TaskState_TASK_STATE_SHUTDOWN
	stFailed   = shoalpb.TaskState_TASK_STATE_FAILED
	stRejected = shoalpb.TaskState_TASK_STATE_REJECTED
)

func webTask(id string, slot uint64, desired, state shoalpb.TaskState, created time.Time, errMsg string) *shoalpb.Task {
	return &shoalpb.Task{
		Id: id, ServiceId: "svc0123456789abcdef", ServiceName: "web", Slot: slot, NodeId: "node-a-id",
		Meta:         &shoalpb.Meta{CreatedAt: timestamppb.New(created)},
		Spec:         &shoalpb.ServiceSpec{Container: &shoalpb.ContainerSpec{Image: "shoal/web:1@sha256:0123"}},
		DesiredState: desired,
		Status:       &shoalpb.TaskStatus{State: state, Err: errMsg, Timestamp: timestamppb.New(created), Addresses: []string{"10.10.0.5/24"}},
	}
}

func TestServiceCreate(t *testing.T) {
	t0 := time.Now()
	tests := []struct {
		name       string
		args       []string
		listTasks  func(call int) []*shoalpb.Task
		createErr  error
		wantCode   int
		wantStdout string
		wantStderr []string // in order
		wantSpec   func(t *testing.T, s *shoalpb.ServiceSpec)
		wantPolls  bool
	}{
		{
			name: "waits until every slot runs",
			args: []string{"service", "create", "--name", "web", "--replicas", "2", "-e", "A=1", "shoal/web", "serve", "--port", "80"},
			listTasks: func(call int) []*shoalpb.Task {
				switch call {
				case 1:
					return []*shoalpb.Task{{ServiceName: "web", Slot: 1, DesiredState: stRunning, Status: &shoalpb.TaskStatus{State: stPending, Message: "allocating"}}}
				case 2, 3:
					return []*shoalpb.Task{webTask("t1", 1, stRunning, stRunning, t0, ""), webTask("t2", 2, stRunning, stPending, t0, "")}
				}
				return []*shoalpb.Task{webTask("t1", 1, stRunning, stRunning, t0, ""), webTask("t2", 2, stRunning, stRunning, t0, "")}
			},
			wantCode:   exitOK,
			wantStdout: "svc0123456789abcdef\n",
			// Unchanged states are not repeated when not on a terminal.
			wantStderr: []string{"web: 0/2 running (pending: allocating)\nweb: 1/2 running\nweb: 2/2 running\n"},
			wantSpec: func(t *testing.T, s *shoalpb.ServiceSpec) {
				c := s.GetContainer()
				if !slices.Equal(c.GetArgs(), []string{"serve", "--port", "80"}) || !slices.Equal(c.GetEnv(), []string{"A=1"}) || s.GetReplicated().GetReplicas() != 2 {
					t.Errorf("sent spec %v", s)
				}
			},
			wantPolls: true,
		},
		{
			name: "rejected task fails the command",
			args: []string{"service", "create", "--name", "web", "--replicas", "2", "shoal/nope"},
			listTasks: func(int) []*shoalpb.Task {
				return []*shoalpb.Task{
					webTask("t1", 1, stRunning, stRunning, t0, ""),
					webTask("t2", 2, stShutdown, stRejected, t0, "pull shoal/nope:latest: manifest unknown"),
				}
			},
			wantCode:   exitFailure,
			wantStdout: "svc0123456789abcdef\n",
			wantStderr: []string{"web: 1/2 running\n", "Error: task web.2 rejected: pull shoal/nope:latest: manifest unknown\n"},
			wantPolls:  true,
		},
		{
			name: "gives up after --timeout",
			args: []string{"service", "create", "--name", "web", "--timeout", "700ms", "shoal/web"},
			listTasks: func(int) []*shoalpb.Task {
				return []*shoalpb.Task{webTask("t1", 1, stRunning, stPending, t0, "")}
			},
			wantCode:   exitFailure,
			wantStdout: "svc0123456789abcdef\n",
			wantStderr: []string{"web: 0/1 running\n", "Error: service web did not converge within 700ms: 0/1 running"},
			wantPolls:  true,
		},
		{
			name:       "detach does not wait",
			args:       []string{"service", "create", "-d", "--mode", "global", "shoal/agent"},
			wantCode:   exitOK,
			wantStdout: "svc0123456789abcdef\n",
			wantSpec: func(t *testing.T, s *shoalpb.ServiceSpec) {
				if s.GetGlobal() == nil {
					t.Errorf("sent spec %v, want global", s)
				}
			},
		},
		{
			name:       "zero replicas converge at once",
			args:       []string{"service", "create", "--replicas", "0", "--name", "idle", "shoal/web"},
			listTasks:  func(int) []*shoalpb.Task { return nil },
			wantCode:   exitOK,
			wantStdout: "svc0123456789abcdef\n",
			wantStderr: []string{"idle: 0/0 running\n"},
			wantPolls:  true,
		},
		{
			name:       "daemon error printed without gRPC noise",
			args:       []string{"service", "create", "--name", "web", "shoal/web"},
			createErr:  status.Error(codes.AlreadyExists, "service web already exists"),
			wantCode:   exitFailure,
			wantStderr: []string{"Error: create service: service web already exists\n"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeDaemon{listTasks: tt.listTasks, createErr: tt.createErr}
			r := runCLI(t, startFake(t, f), nil, tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", r.code, tt.wantCode, r.stderr)
			}
			if r.stdout != tt.wantStdout {
				t.Errorf("stdout %q, want %q", r.stdout, tt.wantStdout)
			}
			rest := r.stderr
			for _, w := range tt.wantStderr {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("stderr lacks %q (in order):\n%s", w, r.stderr)
				}
				rest = rest[i+len(w):]
			}
			if strings.Contains(r.stderr, "rpc error") {
				t.Errorf("gRPC noise in stderr:\n%s", r.stderr)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if (f.listTasksCalls > 0) != tt.wantPolls {
				t.Errorf("ListTasks called %d times, want polling %v", f.listTasksCalls, tt.wantPolls)
			}
			if tt.wantSpec != nil {
				if len(f.created) != 1 {
					t.Fatalf("%d services created, want 1", len(f.created))
				}
				tt.wantSpec(t, f.created[0])
			}
		})
	}
}

func TestServiceScale(t *testing.T) {
	conflict := status.Error(codes.FailedPrecondition, "service web changed since version 1")
	tests := []struct {
		name        string
		conflicts   int
		args        []string
		wantCode    int
		wantStdout  string
		wantStderr  string
		wantUpdates int
	}{
		{name: "scales", args: []string{"service", "scale", "web=5"}, wantCode: exitOK, wantStdout: "web scaled to 5\n", wantUpdates: 1},
		{name: "retries a version race", conflicts: 2, args: []string{"service", "scale", "web=5"}, wantCode: exitOK, wantStdout: "web scaled to 5\n", wantUpdates: 3},
		{
			name: "gives up after three retries", conflicts: 10, args: []string{"service", "scale", "web=5"},
			wantCode: exitFailure, wantStderr: "Error: scale web: service web changed since version 1\n", wantUpdates: 1 + maxScaleRetries,
		},
		{
			name: "unknown service", args: []string{"service", "scale", "nope=1"},
			wantCode: exitFailure, wantStderr: "Error: service nope: service nope not found\n",
		},
		{
			name: "global refused", args: []string{"service", "scale", "agent=2"},
			wantCode: exitFailure, wantStderr: "Error: scale agent: only replicated services can be scaled (this one is global)\n",
		},
		{
			name: "goes on after one failure", args: []string{"service", "scale", "nope=1", "web=0"},
			wantCode: exitFailure, wantStdout: "web scaled to 0\n", wantStderr: "Error: service nope: service nope not found\n", wantUpdates: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeDaemon{services: []*shoalpb.Service{
				{Id: "s-web", Meta: &shoalpb.Meta{Version: 1}, Spec: &shoalpb.ServiceSpec{Name: "web", Container: &shoalpb.ContainerSpec{Image: "img"},
					Mode: &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 2}}}},
				{Id: "s-agent", Meta: &shoalpb.Meta{Version: 1}, Spec: &shoalpb.ServiceSpec{Name: "agent", Mode: &shoalpb.ServiceSpec_Global{Global: &shoalpb.GlobalService{}}}},
			}}
			// Each conflict is another writer bumping the version: the
			// retry must carry the version it re-read.
			f.updateHook = func(call int, r *shoalpb.UpdateServiceRequest) error {
				web := f.services[0]
				if r.GetVersion() != web.GetMeta().GetVersion() {
					t.Errorf("update %d carried version %d, stored is %d", call, r.GetVersion(), web.GetMeta().GetVersion())
				}
				if call <= tt.conflicts {
					web.Meta.Version++
					return conflict
				}
				if r.GetSpec().GetContainer().GetImage() != "img" {
					t.Errorf("update lost the rest of the spec: %v", r.GetSpec())
				}
				return nil
			}
			r := runCLI(t, startFake(t, f), nil, tt.args...)
			if r.code != tt.wantCode || r.stdout != tt.wantStdout || r.stderr != tt.wantStderr {
				t.Errorf("got code %d stdout %q stderr %q; want %d %q %q", r.code, r.stdout, r.stderr, tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.updates) != tt.wantUpdates {
				t.Errorf("%d updates, want %d", len(f.updates), tt.wantUpdates)
			}
			if tt.wantCode == exitOK {
				if got := f.updates[len(f.updates)-1].GetSpec().GetReplicated().GetReplicas(); got != 5 && got != 0 {
					t.Errorf("replicas sent %d", got)
				}
			}
		})
	}
}

func TestServiceRm(t *testing.T) {
	f := &fakeDaemon{removeErr: map[string]error{"nope": status.Error(codes.NotFound, "service nope not found")}}
	r := runCLI(t, startFake(t, f), nil, "service", "rm", "web", "nope", "db")
	if r.code != exitFailure || r.stdout != "web\ndb\n" || r.stderr != "Error: remove nope: service nope not found\n" {
		t.Errorf("got code %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestServicePs(t *testing.T) {
	now := time.Now()
	f := &fakeDaemon{
		services: []*shoalpb.Service{{Id: "svc0123456789abcdef", Spec: &shoalpb.ServiceSpec{Name: "web",
			Mode: &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 2}}}}},
		nodes: []*shoalpb.Node{{Id: "node-a-id", Description: &shoalpb.NodeDescription{Hostname: "host-a"}}},
		tasks: []*shoalpb.Task{
			webTask("task1old0000000000", 1, stShutdown, stFailed, now.Add(-time.Minute), "exit status 1"),
			webTask("task2aaaaaaaaaaaaa", 2, stRunning, stRunning, now.Add(-12*time.Second), ""),
			webTask("task1new0000000000", 1, stRunning, stRunning, now.Add(-12*time.Second), ""),
			webTask("task3gone00000000", 3, stShutdown, stShutdown, now.Add(-time.Hour), ""),
		},
	}
	sock := startFake(t, f)
	tests := []struct {
		name string
		args []string
		want [][]string
	}{
		{
			name: "slots in order, newest first, history marked",
			args: []string{"service", "ps", "web"},
			want: [][]string{
				{"ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "ADDRESS"},
				{"task1new0000", "web.1", "shoal/web:1", "host-a", "Running", "Running 12 seconds ago", "10.10.0.5/24"},
				{"task1old0000", `\_ web.1`, "shoal/web:1", "host-a", "Shutdown", "Failed about a minute ago", "exit status 1", "10.10.0.5/24"},
				{"task2aaaaaaa", "web.2", "shoal/web:1", "host-a", "Running", "Running 12 seconds ago", "10.10.0.5/24"},
			},
		},
		{
			name: "all shows slots scaled away",
			args: []string{"service", "ps", "-a", "-q", "web"},
			want: [][]string{{"task1new0000000000"}, {"task1old0000000000"}, {"task2aaaaaaaaaaaaa"}, {"task3gone00000000"}},
		},
		{
			name: "no-trunc keeps digests",
			args: []string{"service", "ps", "--no-trunc", "web"},
			want: [][]string{
				{"ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "ADDRESS"},
				{"task1new0000000000", "web.1", "shoal/web:1@sha256:0123", "host-a", "Running", "Running 12 seconds ago", "10.10.0.5/24"},
				{"task1old0000000000", `\_ web.1`, "shoal/web:1@sha256:0123", "host-a", "Shutdown", "Failed about a minute ago", "exit status 1", "10.10.0.5/24"},
				{"task2aaaaaaaaaaaaa", "web.2", "shoal/web:1@sha256:0123", "host-a", "Running", "Running 12 seconds ago", "10.10.0.5/24"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, sock, nil, tt.args...)
			if r.code != exitOK {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			assertTable(t, r.stdout, tt.want)
		})
	}
}

func TestServiceLsAndNodeLs(t *testing.T) {
	now := time.Now()
	f := &fakeDaemon{
		nodeID: "node-b-id",
		services: []*shoalpb.Service{{Id: "svc0123456789abcdef", Spec: &shoalpb.ServiceSpec{Name: "web",
			Container: &shoalpb.ContainerSpec{Image: "shoal/web:1"},
			Endpoint: &shoalpb.EndpointSpec{Ports: []*shoalpb.PortConfig{
				{PublishedPort: 8080, TargetPort: 80, PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST},
				{PublishedPort: 5353, TargetPort: 53, Protocol: shoalpb.PortConfig_PROTOCOL_UDP, PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST},
			}},
			Mode: &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 3}}}}},
		tasks: []*shoalpb.Task{
			webTask("t1", 1, stRunning, stRunning, now, ""),
			webTask("t2", 2, stRunning, stRunning, now, ""),
			webTask("t3", 3, stRunning, stPending, now, ""),
			webTask("t0", 3, stShutdown, stRunning, now, ""),
		},
		nodes: []*shoalpb.Node{
			{Id: "node-b-id", Description: &shoalpb.NodeDescription{Hostname: "host-b"}, Role: shoalpb.NodeRole_NODE_ROLE_WORKER,
				Spec:   &shoalpb.NodeSpec{Availability: shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
				Status: &shoalpb.NodeStatus{State: shoalpb.NodeState_NODE_STATE_READY, Addr: "10.0.0.2"}},
			{Id: "node-a-id", Description: &shoalpb.NodeDescription{Hostname: "host-a"},
				Spec:          &shoalpb.NodeSpec{Availability: shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN},
				Status:        &shoalpb.NodeStatus{State: shoalpb.NodeState_NODE_STATE_DOWN, Addr: "10.0.0.1"},
				ManagerStatus: &shoalpb.ManagerStatus{Leader: true}},
		},
	}
	sock := startFake(t, f)
	tests := []struct {
		name string
		args []string
		want [][]string
	}{
		{
			name: "service ls counts running tasks of current slots",
			args: []string{"service", "ls"},
			want: [][]string{{"ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"},
				{"svc012345678", "web", "replicated", "2/3", "shoal/web:1", "host:8080->80/tcp,host:5353->53/udp"}},
		},
		{name: "service ls quiet", args: []string{"service", "ls", "-q"}, want: [][]string{{"svc0123456789abcdef"}}},
		{
			name: "node ls marks self, sorted by hostname",
			args: []string{"node", "ls"},
			want: [][]string{
				{"ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ADDRESS"},
				{"node-a-id", "host-a", "Down", "Drain", "Leader", "10.0.0.1"},
				{"node-b-id *", "host-b", "Ready", "Active", "10.0.0.2"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, sock, nil, tt.args...)
			if r.code != exitOK {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			assertTable(t, r.stdout, tt.want)
		})
	}
}

func TestInspect(t *testing.T) {
	f := &fakeDaemon{
		nodeID:   "node-a-id",
		nodes:    []*shoalpb.Node{{Id: "node-a-id", Description: &shoalpb.NodeDescription{Hostname: "host-a"}}},
		services: []*shoalpb.Service{{Id: "s1", Spec: &shoalpb.ServiceSpec{Name: "web"}}},
	}
	sock := startFake(t, f)
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{
			name: "node self", args: []string{"node", "inspect", "self"},
			wantStdout: "[\n    {\n        \"id\": \"node-a-id\",\n        \"description\": {\n            \"hostname\": \"host-a\"\n        }\n    }\n]\n",
		},
		{
			name: "services, missing one reported", args: []string{"service", "inspect", "web", "db"}, wantCode: exitFailure,
			wantStdout: "[\n    {\n        \"id\": \"s1\",\n        \"spec\": {\n            \"name\": \"web\"\n        }\n    }\n]\n",
			wantStderr: "Error: service db: service db not found\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, sock, nil, tt.args...)
			if r.code != tt.wantCode || r.stdout != tt.wantStdout || r.stderr != tt.wantStderr {
				t.Errorf("got code %d stdout\n%s\nstderr %q", r.code, r.stdout, r.stderr)
			}
		})
	}
}

func TestServiceLogs(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 5, time.UTC)
	f := &fakeDaemon{
		services: []*shoalpb.Service{{Id: "s1", Spec: &shoalpb.ServiceSpec{Name: "web"}}},
		nodes:    []*shoalpb.Node{{Id: "node-a-id", Description: &shoalpb.NodeDescription{Hostname: "host-a"}}},
		tasks: []*shoalpb.Task{
			{Id: "aaaaaaaaaaaaaaaa", Slot: 1, NodeId: "node-a-id"},
			{Id: "bbbbbbbbbbbbbbbb", Slot: 10, NodeId: "node-a-id"},
		},
		logs: []*shoalpb.LogLine{
			{TaskId: "aaaaaaaaaaaaaaaa", Slot: 1, NodeId: "node-a-id", Stream: "stdout", Line: []byte("hello\n"), Time: timestamppb.New(at)},
			{TaskId: "bbbbbbbbbbbbbbbb", Slot: 10, NodeId: "node-a-id", Stream: "stderr", Line: []byte("oops"), Time: timestamppb.New(at)},
			{TaskId: "cccccccccccccccc", Slot: 2, NodeId: "node-z-id", Stream: "stdout", Line: []byte("unknown node"), Time: timestamppb.New(at)},
		},
	}
	sock := startFake(t, f)
	tests := []struct {
		name                   string
		args                   []string
		wantStdout, wantStderr string
	}{
		{
			name: "prefixed, aligned, split by stream",
			args: []string{"service", "logs", "web"},
			wantStdout: "web.1.aaaaaaaaaaaa@host-a     | hello\n" +
				"web.2.cccccccccccc@node-z-id    | unknown node\n",
			wantStderr: "web.10.bbbbbbbbbbbb@host-a    | oops\n",
		},
		{
			name:       "timestamps first",
			args:       []string{"service", "logs", "-t", "web"},
			wantStdout: "2025-03-01T12:00:00.000000005Z web.1.aaaaaaaaaaaa@host-a     | hello\n2025-03-01T12:00:00.000000005Z web.2.cccccccccccc@node-z-id    | unknown node\n",
			wantStderr: "2025-03-01T12:00:00.000000005Z web.10.bbbbbbbbbbbb@host-a    | oops\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, sock, nil, tt.args...)
			if r.code != exitOK || r.stdout != tt.wantStdout || r.stderr != tt.wantStderr {
				t.Errorf("got code %d\nstdout %q\nstderr %q\nwant\nstdout %q\nstderr %q", r.code, r.stdout, r.stderr, tt.wantStdout, tt.wantStderr)
			}
		})
	}
}

func TestImageCommands(t *testing.T) {
	archive := bytes.Repeat([]byte("0123456789"), 250_000) // 2.5 MB: three chunks
	file := filepath.Join(t.TempDir(), "img.tar")
	if err := os.WriteFile(file, archive, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		stdin      []byte
		wantCode   int
		wantStdout string
		wantStderr string
		wantChunks int
	}{
		{name: "load from file", args: []string{"image", "load", "-i", file}, wantStdout: "Loaded image: shoal/web:1\nLoaded image: shoal/web:latest\n", wantChunks: 3},
		{name: "load from stdin", args: []string{"image", "load"}, stdin: archive[:1000], wantStdout: "Loaded image: shoal/web:1\nLoaded image: shoal/web:latest\n", wantChunks: 1},
		{name: "load rejected", args: []string{"image", "load"}, stdin: []byte{}, wantCode: exitFailure, wantStderr: "Error: load images from stdin: load image archive: empty archive\n"},
		{name: "load missing file", args: []string{"image", "load", "-i", file + ".nope"}, wantCode: exitFailure, wantStderr: "Error: load images: open " + file + ".nope: no such file or directory\n"},
		{name: "pull shows progress", args: []string{"image", "pull", "shoal/web"}, wantStdout: "fetching manifest\npulled sha256:abc\nPulled shoal/web (sha256:abc)\n"},
		{name: "pull error", args: []string{"image", "pull", "shoal/nope"}, wantCode: exitFailure, wantStderr: "Error: pull shoal/nope: manifest unknown\n"},
		{name: "ls quiet", args: []string{"image", "ls", "-q"}, wantStdout: "sha256:0123456789abcdef\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeDaemon{images: []*shoalpb.ImageSummary{{Refs: []string{"shoal/web:1", "shoal/web:latest"}, Digest: "sha256:0123456789abcdef"}}}
			r := runCLI(t, startFake(t, f), bytes.NewReader(tt.stdin), tt.args...)
			if r.code != tt.wantCode || r.stdout != tt.wantStdout || r.stderr != tt.wantStderr {
				t.Errorf("got code %d stdout %q stderr %q; want %d %q %q", r.code, r.stdout, r.stderr, tt.wantCode, tt.wantStdout, tt.wantStderr)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.loadChunks != tt.wantChunks {
				t.Errorf("%d chunks sent, want %d", f.loadChunks, tt.wantChunks)
			}
			if tt.wantChunks > 0 && tt.wantCode == exitOK {
				want := archive
				if tt.stdin != nil {
					want = tt.stdin
				}
				if !bytes.Equal(f.loaded, want) {
					t.Errorf("daemon received %d bytes, want the %d of the archive", len(f.loaded), len(want))
				}
			}
		})
	}
}

func TestClusterInitInfoVersion(t *testing.T) {
	sock := startFake(t, &fakeDaemon{nodeID: "node-1"})
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{name: "init", args: []string{"cluster", "init", "--name", "prod"}, want: []string{"Cluster cluster-prod initialised; this node (node-1) is now a manager.\n"}},
		{name: "version", args: []string{"version"}, want: []string{"Client: " + version, "Server: 9.9.9\n"}},
		{name: "info", args: []string{"info"}, want: []string{"Node ID:", "node-1", "Cluster ID:", "c1"}},
		{name: "info json", args: []string{"info", "--format", "json"}, want: []string{`"nodeId": "node-1"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, sock, nil, tt.args...)
			if r.code != exitOK {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("stdout lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
}

// assertTable checks a table's cells line by line.
func assertTable(t *testing.T, out string, want [][]string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out)
	}
	for i, w := range want {
		if got := splitCells(lines[i]); !slices.Equal(got, w) {
			t.Errorf("line %d cells %q, want %q\n%s", i, got, w, out)
		}
	}
}
