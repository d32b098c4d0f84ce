package controlapi

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/shoal-project/shoal/raft"
)

func newServer(t *testing.T) (*Server, *store.Store) {
	t.Helper()
	s := store.New()
	s.SetProposer(store.NewLocalProposer(s))
	return New(s, nil), s
}

func seed(t *testing.T, s *store.Store, fn func(b *store.Batch)) {
	t.Helper()
	if err := s.Update(context.Background(), func(_ store.ReadTx, b *store.Batch) error {
		fn(b)
		return nil
	}); err != nil {
		t.Fatalf("seed store: %v", err)
	}
}

func spec(name, image string) *shoalpb.ServiceSpec {
	return &shoalpb.ServiceSpec{
		Name:      name,
		Container: &shoalpb.ContainerSpec{Image: image},
		Mode:      &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 3}},
	}
}

// wantCode fails unless err is a status with code and a message containing
// every one of parts.
func wantCode(t *testing.T, err error, code codes.Code, parts ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("error = %v, want code %v", err, code)
	}
	for _, p := range parts {
		if !strings.Contains(st.Message(), p) {
			t.Errorf("error message %q does not mention %q", st.Message(), p)
		}
	}
}

func TestCreateServiceValidation(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(s *shoalpb.ServiceSpec)
		// parts are what an InvalidArgument message must say; none means
		// the spec is valid.
		parts []string
	}{
		{name: "valid", mutate: func(*shoalpb.ServiceSpec) {}},
		{name: "name starting with dash", mutate: func(s *shoalpb.ServiceSpec) { s.Name = "-web" }, parts: []string{"name", `"-web"`}},
		{name: "name with space", mutate: func(s *shoalpb.ServiceSpec) { s.Name = "my web" }, parts: []string{"name"}},
		{name: "name too long", mutate: func(s *shoalpb.ServiceSpec) { s.Name = strings.Repeat("a", 64) }, parts: []string{"name", "63"}},
		{name: "name of 63", mutate: func(s *shoalpb.ServiceSpec) { s.Name = strings.Repeat("a", 63) }},
		{name: "no container", mutate: func(s *shoalpb.ServiceSpec) { s.Container = nil }, parts: []string{"container.image", "required"}},
		{name: "missing image", mutate: func(s *shoalpb.ServiceSpec) { s.Container.Image = "" }, parts: []string{"container.image", "required"}},
		{name: "uppercase image", mutate: func(s *shoalpb.ServiceSpec) { s.Container.Image = "Foo/Bar:baz" }, parts: []string{"container.image", `image "Foo/Bar:baz" is not a valid reference`}},
		{name: "image with space", mutate: func(s *shoalpb.ServiceSpec) { s.Container.Image = "a b" }, parts: []string{`image "a b" is not a valid reference`}},
		{name: "image with registry and digest", mutate: func(s *shoalpb.ServiceSpec) {
			s.Container.Image = "localhost:5000/team/app@sha256:" + strings.Repeat("ab", 32)
		}},
		{name: "env without equals", mutate: func(s *shoalpb.ServiceSpec) { s.Container.Env = []string{"A=1", "NOVALUE"} }, parts: []string{"container.env[1]", "KEY=VALUE"}},
		{name: "env empty key", mutate: func(s *shoalpb.ServiceSpec) { s.Container.Env = []string{"=x"} }, parts: []string{"container.env[0]", "non-empty KEY"}},
		{name: "env empty value", mutate: func(s *shoalpb.ServiceSpec) { s.Container.Env = []string{"A="} }},
		{name: "unknown signal", mutate: func(s *shoalpb.ServiceSpec) { s.Container.StopSignal = "SIGFOO" }, parts: []string{"container.stop_signal", "SIGFOO"}},
		{name: "signal number out of range", mutate: func(s *shoalpb.ServiceSpec) { s.Container.StopSignal = "99" }, parts: []string{"container.stop_signal", "99"}},
		{name: "signal full name", mutate: func(s *shoalpb.ServiceSpec) { s.Container.StopSignal = "SIGQUIT" }},
		{name: "signal short lowercase", mutate: func(s *shoalpb.ServiceSpec) { s.Container.StopSignal = "term" }},
		{name: "signal number", mutate: func(s *shoalpb.ServiceSpec) { s.Container.StopSignal = "15" }},
		{name: "negative grace", mutate: func(s *shoalpb.ServiceSpec) {
			s.Container.StopGracePeriod = durationpb.New(-time.Second)
		}, parts: []string{"container.stop_grace_period", "negative"}},
		{name: "zero grace", mutate: func(s *shoalpb.ServiceSpec) { s.Container.StopGracePeriod = durationpb.New(0) }},
		{name: "empty label key", mutate: func(s *shoalpb.ServiceSpec) { s.Labels = map[string]string{"": "x"} }, parts: []string{"labels"}},
		{name: "spread on a label", mutate: func(s *shoalpb.ServiceSpec) {
			s.Placement = &shoalpb.Placement{Preferences: []*shoalpb.PlacementPreference{{Spread: "node.labels.zone"}}}
		}},
		{name: "spread on no label", mutate: func(s *shoalpb.ServiceSpec) {
			s.Placement = &shoalpb.Placement{Preferences: []*shoalpb.PlacementPreference{{Spread: "node.labels.zone"}, {Spread: "node.hostname"}}}
		}, parts: []string{"placement.preferences[1]", "node.labels.NAME"}},
		{name: "negative restart delay", mutate: func(s *shoalpb.ServiceSpec) {
			s.RestartPolicy = &shoalpb.RestartPolicy{Delay: durationpb.New(-time.Second)}
		}, parts: []string{"restart_policy.delay", "negative"}},
		{name: "unknown restart condition", mutate: func(s *shoalpb.ServiceSpec) {
			s.RestartPolicy = &shoalpb.RestartPolicy{Condition: 7}
		}, parts: []string{"restart_policy.condition", "on-failure"}},
		{name: "restart policy", mutate: func(s *shoalpb.ServiceSpec) {
			s.RestartPolicy = &shoalpb.RestartPolicy{Condition: shoalpb.RestartPolicy_CONDITION_ON_FAILURE, MaxAttempts: 3, Window: durationpb.New(time.Minute)}
		}},
		{name: "memory limit too small", mutate: func(s *shoalpb.ServiceSpec) {
			s.Container.Resources = &shoalpb.ResourceRequirements{Limits: &shoalpb.Resources{MemoryBytes: 1024}}
		}, parts: []string{"resources.limits.memory_bytes", "minimum"}},
		{name: "reservation above limit", mutate: func(s *shoalpb.ServiceSpec) {
			s.Container.Resources = &shoalpb.ResourceRequirements{
				Limits:       &shoalpb.Resources{MemoryBytes: 64 << 20},
				Reservations: &shoalpb.Resources{MemoryBytes: 128 << 20},
			}
		}, parts: []string{"resources.reservations.memory_bytes", "above the limit"}},
		{name: "negative pids limit", mutate: func(s *shoalpb.ServiceSpec) {
			s.Container.Resources = &shoalpb.ResourceRequirements{PidsLimit: -1}
		}, parts: []string{"resources.pids_limit", "negative"}},
		{name: "port published twice", mutate: func(s *shoalpb.ServiceSpec) {
			s.Endpoint = &shoalpb.EndpointSpec{Ports: []*shoalpb.PortConfig{{TargetPort: 80, PublishedPort: 8080, PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST}, {TargetPort: 81, PublishedPort: 8080, PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST}}}
		}, parts: []string{"endpoint.ports[1]", "8080/tcp", "twice"}},
		{name: "ingress port", mutate: func(s *shoalpb.ServiceSpec) {
			s.Endpoint = &shoalpb.EndpointSpec{Ports: []*shoalpb.PortConfig{{TargetPort: 80, PublishedPort: 8080}}}
		}, parts: []string{"endpoint.ports[0]", "only host mode"}},
		{name: "host port without published port", mutate: func(s *shoalpb.ServiceSpec) {
			s.Endpoint = &shoalpb.EndpointSpec{Ports: []*shoalpb.PortConfig{{TargetPort: 80, PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST}}}
		}, parts: []string{"endpoint.ports[0]", "needs a published port"}},
		{name: "host port", mutate: func(s *shoalpb.ServiceSpec) {
			s.Endpoint = &shoalpb.EndpointSpec{Ports: []*shoalpb.PortConfig{{TargetPort: 80, PublishedPort: 8080, PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST}}}
		}},
		{name: "target port zero", mutate: func(s *shoalpb.ServiceSpec) {
			s.Endpoint = &shoalpb.EndpointSpec{Ports: []*shoalpb.PortConfig{{PublishedPort: 8080}}}
		}, parts: []string{"endpoint.ports[0]", "target port 0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, st := newServer(t)
			sp := spec("web", "busybox:1.36")
			tc.mutate(sp)
			resp, err := srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: sp})
			if len(tc.parts) == 0 {
				if err != nil {
					t.Fatalf("CreateService(valid spec) = %v", err)
				}
				if !proto.Equal(resp.GetService().GetSpec(), sp) {
					t.Errorf("stored spec = %v, want %v", resp.GetService().GetSpec(), sp)
				}
				return
			}
			wantCode(t, err, codes.InvalidArgument, tc.parts...)
			st.View(func(tx store.ReadTx) {
				if n := len(tx.ListServices()); n != 0 {
					t.Errorf("an invalid spec created %d services", n)
				}
			})
		})
	}
	t.Run("no spec", func(t *testing.T) {
		srv, _ := newServer(t)
		_, err := srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{})
		wantCode(t, err, codes.InvalidArgument, "spec")
	})
}

