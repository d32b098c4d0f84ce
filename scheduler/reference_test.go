package scheduler

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// referenceSchedule places tasks by the rules of the package doc, the
// slow and obvious way: for every task it checks every node and counts
// every group again. Only the chosen nodes are compared ("" when none).
func referenceSchedule(nodes []NodeInfo, tasks []*shoalpb.Task) []string {
	b := newBatch(DefaultFilters(), nodes, tasks)
	out := make([]string, len(tasks))
	for _, g := range groupTasks(tasks) {
		first := tasks[g.indexes[0]]
		b.pipeline.SetTask(first)
		keys := spreadKeys(first)
		var passed []*NodeInfo // at the start of the group: the nodes groups count over
		for i := range b.infos {
			if b.pipeline.Process(&b.infos[i]) {
				passed = append(passed, &b.infos[i])
			}
		}
		path := func(n *NodeInfo) []string {
			var p []string
			for _, k := range keys {
				v, ok := k.value(n.Node)
				if !ok {
					v = "\x00missing"
				}
				p = append(p, v)
			}
			return p
		}
		for _, ti := range g.indexes {
			var cands []*NodeInfo
			for _, n := range passed {
				if b.pipeline.Process(n) {
					cands = append(cands, n)
				}
			}
			// Descend: at each level, the value with the fewest tasks
			// of the service over the passed nodes under it, among the
			// values of nodes that still fit.
			var prefix []string
			for level := 0; level < len(keys) && len(cands) > 0; level++ {
				tally := make(map[string]int)
				for _, n := range passed {
					if p := path(n); slices.Equal(p[:level], prefix) {
						tally[p[level]] += n.byService[g.serviceID]
					}
				}
				best := path(cands[0])[level]
				for _, n := range cands {
					v := path(n)[level]
					if tally[v] < tally[best] || (tally[v] == tally[best] && valueLess(v, best)) {
						best = v
					}
				}
				var next []*NodeInfo
				for _, n := range cands {
					if path(n)[level] == best {
						next = append(next, n)
					}
				}
				cands, prefix = next, append(prefix, best)
			}
			var best *NodeInfo
			for _, n := range cands {
				if best == nil || referenceLess(n, best, g.serviceID) {
					best = n
				}
			}
			if best != nil {
				out[ti] = best.Node.GetId()
				b.add(best, tasks[ti])
			}
		}
	}
	return out
}

// valueLess orders label values on a tie: labelled first, then by value.
func valueLess(a, b string) bool {
	am, bm := a == "\x00missing", b == "\x00missing"
	if am != bm {
		return bm
	}
	return a < b
}

func referenceLess(a, b *NodeInfo, svc string) bool {
	if fa, fb := a.RecentFailures[svc], b.RecentFailures[svc]; fa != fb {
		return fa < fb
	}
	if sa, sb := a.byService[svc], b.byService[svc]; sa != sb {
		return sa < sb
	}
	if a.total != b.total {
		return a.total < b.total
	}
	return a.Node.GetId() < b.Node.GetId()
}

// randomCluster returns nodes with random labels, memory, failures and
// tasks, and pending tasks of a few services with random specs.
func randomCluster(r *rand.Rand) ([]NodeInfo, []*shoalpb.Task) {
	pick := func(vals ...string) string { return vals[r.IntN(len(vals))] }
	numServices := 1 + r.IntN(4)
	specs := make([]*shoalpb.ServiceSpec, numServices)
	for i := range specs {
		s := &shoalpb.ServiceSpec{}
		if r.IntN(2) == 0 {
			reserve(0, int64(1+r.IntN(2))*gib)(s)
		}
		if r.IntN(3) == 0 {
			maxPerNode(uint64(1 + r.IntN(3)))(s)
		}
		if r.IntN(4) == 0 {
			ports(hostTCP(8080))(s)
		}
		if r.IntN(4) == 0 {
			constraints("node.labels.zone!=c")(s)
		}
		switch r.IntN(4) {
		case 1:
			spread("node.labels.zone")(s)
		case 2:
			spread("node.labels.zone", "node.labels.rack")(s)
		case 3:
			spread("node.labels.rack", "node.labels.zone")(s)
		}
		specs[i] = s
	}
	svcTask := func(id string, svc int) *shoalpb.Task {
		t := task(id, "s"+strconv.Itoa(svc))
		t.Spec = specs[svc]
		return t
	}

	nodes := make([]NodeInfo, 1+r.IntN(12))
	for i := range nodes {
		id := fmt.Sprintf("n%02d", i)
		var existing []*shoalpb.Task
		for j := range r.IntN(3) {
			existing = append(existing, svcTask(fmt.Sprintf("%s-x%d", id, j), r.IntN(numServices)))
		}
		n := ready(id, existing...)
		if r.IntN(8) == 0 {
			n = node(id, down, active, existing...)
		}
		labels := map[string]string{}
		if z := pick("a", "b", "c", ""); z != "" {
			labels["zone"] = z
		}
		if k := pick("r1", "r2", ""); k != "" {
			labels["rack"] = k
		}
		n = withResources(withLabels(n, labels), 4*nano, int64(r.IntN(8))*gib)
		if r.IntN(4) == 0 {
			n.RecentFailures = map[string]int{"s" + strconv.Itoa(r.IntN(numServices)): 1 + r.IntN(2)}
		}
		nodes[i] = n
	}
	tasks := make([]*shoalpb.Task, 1+r.IntN(30))
	for i := range tasks {
		tasks[i] = svcTask(fmt.Sprintf("t%02d", i), r.IntN(numServices))
	}
	return nodes, tasks
}

// TestScheduleMatchesReference checks the heaps and the spread tree against
// referenceSchedule on random clusters (the filters have their own tests).
func TestScheduleMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		nodes, tasks := randomCluster(r)
		results := Schedule(nodes, tasks)
		got := make([]string, len(results))
		for j, res := range results {
			got[j] = res.NodeID
			if res.NodeID == "" && !strings.HasPrefix(res.Reason, "no suitable node (") {
				t.Errorf("case %d: task %s unplaced with reason %q", i, res.TaskID, res.Reason)
			}
		}
		want := referenceSchedule(nodes, tasks)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("case %d: Schedule() = %q, reference %q", i, got, want)
		}
	}
}
