package scheduler

import (
	"reflect"
	"strconv"
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
)

func node(id string, state shoalpb.NodeState, avail shoalpb.NodeAvailability, tasks ...*shoalpb.Task) NodeInfo {
	m := make(map[string]*shoalpb.Task)
	for _, t := range tasks {
		m[t.GetId()] = t
	}
	return NodeInfo{
		Node: &shoalpb.Node{
			Id:     id,
			Spec:   &shoalpb.NodeSpec{Availability: avail},
			Status: &shoalpb.NodeStatus{State: state},
		},
		Tasks: m,
	}
}

func ready(id string, tasks ...*shoalpb.Task) NodeInfo {
	return node(id, shoalpb.NodeState_NODE_STATE_READY, shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE, tasks...)
}

func task(id, service string) *shoalpb.Task {
	return &shoalpb.Task{Id: id, ServiceId: service}
}

// attachment is a network attachment task (shoal network connect).
func attachment(id string) *shoalpb.Task {
	return &shoalpb.Task{Id: id, Attachment: &shoalpb.Attachment{Netns: "/run/netns/" + id, Name: id}}
}

const (
	down    = shoalpb.NodeState_NODE_STATE_DOWN
	up      = shoalpb.NodeState_NODE_STATE_READY
	active  = shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	drained = shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN
	paused  = shoalpb.NodeAvailability_NODE_AVAILABILITY_PAUSE
)

func TestSchedule(t *testing.T) {
	tests := []struct {
		name  string
		nodes []NodeInfo
		tasks []*shoalpb.Task
		want  []Result
	}{
		{
			name:  "batch of one service spreads across nodes",
			nodes: []NodeInfo{ready("n1"), ready("n2"), ready("n3")},
			tasks: []*shoalpb.Task{task("t1", "web"), task("t2", "web"), task("t3", "web"), task("t4", "web")},
			want: []Result{
				{TaskID: "t1", NodeID: "n1"},
				{TaskID: "t2", NodeID: "n2"},
				{TaskID: "t3", NodeID: "n3"},
				{TaskID: "t4", NodeID: "n1"},
			},
		},
		{
			name: "fewest tasks of the service beats fewest tasks overall",
			nodes: []NodeInfo{
				ready("n1", task("a1", "web")),
				ready("n2", task("b1", "db"), task("b2", "db")),
			},
			tasks: []*shoalpb.Task{task("t1", "web")},
			want:  []Result{{TaskID: "t1", NodeID: "n2"}},
		},
		{
			name: "ties on the service broken by fewest tasks overall",
			nodes: []NodeInfo{
				ready("n1", task("b1", "db"), task("b2", "db")),
				ready("n2", task("c1", "cache")),
			},
			tasks: []*shoalpb.Task{task("t1", "web")},
			want:  []Result{{TaskID: "t1", NodeID: "n2"}},
		},
		{
			name:  "full ties broken by node id whatever the input order",
			nodes: []NodeInfo{ready("nb"), ready("nc"), ready("na")},
			tasks: []*shoalpb.Task{task("t1", "web")},
			want:  []Result{{TaskID: "t1", NodeID: "na"}},
		},
		{
			name: "down, drained and paused nodes take no task",
			nodes: []NodeInfo{
				node("n1", down, active),
				node("n2", up, drained),
				node("n3", up, paused),
				ready("n4"),
			},
			tasks: []*shoalpb.Task{task("t1", "web"), task("t2", "web")},
			want: []Result{
				{TaskID: "t1", NodeID: "n4"},
				{TaskID: "t2", NodeID: "n4"},
			},
		},
		{
			// The namespace of a network attachment is on its node
			// already: only readiness counts.
			name: "attachments ignore drain and pause but not readiness",
			nodes: []NodeInfo{
				node("n2", up, drained),
			},
			tasks: []*shoalpb.Task{attachment("a1"), task("t1", "web")},
			want: []Result{
				{TaskID: "a1", NodeID: "n2"},
				{TaskID: "t1", Reason: "no suitable node (1 node drained)"},
			},
		},
		{
			name:  "an attachment waits for its node to be ready",
			nodes: []NodeInfo{node("n3", down, paused)},
			tasks: []*shoalpb.Task{attachment("a1")},
			want:  []Result{{TaskID: "a1", Reason: "no suitable node (1 node not ready)"}},
		},
		{
			name: "impossible placement says why",
			nodes: []NodeInfo{
				node("n1", down, active),
				node("n2", up, drained),
			},
			tasks: []*shoalpb.Task{task("t1", "web")},
			want: []Result{
				{TaskID: "t1", Reason: "no suitable node (1 node not ready; 1 node drained)"},
			},
		},
		{
			name: "reasons are counted per filter",
			nodes: []NodeInfo{
				node("n1", down, active),
				node("n2", down, drained),
				node("n3", up, paused),
			},
			tasks: []*shoalpb.Task{task("t1", "web")},
			want: []Result{
				{TaskID: "t1", Reason: "no suitable node (2 nodes not ready; 1 node paused)"},
			},
		},
		{
			name:  "no nodes at all",
			tasks: []*shoalpb.Task{task("t1", "web")},
			want:  []Result{{TaskID: "t1", Reason: "no suitable node (no nodes in the cluster)"}},
		},
		{
			// Tasks are placed service by service (web first: it appears
			// first), results come back in input order.
			name:  "two services interleaved keep input order and spread each",
			nodes: []NodeInfo{ready("n1"), ready("n2")},
			tasks: []*shoalpb.Task{task("w1", "web"), task("d1", "db"), task("w2", "web"), task("d2", "db")},
			want: []Result{
				{TaskID: "w1", NodeID: "n1"},
				{TaskID: "d1", NodeID: "n1"},
				{TaskID: "w2", NodeID: "n2"},
				{TaskID: "d2", NodeID: "n2"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Schedule(tc.nodes, tc.tasks)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Schedule() =\n%v\nwant\n%v", got, tc.want)
			}
		})
	}
}