func TestCreateServiceDefaults(t *testing.T) {
	tests := []struct {
		name     string
		spec     *shoalpb.ServiceSpec
		wantName string // a regexp
		wantMode string
	}{
		{
			name:     "no mode is one replica",
			spec:     &shoalpb.ServiceSpec{Name: "web", Container: &shoalpb.ContainerSpec{Image: "nginx"}},
			wantName: "^web$",
			wantMode: "replicated:{replicas:1}",
		},
		{
			name:     "replicas kept",
			spec:     spec("web", "nginx"),
			wantName: "^web$",
			wantMode: "replicated:{replicas:3}",
		},
		{
			name:     "global kept",
			spec:     &shoalpb.ServiceSpec{Name: "agent", Container: &shoalpb.ContainerSpec{Image: "nginx"}, Mode: &shoalpb.ServiceSpec_Global{}},
			wantName: "^agent$",
			wantMode: "global:{}",
		},
		{
			name:     "name from docker hub image",
			spec:     &shoalpb.ServiceSpec{Container: &shoalpb.ContainerSpec{Image: "docker.io/library/nginx:1.27"}},
			wantName: "^nginx-[a-z0-9]{5}$",
			wantMode: "replicated:{replicas:1}",
		},
		{
			name:     "name from private registry image",
			spec:     &shoalpb.ServiceSpec{Container: &shoalpb.ContainerSpec{Image: "localhost:5000/team/my_app:v1"}},
			wantName: "^my_app-[a-z0-9]{5}$",
			wantMode: "replicated:{replicas:1}",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := newServer(t)
			resp, err := srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: tc.spec})
			if err != nil {
				t.Fatalf("CreateService: %v", err)
			}
			got := resp.GetService()
			if !regexp.MustCompile(tc.wantName).MatchString(got.GetSpec().GetName()) {
				t.Errorf("name = %q, want match %s", got.GetSpec().GetName(), tc.wantName)
			}
			mode := got.GetSpec().GetReplicated().String()
			if got.GetSpec().GetGlobal() != nil {
				mode = "global:{" + got.GetSpec().GetGlobal().String() + "}"
			} else {
				mode = "replicated:{" + strings.ReplaceAll(mode, " ", "") + "}"
			}
			if mode != tc.wantMode {
				t.Errorf("mode = %s, want %s", mode, tc.wantMode)
			}
			if got.GetId() == "" || got.GetMeta().GetVersion() == 0 {
				t.Errorf("created service lacks id or version: %v", got)
			}
		})
	}
}

