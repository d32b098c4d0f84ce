// Package scheduler is Shoal's pure placement: nodes and tasks in, a node per
// task (or the reason none fits) out. It does no I/O, starts no goroutines
// and reads no clock, so the same input always gives the same placement; the
// manager's placement component feeds it from the store and writes the
// result back.
//
// Placement is a pipeline of filters (which nodes can take the task, see
// Filter) followed by a ranking of the nodes that pass: fewest tasks of the
// task's service first (spread replicas across hosts), then fewest tasks
// overall, then node id.
package scheduler

import (
	"container/heap"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// NodeInfo is a node as the scheduler sees it.
type NodeInfo struct {
	Node *shoalpb.Node
	// Tasks holds the tasks active on the node (assigned there and not
	// finished), by task id. Schedule does not modify it.
	Tasks map[string]*shoalpb.Task

	// Counts Schedule keeps while it places a batch, starting from Tasks.
	total     int            // active tasks
	byService map[string]int // active tasks per service id
}

// ServiceTasks returns how many active tasks of the service the node has,
// counting the tasks placed so far in the current Schedule call. Valid only
// inside Schedule (for filters).
func (n *NodeInfo) ServiceTasks(serviceID string) int { return n.byService[serviceID] }

// ActiveTasks returns how many active tasks the node has, counting the
// tasks placed so far in the current Schedule call. Valid only inside
// Schedule (for filters).
func (n *NodeInfo) ActiveTasks() int { return n.total }

// Result is the placement of one task.
type Result struct {
	TaskID string
	// NodeID is the chosen node, "" when no node fits.
	NodeID string
	// Reason says why no node fits when NodeID is "", e.g.
	// "no suitable node (1 node not ready; 1 node drained)".
	Reason string
}

// Schedule places tasks on nodes with the default filters and returns one
// Result per task, in the order of tasks. Each placement counts for the
// next, so a batch of tasks of one service spreads across the nodes. Neither
// nodes nor tasks are modified.
func Schedule(nodes []NodeInfo, tasks []*shoalpb.Task) []Result {
	return ScheduleWith(DefaultFilters(), nodes, tasks)
}

// ScheduleWith is Schedule with an explicit filter list.
func ScheduleWith(filters []Filter, nodes []NodeInfo, tasks []*shoalpb.Task) []Result {
	infos := make([]NodeInfo, len(nodes))
	for i := range nodes {
		infos[i] = NodeInfo{
			Node:      nodes[i].Node,
			Tasks:     nodes[i].Tasks,
			total:     len(nodes[i].Tasks),
			byService: make(map[string]int),
		}
		for _, t := range nodes[i].Tasks {
			infos[i].byService[t.GetServiceId()]++
		}
	}

	results := make([]Result, len(tasks))
	pipeline := NewPipeline(filters)
	for _, g := range groupTasks(tasks) {
		scheduleGroup(pipeline, infos, tasks, g, results)
	}
	return results
}

// group is tasks made from the same service version, so with the same spec:
// the filters give the same answer for all of them and run once per node.
type group struct {
	serviceID string
	indexes   []int // into tasks, in input order
}

type groupKey struct {
	serviceID string
	version   uint64
}

// groupTasks splits tasks into groups, in order of first appearance.
func groupTasks(tasks []*shoalpb.Task) []*group {
	var groups []*group
	byKey := make(map[groupKey]*group)
	for i, t := range tasks {
		k := groupKey{t.GetServiceId(), t.GetServiceVersion()}
		g := byKey[k]
		if g == nil {
			g = &group{serviceID: k.serviceID}
			byKey[k] = g
			groups = append(groups, g)
		}
		g.indexes = append(g.indexes, i)
	}
	return groups
}

// scheduleGroup filters the nodes once for the group, then places each task
// on the best-ranked node, keeping the candidates in a heap so a batch of k
// tasks over n nodes costs O(n + k log n).
func scheduleGroup(p *Pipeline, infos []NodeInfo, tasks []*shoalpb.Task, g *group, results []Result) {
	first := tasks[g.indexes[0]]
	p.SetTask(first)
	h := &nodeHeap{serviceID: g.serviceID}
	for i := range infos {
		if p.Process(&infos[i]) {
			h.nodes = append(h.nodes, &infos[i])
		}
	}
	heap.Init(h)

	for _, ti := range g.indexes {
		t := tasks[ti]
		results[ti].TaskID = t.GetId()
		// A placement may make a node unfit for the next task (resource
		// filters, later): recheck the best node and drop it if so.
		for h.Len() > 0 && !p.Recheck(h.nodes[0]) {
			heap.Pop(h)
		}
		if h.Len() == 0 {
			results[ti].Reason = p.Explain(len(infos))
			continue
		}
		best := h.nodes[0]
		results[ti].NodeID = best.Node.GetId()
		best.total++
		best.byService[g.serviceID]++
		heap.Fix(h, 0)
	}
}

// nodeHeap orders candidate nodes for one service, best first.
type nodeHeap struct {
	serviceID string
	nodes     []*NodeInfo
}

func (h *nodeHeap) Len() int { return len(h.nodes) }

// Less ranks by fewest tasks of the service, then fewest tasks, then id.
func (h *nodeHeap) Less(i, j int) bool {
	a, b := h.nodes[i], h.nodes[j]
	if sa, sb := a.byService[h.serviceID], b.byService[h.serviceID]; sa != sb {
		return sa < sb
	}
	if a.total != b.total {
		return a.total < b.total
	}
	return a.Node.GetId() < b.Node.GetId()
}

func (h *nodeHeap) Swap(i, j int) { h.nodes[i], h.nodes[j] = h.nodes[j], h.nodes[i] }
func (h *nodeHeap) Push(x any)    { h.nodes = append(h.nodes, x.(*NodeInfo)) }
func (h *nodeHeap) Pop() any {
	n := h.nodes[len(h.nodes)-1]
	h.nodes = h.nodes[:len(h.nodes)-1]
	return n
}