func TestScheduleDoesNotModifyInput(t *testing.T) {
	nodes := []NodeInfo{ready("n1", task("a", "web"))}
	Schedule(nodes, []*shoalpb.Task{task("t1", "web"), task("t2", "web")})
	if got := len(nodes[0].Tasks); got != 1 {
		t.Errorf("caller's node has %d tasks after Schedule, want 1", got)
	}
	again := Schedule(nodes, []*shoalpb.Task{task("t3", "web")})
	if again[0].NodeID != "n1" {
		t.Errorf("second Schedule placed on %q, want n1", again[0].NodeID)
	}
}

// capacityFilter allows at most max active tasks per node: a filter a
// placement can use up.
type capacityFilter struct{ max int }

func (f *capacityFilter) SetTask(*shoalpb.Task) bool { return true }
func (f *capacityFilter) Check(n *NodeInfo) bool     { return n.ActiveTasks() < f.max }
func (f *capacityFilter) Explain(nodes int) string   { return plural(nodes, "full") }

func TestScheduleWithFilterUsedUpByBatch(t *testing.T) {
	filters := append(DefaultFilters(), &capacityFilter{max: 1})
	nodes := []NodeInfo{ready("n1"), ready("n2", task("x", "db"))}
	got := ScheduleWith(filters, nodes, []*shoalpb.Task{task("t1", "web"), task("t2", "web")})
	want := []Result{
		{TaskID: "t1", NodeID: "n1"},
		// n2 failed at once, n1 when t2 was about to use it: each
		// counts once.
		{TaskID: "t2", Reason: "no suitable node (2 nodes full)"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ScheduleWith() = %v, want %v", got, want)
	}
}

// Helpers for the filter, spread and benchmark tests.

const (
	gib  = 1 << 30
	nano = 1e9 // nano CPUs in a CPU
)

// withResources describes the node's resources.
func withResources(n NodeInfo, nanoCPUs, memoryBytes int64) NodeInfo {
	if n.Node.Description == nil {
		n.Node.Description = &shoalpb.NodeDescription{}
	}
	n.Node.Description.Resources = &shoalpb.Resources{NanoCpus: nanoCPUs, MemoryBytes: memoryBytes}
	return n
}

// withLabels sets the node's labels.
func withLabels(n NodeInfo, labels map[string]string) NodeInfo {
	n.Node.Spec.Labels = labels
	return n
}

// specOpt sets part of a task's service spec.
type specOpt func(*shoalpb.ServiceSpec)

func placement(s *shoalpb.ServiceSpec) *shoalpb.Placement {
	if s.Placement == nil {
		s.Placement = &shoalpb.Placement{}
	}
	return s.Placement
}

func reserve(nanoCPUs, memoryBytes int64) specOpt {
	return func(s *shoalpb.ServiceSpec) {
		s.Container = &shoalpb.ContainerSpec{Resources: &shoalpb.ResourceRequirements{
			Reservations: &shoalpb.Resources{NanoCpus: nanoCPUs, MemoryBytes: memoryBytes},
		}}
	}
}

func constraints(cs ...string) specOpt {
	return func(s *shoalpb.ServiceSpec) { placement(s).Constraints = cs }
}

func spread(keys ...string) specOpt {
	return func(s *shoalpb.ServiceSpec) {
		for _, k := range keys {
			placement(s).Preferences = append(placement(s).Preferences, &shoalpb.PlacementPreference{Spread: k})
		}
	}
}

func maxPerNode(n uint64) specOpt {
	return func(s *shoalpb.ServiceSpec) { placement(s).MaxReplicas = n }
}

func ports(ps ...*shoalpb.PortConfig) specOpt {
	return func(s *shoalpb.ServiceSpec) { s.Endpoint = &shoalpb.EndpointSpec{Ports: ps} }
}

func hostPortConfig(port uint32, proto shoalpb.PortConfig_Protocol) *shoalpb.PortConfig {
	return &shoalpb.PortConfig{Protocol: proto, TargetPort: 80, PublishedPort: port, PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST}
}

func hostTCP(port uint32) *shoalpb.PortConfig {
	return hostPortConfig(port, shoalpb.PortConfig_PROTOCOL_TCP)
}

// specTask returns a task of service with a spec made by opts.
func specTask(id, service string, opts ...specOpt) *shoalpb.Task {
	t := task(id, service)
	t.Spec = &shoalpb.ServiceSpec{Name: service}
	for _, o := range opts {
		o(t.Spec)
	}
	return t
}

// replicas returns n tasks of service, "<service>1" to "<service>N", with
// one spec made by opts.
func replicas(service string, n int, opts ...specOpt) []*shoalpb.Task {
	tasks := make([]*shoalpb.Task, n)
	for i := range tasks {
		tasks[i] = specTask(service+strconv.Itoa(i+1), service, opts...)
	}
	return tasks
}

// outcomes returns, per result, the chosen node or the reason none fits.
func outcomes(results []Result) []string {
	out := make([]string, len(results))
	for i, r := range results {
		out[i] = r.NodeID
		if r.NodeID == "" {
			out[i] = r.Reason
		}
	}
	return out
}

// scheduleCase is a table entry of the filter and spread tests: nodes,
// tasks (placed in one call) and, per task, the node or the reason.
type scheduleCase struct {
	name  string
	nodes []NodeInfo
	tasks []*shoalpb.Task
	want  []string
}

func runScheduleCases(t *testing.T, tests []scheduleCase) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := outcomes(Schedule(tc.nodes, tc.tasks))
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Schedule() =\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}