func TestCreateServiceNameInUse(t *testing.T) {
	srv, _ := newServer(t)
	first, err := srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: spec("web", "nginx")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: spec("web", "busybox")})
	wantCode(t, err, codes.AlreadyExists, `service name "web" is already in use by service `+first.GetService().GetId())
}

func TestServiceLookup(t *testing.T) {
	srv, st := newServer(t)
	seed(t, st, func(b *store.Batch) {
		for id, name := range map[string]string{"abc111": "web", "abc222": "db", "xyz999": "cache", "web": "confusing"} {
			b.CreateService(&shoalpb.Service{Id: id, Spec: spec(name, "nginx")})
		}
	})
	tests := []struct {
		ref    string
		wantID string
		code   codes.Code
		parts  []string
	}{
		{ref: "abc111", wantID: "abc111"},
		{ref: "db", wantID: "abc222"},
		{ref: "xyz", wantID: "xyz999"},
		{ref: "web", wantID: "web"}, // a full id wins over a name
		{ref: "confusing", wantID: "web"},
		{ref: "abc", code: codes.InvalidArgument, parts: []string{"ambiguous", "abc111", "abc222"}},
		{ref: "nope", code: codes.NotFound, parts: []string{"no such service: nope"}},
		{ref: "", code: codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("ref %q", tc.ref), func(t *testing.T) {
			resp, err := srv.GetService(context.Background(), &shoalpb.GetServiceRequest{Service: tc.ref})
			if tc.wantID == "" {
				wantCode(t, err, tc.code, tc.parts...)
				return
			}
			if err != nil {
				t.Fatalf("GetService(%q) = %v", tc.ref, err)
			}
			if got := resp.GetService().GetId(); got != tc.wantID {
				t.Errorf("GetService(%q) = %s, want %s", tc.ref, got, tc.wantID)
			}
		})
	}
	t.Run("list by name", func(t *testing.T) {
		resp, err := srv.ListServices(context.Background(), &shoalpb.ListServicesRequest{Names: []string{"db", "cache"}})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, s := range resp.GetServices() {
			got = append(got, s.GetId())
		}
		if fmt.Sprint(got) != "[abc222 xyz999]" {
			t.Errorf("ListServices(db, cache) = %v, want [abc222 xyz999]", got)
		}
	})
}

