package scheduler

import (
	"fmt"
	"reflect"
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

// capacityFilter allows at most max active tasks per node: it stands for the
// resource filters to come and shows a placement can use a node up.
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
		{TaskID: "t2", Reason: "no suitable node (1 node full)"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ScheduleWith() = %v, want %v", got, want)
	}
}

func BenchmarkSchedule(b *testing.B) {
	const (
		numNodes    = 1000
		numTasks    = 10000
		numServices = 100
	)
	nodes := make([]NodeInfo, numNodes)
	for i := range nodes {
		nodes[i] = ready(fmt.Sprintf("node%04d", i))
	}
	tasks := make([]*shoalpb.Task, numTasks)
	for i := range tasks {
		tasks[i] = task(fmt.Sprintf("task%05d", i), fmt.Sprintf("svc%03d", i%numServices))
	}
	b.ReportAllocs()
	for b.Loop() {
		res := Schedule(nodes, tasks)
		if res[len(res)-1].NodeID == "" {
			b.Fatal("last task not placed")
		}
	}
}
