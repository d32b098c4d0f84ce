package main

import (
	"slices"
	"testing"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestValidateReplicas(t *testing.T) {
	tests := []struct {
		name    string
		n       int64
		wantErr string
	}{
		{name: "zero is allowed", n: 0},
		{name: "positive", n: 3},
		{name: "negative names the flag and value", n: -1, wantErr: "--replicas must be 0 or more, got -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, validateReplicas(tt.n), tt.wantErr)
		})
	}
}

func TestParseEnv(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		wantErr string
	}{
		{name: "pairs", in: []string{"FOO=bar", "X=1"}},
		{name: "empty value", in: []string{"FOO="}},
		{name: "value with equals", in: []string{"URL=a=b"}},
		{name: "no equals", in: []string{"A=1", "FOO"}, wantErr: `--env "FOO" must be KEY=VALUE`},
		{name: "empty key", in: []string{"=bar"}, wantErr: `--env "=bar" must be KEY=VALUE`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseEnv(tt.in)
			checkErr(t, err, tt.wantErr)
			if err == nil && !slices.Equal(got, tt.in) {
				t.Errorf("parseEnv(%q) = %q", tt.in, got)
			}
		})
	}
}

func TestParseKeyValues(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    map[string]string
		wantErr string
	}{
		{name: "none", in: nil, want: nil},
		{name: "later key wins", in: []string{"tier=web", "tier=front", "team=a=b"}, want: map[string]string{"tier": "front", "team": "a=b"}},
		{name: "bare key refused", in: []string{"tier"}, wantErr: `--label "tier" must be KEY=VALUE`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseKeyValues("--label", tt.in)
			checkErr(t, err, tt.wantErr)
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestParseScaleArg(t *testing.T) {
	tests := []struct {
		name     string
		arg      string
		service  string
		replicas uint64
		wantErr  string
	}{
		{name: "name", arg: "web=3", service: "web", replicas: 3},
		{name: "zero", arg: "web=0", service: "web", replicas: 0},
		{name: "not a number", arg: "web=x", wantErr: `scale: "web=x": expected SERVICE=REPLICAS`},
		{name: "negative", arg: "web=-1", wantErr: `scale: "web=-1": expected SERVICE=REPLICAS`},
		{name: "no equals", arg: "web", wantErr: `scale: "web": expected SERVICE=REPLICAS`},
		{name: "no service", arg: "=2", wantErr: `scale: "=2": expected SERVICE=REPLICAS`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, n, err := parseScaleArg(tt.arg)
			checkErr(t, err, tt.wantErr)
			if err == nil && (s != tt.service || n != tt.replicas) {
				t.Errorf("parseScaleArg(%q) = %q, %d; want %q, %d", tt.arg, s, n, tt.service, tt.replicas)
			}
		})
	}
}

func TestCreateSpec(t *testing.T) {
	base := func() createOptions { return createOptions{mode: modeReplicated, replicas: defaultReplicas} }
	tests := []struct {
		name        string
		opts        func(*createOptions)
		replicasSet bool
		args        []string
		want        *shoalpb.ServiceSpec
		wantErr     string
	}{
		{
			name: "defaults: one replica, image CMD kept",
			want: &shoalpb.ServiceSpec{
				Container: &shoalpb.ContainerSpec{Image: "img"},
				Mode:      &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 1}},
			},
		},
		{
			name: "args replace CMD, entrypoint split on whitespace",
			opts: func(o *createOptions) {
				o.name, o.replicas, o.entrypoint = "web", 3, " /bin/sh   -c "
				o.env, o.labels = []string{"A=1"}, []string{"tier=front"}
				o.stopSignal, o.stopGracePeriod = "int", 5*time.Second
			},
			replicasSet: true,
			args:        []string{"echo hi; sleep 9", "--not-a-flag"},
			want: &shoalpb.ServiceSpec{
				Name:   "web",
				Labels: map[string]string{"tier": "front"},
				Container: &shoalpb.ContainerSpec{
					Image: "img", Command: []string{"/bin/sh", "-c"}, Args: []string{"echo hi; sleep 9", "--not-a-flag"},
					Env: []string{"A=1"}, StopSignal: "SIGINT", StopGracePeriod: durationpb.New(5 * time.Second),
				},
				Mode: &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 3}},
			},
		},
		{
			name: "global",
			opts: func(o *createOptions) { o.mode = modeGlobal },
			want: &shoalpb.ServiceSpec{
				Container: &shoalpb.ContainerSpec{Image: "img"},
				Mode:      &shoalpb.ServiceSpec_Global{Global: &shoalpb.GlobalService{}},
			},
		},
		{
			name:        "replicas with global refused",
			opts:        func(o *createOptions) { o.mode, o.replicas = modeGlobal, 2 },
			replicasSet: true,
			wantErr:     "--replicas cannot be used with --mode global (a global service runs one task per node)",
		},
		{name: "unknown mode", opts: func(o *createOptions) { o.mode = "daemonset" }, wantErr: `--mode must be replicated or global, got "daemonset"`},
		{name: "negative replicas", opts: func(o *createOptions) { o.replicas = -1 }, replicasSet: true, wantErr: "--replicas must be 0 or more, got -1"},
		{name: "bad env", opts: func(o *createOptions) { o.env = []string{"FOO"} }, wantErr: `--env "FOO" must be KEY=VALUE`},
		{name: "bad signal", opts: func(o *createOptions) { o.stopSignal = "SIGNOPE" }, wantErr: `--stop-signal "SIGNOPE": no such signal`},
		{
			name: "placement, resources, restart policy",
			opts: func(o *createOptions) {
				o.constraints, o.placementPrefs, o.maxPerNode = []string{"node.role==worker"}, []string{"spread=node.labels.zone", "spread=node.labels.rack"}, 2
				o.reserveCPU, o.reserveMemory, o.limitCPU, o.limitMemory, o.limitPids = "0.25", "64M", "1.5", "1.5GiB", 100
				o.restartCond, o.restartDelay, o.restartDelaySet, o.restartAttempts, o.restartWindow = "on-failure", 0, true, 3, time.Minute
			},
			want: &shoalpb.ServiceSpec{
				Container: &shoalpb.ContainerSpec{Image: "img", Resources: &shoalpb.ResourceRequirements{
					Limits:       &shoalpb.Resources{NanoCpus: 1_500_000_000, MemoryBytes: 3 << 29},
					Reservations: &shoalpb.Resources{NanoCpus: 250_000_000, MemoryBytes: 64 << 20},
					PidsLimit:    100,
				}},
				Placement: &shoalpb.Placement{
					Constraints: []string{"node.role==worker"},
					Preferences: []*shoalpb.PlacementPreference{{Spread: "node.labels.zone"}, {Spread: "node.labels.rack"}},
					MaxReplicas: 2,
				},
				RestartPolicy: &shoalpb.RestartPolicy{
					Condition: shoalpb.RestartPolicy_CONDITION_ON_FAILURE, Delay: durationpb.New(0),
					MaxAttempts: 3, Window: durationpb.New(time.Minute),
				},
				Mode: &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 1}},
			},
		},
		{
			name: "networks and dnsrr",
			opts: func(o *createOptions) {
				o.networks, o.endpointMode = []string{"front", "name=back,alias=db,alias=store"}, "dnsrr"
			},
			want: &shoalpb.ServiceSpec{
				Container: &shoalpb.ContainerSpec{Image: "img"},
				Networks: []*shoalpb.NetworkAttachmentConfig{
					{Target: "front"}, {Target: "back", Aliases: []string{"db", "store"}},
				},
				Endpoint: &shoalpb.EndpointSpec{Mode: shoalpb.EndpointSpec_MODE_DNSRR},
				Mode:     &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 1}},
			},
		},
		{name: "bad network", opts: func(o *createOptions) { o.networks = []string{"alias=x"} }, wantErr: `--network "alias=x": name=NAME is missing`},
		{name: "bad network field", opts: func(o *createOptions) { o.networks = []string{"name=a,mtu=9000"} }, wantErr: `--network "name=a,mtu=9000": expected NAME or name=NAME[,alias=ALIAS]...`},
		{name: "bad endpoint mode", opts: func(o *createOptions) { o.endpointMode = "ipvs" }, wantErr: `--endpoint-mode must be vip or dnsrr, got "ipvs"`},
		{name: "bad spread", opts: func(o *createOptions) { o.placementPrefs = []string{"node.labels.zone"} }, wantErr: `--placement-pref "node.labels.zone" must be spread=LABEL, e.g. spread=node.labels.zone`},
		{name: "bad memory", opts: func(o *createOptions) { o.limitMemory = "12 parsecs" }, wantErr: `--limit-memory "12 parsecs" must be a size like 64M, 1.5G or 1048576 (bytes; units b, k, m, g, t)`},
		{name: "bad cpu", opts: func(o *createOptions) { o.reserveCPU = "half" }, wantErr: `--reserve-cpu "half" must be a number of CPUs, e.g. 0.5 or 2`},
		{name: "bad restart condition", opts: func(o *createOptions) { o.restartCond = "always" }, wantErr: `--restart-condition must be any, on-failure or none, got "always"`},
		{name: "negative grace period", opts: func(o *createOptions) { o.stopGracePeriod = -time.Second }, wantErr: "--stop-grace-period must be 0 or more, got -1s"},
		{
			name: "published ports",
			opts: func(o *createOptions) { o.publish = []string{"8080:80"} },
			want: &shoalpb.ServiceSpec{
				Container: &shoalpb.ContainerSpec{Image: "img"},
				Endpoint: &shoalpb.EndpointSpec{Ports: []*shoalpb.PortConfig{
					{PublishedPort: 8080, TargetPort: 80, PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST},
				}},
				Mode: &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 1}},
			},
		},
		{name: "bad publish", opts: func(o *createOptions) { o.publish = []string{"80"} }, wantErr: `--publish "80": expected ` + publishForms + ` (the published port is required)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base()
			if tt.opts != nil {
				tt.opts(&o)
			}
			got, err := o.spec("img", tt.args, tt.replicasSet)
			checkErr(t, err, tt.wantErr)
			if err == nil && !proto.Equal(got, tt.want) {
				t.Errorf("spec = %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestParsePublish(t *testing.T) {
	const (
		tcp  = shoalpb.PortConfig_PROTOCOL_TCP
		udp  = shoalpb.PortConfig_PROTOCOL_UDP
		host = shoalpb.PortConfig_PUBLISH_MODE_HOST
	)
	tests := []struct {
		name    string
		in      []string
		want    []*shoalpb.PortConfig
		wantErr string
	}{
		{name: "none", in: nil, want: nil},
		{name: "short form means host mode", in: []string{"8080:80"}, want: []*shoalpb.PortConfig{{PublishedPort: 8080, TargetPort: 80, PublishMode: host}}},
		{name: "short form udp", in: []string{"5353:53/udp"}, want: []*shoalpb.PortConfig{{PublishedPort: 5353, TargetPort: 53, Protocol: udp, PublishMode: host}}},
		{name: "short form explicit tcp, any case", in: []string{"8080:80/TCP"}, want: []*shoalpb.PortConfig{{PublishedPort: 8080, TargetPort: 80, Protocol: tcp, PublishMode: host}}},
		{
			name: "long form, every field",
			in:   []string{"published=8080,target=80,protocol=udp,mode=host"},
			want: []*shoalpb.PortConfig{{PublishedPort: 8080, TargetPort: 80, Protocol: udp, PublishMode: host}},
		},
		{
			name: "long form defaults: tcp, host; fields in any order",
			in:   []string{"target=80, published=8080"},
			want: []*shoalpb.PortConfig{{PublishedPort: 8080, TargetPort: 80, PublishMode: host}},
		},
		{
			name: "repeated, same port on both protocols",
			in:   []string{"53:53", "53:53/udp", "published=8080,target=8080"},
			want: []*shoalpb.PortConfig{
				{PublishedPort: 53, TargetPort: 53, PublishMode: host},
				{PublishedPort: 53, TargetPort: 53, Protocol: udp, PublishMode: host},
				{PublishedPort: 8080, TargetPort: 8080, PublishMode: host},
			},
		},
		{
			name:    "ingress refused until the routing mesh exists",
			in:      []string{"published=8080,target=80,mode=ingress"},
			wantErr: `--publish "published=8080,target=80,mode=ingress": mode=ingress (the routing mesh) is not supported yet; only mode=host is`,
		},
		{name: "unknown mode", in: []string{"published=8080,target=80,mode=vip"}, wantErr: `--publish "published=8080,target=80,mode=vip": mode "vip": expected host (ingress is not supported yet)`},
		{name: "target only", in: []string{"80"}, wantErr: `--publish "80": expected ` + publishForms + ` (the published port is required)`},
		{name: "host address", in: []string{"127.0.0.1:8080:80"}, wantErr: `--publish "127.0.0.1:8080:80": a host address is not supported (a port is published on every address of the host); expected ` + publishForms},
		{name: "range", in: []string{"8080-8081:80"}, wantErr: `--publish "8080-8081:80": published port "8080-8081": port ranges are not supported; expected a number from 1 to 65535`},
		{name: "not a number", in: []string{"web:80"}, wantErr: `--publish "web:80": published port "web": expected a number from 1 to 65535`},
		{name: "port 0", in: []string{"8080:0"}, wantErr: `--publish "8080:0": target port "0": expected a number from 1 to 65535`},
		{name: "port too large", in: []string{"published=65536,target=80"}, wantErr: `--publish "published=65536,target=80": published port "65536": expected a number from 1 to 65535`},
		{name: "bad protocol", in: []string{"8080:80/sctp"}, wantErr: `--publish "8080:80/sctp": protocol "sctp": expected tcp or udp`},
		{name: "long form without target", in: []string{"published=8080"}, wantErr: `--publish "published=8080": target=PORT is required`},
		{name: "long form without published", in: []string{"target=80"}, wantErr: `--publish "target=80": published=PORT is required (Shoal does not choose a host port)`},
		{name: "unknown field", in: []string{"published=8080,target=80,src=1"}, wantErr: `--publish "published=8080,target=80,src=1": unknown field "src": expected published, target, protocol or mode`},
		{name: "field given twice", in: []string{"published=8080,target=80,target=81"}, wantErr: `--publish "published=8080,target=80,target=81": target is given twice`},
		{name: "field without value", in: []string{"published=8080,target"}, wantErr: `--publish "published=8080,target": field "target" must be KEY=VALUE; expected ` + publishForms},
		{
			name:    "host port published twice",
			in:      []string{"8080:80", "published=8080,target=81"},
			wantErr: `--publish "published=8080,target=81": host port 8080/tcp is already published by --publish "8080:80"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePublish(tt.in)
			checkErr(t, err, tt.wantErr)
			if err != nil {
				return
			}
			if len(got) != len(tt.want) {
				t.Fatalf("parsePublish(%q) = %v, want %v", tt.in, got, tt.want)
			}
			for i := range got {
				if !proto.Equal(got[i], tt.want[i]) {
					t.Errorf("port %d = %v, want %v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestFormatPorts(t *testing.T) {
	spec := &shoalpb.ServiceSpec{Endpoint: &shoalpb.EndpointSpec{Ports: []*shoalpb.PortConfig{
		{PublishedPort: 8080, TargetPort: 80, PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST},
		{PublishedPort: 5353, TargetPort: 53, Protocol: shoalpb.PortConfig_PROTOCOL_UDP},
	}}}
	if got, want := formatPorts(spec), "host:8080->80/tcp,*:5353->53/udp"; got != want {
		t.Errorf("formatPorts = %q, want %q", got, want)
	}
	if got := formatPorts(&shoalpb.ServiceSpec{}); got != "" {
		t.Errorf("formatPorts of no ports = %q, want empty", got)
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct{ in, want string }{
		{"SIGTERM", "SIGTERM"}, {"term", "SIGTERM"}, {"15", "SIGTERM"}, {"SIGQUIT", "SIGQUIT"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSignal(tt.in)
			if err != nil || got != tt.want {
				t.Errorf("parseSignal(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestProgressOf(t *testing.T) {
	running, pending, failed := shoalpb.TaskState_TASK_STATE_RUNNING, shoalpb.TaskState_TASK_STATE_PENDING, shoalpb.TaskState_TASK_STATE_REJECTED
	shutdown := shoalpb.TaskState_TASK_STATE_SHUTDOWN
	replicated := &shoalpb.Service{Spec: &shoalpb.ServiceSpec{Name: "web", Mode: &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 3}}}}
	global := &shoalpb.Service{Spec: &shoalpb.ServiceSpec{Name: "agent", Mode: &shoalpb.ServiceSpec_Global{Global: &shoalpb.GlobalService{}}}}
	tests := []struct {
		name          string
		svc           *shoalpb.Service
		tasks         []*shoalpb.Task
		wantLine      string
		wantConverged bool
		wantFailure   string
	}{
		{name: "nothing yet", svc: replicated, wantLine: "web: 0/3 running"},
		{
			name: "partly running, pending reason shown",
			svc:  replicated,
			tasks: []*shoalpb.Task{
				task("web", 1, running, running, ""), task("web", 2, running, running, ""),
				{ServiceName: "web", Slot: 3, DesiredState: running, Status: &shoalpb.TaskStatus{State: pending, Message: "no suitable node"}},
			},
			wantLine: "web: 2/3 running (pending: no suitable node)",
		},
		{
			name:          "all running; old shut down tasks do not count",
			svc:           replicated,
			tasks:         []*shoalpb.Task{task("web", 1, running, running, ""), task("web", 2, running, running, ""), task("web", 3, running, running, ""), task("web", 3, shutdown, running, "")},
			wantLine:      "web: 3/3 running",
			wantConverged: true,
		},
		{
			name:        "rejected task is the failure",
			svc:         replicated,
			tasks:       []*shoalpb.Task{task("web", 1, running, running, ""), task("web", 2, shutdown, failed, "pull shoal/nope:latest: not found")},
			wantLine:    "web: 1/3 running",
			wantFailure: "task web.2 rejected: pull shoal/nope:latest: not found",
		},
		{
			name:          "global wants one per task made",
			svc:           global,
			tasks:         []*shoalpb.Task{task("agent", 0, running, running, ""), task("agent", 0, running, running, "")},
			wantLine:      "agent: 2/2 running",
			wantConverged: true,
		},
		{name: "global with no task yet is not converged", svc: global, wantLine: "agent: 0/0 running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := progressOf(tt.svc, tt.tasks)
			if got := p.line(tt.svc.GetSpec().GetName()); got != tt.wantLine {
				t.Errorf("line = %q, want %q", got, tt.wantLine)
			}
			if p.converged() != tt.wantConverged {
				t.Errorf("converged = %v, want %v", p.converged(), tt.wantConverged)
			}
			var err error
			if p.failed != nil {
				err = failure(p.failed)
			}
			checkErr(t, err, tt.wantFailure)
		})
	}
}

func task(service string, slot uint64, desired, state shoalpb.TaskState, errMsg string) *shoalpb.Task {
	return &shoalpb.Task{
		Id: service + "-task", ServiceName: service, Slot: slot, NodeId: "n1", DesiredState: desired,
		Status: &shoalpb.TaskStatus{State: state, Err: errMsg},
	}
}

// checkErr fails t unless err's text is want ("" for no error).
func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want %q", want)
	case want != "" && err.Error() != want:
		t.Fatalf("error %q, want %q", err.Error(), want)
	}
}

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{in: "", want: 0},
		{in: "1048576", want: 1 << 20},
		{in: "64m", want: 64 << 20},
		{in: "64M", want: 64 << 20},
		{in: "64MB", want: 64 << 20},
		{in: "512MiB", want: 512 << 20},
		{in: "1.5k", want: 1536},
		{in: "2g", want: 2 << 30},
		{in: "-1m", wantErr: true},
		{in: "10x", wantErr: true},
		{in: "m", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseBytes("--limit-memory", tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