func TestUpdateService(t *testing.T) {
	tests := []struct {
		name    string
		version func(cur uint64) uint64
		mutate  func(s *shoalpb.ServiceSpec)
		code    codes.Code
		parts   []string
	}{
		{name: "scale", version: same, mutate: func(s *shoalpb.ServiceSpec) {
			s.GetReplicated().Replicas = 5
		}},
		{name: "empty name keeps name", version: same, mutate: func(s *shoalpb.ServiceSpec) { s.Name = "" }},
		{name: "stale version", version: func(cur uint64) uint64 { return cur - 1 },
			mutate: func(*shoalpb.ServiceSpec) {}, code: codes.FailedPrecondition,
			parts: []string{"service web was updated since you read it", "read it again and retry"}},
		{name: "rename", version: same, mutate: func(s *shoalpb.ServiceSpec) { s.Name = "web2" },
			code: codes.InvalidArgument, parts: []string{"name", `"web2"`}},
		{name: "invalid spec", version: same, mutate: func(s *shoalpb.ServiceSpec) { s.Container.Image = "a b" },
			code: codes.InvalidArgument, parts: []string{"container.image"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, st := newServer(t)
			created, err := srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: spec("web", "nginx")})
			if err != nil {
				t.Fatal(err)
			}
			// Another write so that versions differ from the first index.
			seed(t, st, func(b *store.Batch) { b.CreateNode(&shoalpb.Node{Id: "n1"}) })
			cur := created.GetService()
			sp := proto.Clone(cur.GetSpec()).(*shoalpb.ServiceSpec)
			tc.mutate(sp)
			v := tc.version(cur.GetMeta().GetVersion())
			resp, err := srv.UpdateService(context.Background(), &shoalpb.UpdateServiceRequest{
				ServiceId: cur.GetId(), Version: v, Spec: sp,
			})
			if tc.code != codes.OK {
				parts := tc.parts
				if tc.code == codes.FailedPrecondition {
					parts = append(parts, fmt.Sprintf("your version %d, current %d", v, cur.GetMeta().GetVersion()))
				}
				wantCode(t, err, tc.code, parts...)
				got, _ := srv.GetService(context.Background(), &shoalpb.GetServiceRequest{Service: cur.GetId()})
				if !proto.Equal(got.GetService(), cur) {
					t.Errorf("refused update changed the service: %v", got.GetService())
				}
				return
			}
			if err != nil {
				t.Fatalf("UpdateService: %v", err)
			}
			got := resp.GetService()
			if got.GetMeta().GetVersion() <= cur.GetMeta().GetVersion() {
				t.Errorf("version after update = %d, want > %d", got.GetMeta().GetVersion(), cur.GetMeta().GetVersion())
			}
			if sp.Name == "" {
				sp.Name = "web"
			}
			if !proto.Equal(got.GetSpec(), sp) {
				t.Errorf("spec after update = %v, want %v", got.GetSpec(), sp)
			}
		})
	}
}

func same(v uint64) uint64 { return v }

func TestRemoveService(t *testing.T) {
	srv, st := newServer(t)
	running, remove := shoalpb.TaskState_TASK_STATE_RUNNING, shoalpb.TaskState_TASK_STATE_REMOVE
	seed(t, st, func(b *store.Batch) {
		b.CreateService(&shoalpb.Service{Id: "s1", Spec: spec("web", "nginx")})
		b.CreateService(&shoalpb.Service{Id: "s2", Spec: spec("db", "postgres")})
		b.CreateTask(&shoalpb.Task{Id: "t1", ServiceId: "s1", DesiredState: running})
		b.CreateTask(&shoalpb.Task{Id: "t2", ServiceId: "s1", DesiredState: shoalpb.TaskState_TASK_STATE_SHUTDOWN})
		b.CreateTask(&shoalpb.Task{Id: "t3", ServiceId: "s2", DesiredState: running})
	})
	if _, err := srv.RemoveService(context.Background(), &shoalpb.RemoveServiceRequest{Service: "web"}); err != nil {
		t.Fatalf("RemoveService(web): %v", err)
	}
	st.View(func(tx store.ReadTx) {
		if tx.GetService("s1") != nil {
			t.Errorf("service s1 still stored after removal")
		}
		want := map[string]shoalpb.TaskState{"t1": remove, "t2": remove, "t3": running}
		for id, state := range want {
			if got := tx.GetTask(id).GetDesiredState(); got != state {
				t.Errorf("task %s desired state = %v, want %v", id, got, state)
			}
		}
	})
	_, err := srv.RemoveService(context.Background(), &shoalpb.RemoveServiceRequest{Service: "web"})
	wantCode(t, err, codes.NotFound, "no such service: web")
}

func TestListTasks(t *testing.T) {
	srv, st := newServer(t)
	running, shutdown := shoalpb.TaskState_TASK_STATE_RUNNING, shoalpb.TaskState_TASK_STATE_SHUTDOWN
	seed(t, st, func(b *store.Batch) {
		b.CreateTask(&shoalpb.Task{Id: "t1", ServiceId: "s1", NodeId: "n1", DesiredState: running})
		b.CreateTask(&shoalpb.Task{Id: "t2", ServiceId: "s1", NodeId: "n2", DesiredState: shutdown})
		b.CreateTask(&shoalpb.Task{Id: "t3", ServiceId: "s2", NodeId: "n1", DesiredState: running})
		b.CreateTask(&shoalpb.Task{Id: "t4", ServiceId: "s3", DesiredState: running})
	})
	tests := []struct {
		name string
		req  *shoalpb.ListTasksRequest
		want string
	}{
		{"all", &shoalpb.ListTasksRequest{}, "[t1 t2 t3 t4]"},
		{"one service", &shoalpb.ListTasksRequest{ServiceIds: []string{"s1"}}, "[t1 t2]"},
		{"two services", &shoalpb.ListTasksRequest{ServiceIds: []string{"s1", "s3"}}, "[t1 t2 t4]"},
		{"one node", &shoalpb.ListTasksRequest{NodeIds: []string{"n1"}}, "[t1 t3]"},
		{"service and node", &shoalpb.ListTasksRequest{ServiceIds: []string{"s1"}, NodeIds: []string{"n1"}}, "[t1]"},
		{"desired running", &shoalpb.ListTasksRequest{DesiredStates: []shoalpb.TaskState{running}}, "[t1 t3 t4]"},
		{"service and state", &shoalpb.ListTasksRequest{ServiceIds: []string{"s1"}, DesiredStates: []shoalpb.TaskState{shutdown}}, "[t2]"},
		{"unknown service", &shoalpb.ListTasksRequest{ServiceIds: []string{"nope"}}, "[]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := srv.ListTasks(context.Background(), tc.req)
			if err != nil {
				t.Fatal(err)
			}
			got := []string{}
			for _, task := range resp.GetTasks() {
				got = append(got, task.GetId())
			}
			if fmt.Sprint(got) != tc.want {
				t.Errorf("ListTasks = %v, want %s", got, tc.want)
			}
		})
	}
	t.Run("get by prefix", func(t *testing.T) {
		resp, err := srv.GetTask(context.Background(), &shoalpb.GetTaskRequest{Task: "t4"})
		if err != nil || resp.GetTask().GetServiceId() != "s3" {
			t.Errorf("GetTask(t4) = %v, %v; want task t4", resp, err)
		}
		_, err = srv.GetTask(context.Background(), &shoalpb.GetTaskRequest{Task: "t"})
		wantCode(t, err, codes.InvalidArgument, "ambiguous")
	})
}

func TestNodesAndCluster(t *testing.T) {
	srv, st := newServer(t)
	_, err := srv.GetCluster(context.Background(), &shoalpb.GetClusterRequest{})
	wantCode(t, err, codes.NotFound, "not initialised")

	seed(t, st, func(b *store.Batch) {
		b.CreateCluster(&shoalpb.Cluster{Id: "c1", Spec: &shoalpb.ClusterSpec{Name: "prod"}})
		b.CreateNode(&shoalpb.Node{Id: "k2j4", Description: &shoalpb.NodeDescription{Hostname: "alpha"}})
		b.CreateNode(&shoalpb.Node{Id: "k2x9", Description: &shoalpb.NodeDescription{Hostname: "beta"}})
	})
	c, err := srv.GetCluster(context.Background(), &shoalpb.GetClusterRequest{})
	if err != nil || c.GetCluster().GetSpec().GetName() != "prod" {
		t.Errorf("GetCluster = %v, %v; want cluster prod", c, err)
	}
	list, err := srv.ListNodes(context.Background(), &shoalpb.ListNodesRequest{})
	if err != nil || len(list.GetNodes()) != 2 {
		t.Errorf("ListNodes = %v, %v; want 2 nodes", list, err)
	}
	tests := []struct {
		ref, wantID string
		code        codes.Code
	}{
		{ref: "k2j4", wantID: "k2j4"},
		{ref: "beta", wantID: "k2x9"},
		{ref: "k2j", wantID: "k2j4"},
		{ref: "k2", code: codes.InvalidArgument},
		{ref: "gamma", code: codes.NotFound},
	}
	for _, tc := range tests {
		t.Run("node "+tc.ref, func(t *testing.T) {
			resp, err := srv.GetNode(context.Background(), &shoalpb.GetNodeRequest{Node: tc.ref})
			if tc.wantID == "" {
				wantCode(t, err, tc.code)
				return
			}
			if err != nil || resp.GetNode().GetId() != tc.wantID {
				t.Errorf("GetNode(%q) = %v, %v; want %s", tc.ref, resp, err, tc.wantID)
			}
		})
	}
}

// errProposer refuses every proposal with err.
type errProposer struct{ err error }

func (p errProposer) Propose(context.Context, []byte) error { return p.err }

func TestWriteErrorCodes(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		code  codes.Code
		parts []string
	}{
		{"not leader", fmt.Errorf("propose: %w", raft.ErrNotLeader), codes.Unavailable, []string{"this manager is not the leader"}},
		{"stopped", raft.ErrStopped, codes.Unavailable, nil},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, nil},
		{"other", errors.New("disk on fire"), codes.Internal, []string{"create service web", "disk on fire"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := store.New()
			st.SetProposer(errProposer{tc.err})
			srv := New(st, nil)
			_, err := srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: spec("web", "nginx")})
			wantCode(t, err, tc.code, tc.parts...)
		})
	}
}
