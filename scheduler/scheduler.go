// Package scheduler is Shoal's pure placement: nodes and tasks in, a node per
// task (or the reason none fits) out. It does no I/O, starts no goroutines
// and reads no clock, so the same input always gives the same placement; the
// manager's placement component feeds it from the store and writes the
// result back.
//
// # Filters
//
// A pipeline of filters (see Filter and DefaultFilters) decides which nodes
// can take a task, in this order:
//
//   - the node is READY, not drained and not paused;
//   - its described resources minus the reservations of its active tasks
//     (and of the tasks placed so far in the same Schedule call) cover the
//     task's memory reservation, then its CPU reservation;
//   - it has fewer than Placement.max_replicas tasks of the service;
//   - none of its tasks publishes one of the task's host-mode ports
//     (same port and protocol);
//   - it meets every placement constraint of the service.
//
// A node that fails is counted against the first filter (and for
// constraints and ports, the first constraint or port) it fails; when no
// node fits, those counts make the reason, e.g. "no suitable node
// (insufficient memory on 2 nodes; constraint node.labels.zone==b not met
// on 3 nodes)".
//
// # Ranking
//
// The nodes that pass are ranked per task:
//
//  1. Spread preferences, in order, as in SwarmKit. The first preference
//     splits the nodes by the value of its label (node.labels.NAME or
//     engine.labels.NAME; the nodes lacking the label form one more group);
//     the task goes to the group with the fewest tasks of the service, the
//     service's active tasks on the group's passing nodes included. Within
//     that group the next preference splits again, and so on. Ties between
//     groups go to labelled groups before the unlabelled one, then to the
//     lowest label value.
//  2. Within the last group (all passing nodes when there are no
//     preferences), nodes are ordered by: fewest recent failures of the
//     service on the node (NodeInfo.RecentFailures), so a node where the
//     service keeps failing is used last, even if it runs fewer of its
//     tasks; then fewest tasks of the service; then fewest tasks overall;
//     then node id.
//
// Every placement counts for the next task of the batch: tasks of a
// service spread over the nodes and groups, and reservations and host
// ports add up, so a node can fill up within one call.
//
// # Cost
//
// Tasks made from the same service version are placed together as a
// group: the filters run once per node for the group, and the passing nodes
// go into a tree with one level per preference, a heap of child groups in
// each inner group (fewest tasks of the service first) and a heap of nodes
// in each leaf. Each task descends the tree to the best node, which is
// checked again (an earlier placement may have used it up; if so it is
// dropped and counted in the reason), and costs one heap fix per level.
// With p preferences, a group of k tasks over n nodes costs
// O(n·p + k·(p + log n)) heap steps; O(n + k log n) without preferences.
package scheduler

import (
	shoalpb "github.com/shoal-project/shoal/proto"
)

// NodeInfo is a node as the scheduler sees it.
type NodeInfo struct {
	Node *shoalpb.Node
	// Tasks holds the tasks active on the node (assigned there and not
	// finished), by task id. Their reservations and host ports are taken
	// on the node. Schedule does not modify it.
	Tasks map[string]*shoalpb.Task
	// RecentFailures counts, by service id, the tasks of the service that
	// recently failed or were rejected on the node (the caller chooses what
	// recent means). For the service's tasks the node ranks after the
	// others of its spread group; see the package doc. May be nil.
	RecentFailures map[string]int

	// Counts Schedule keeps while it places a batch, starting from Tasks.
	total          int                   // active tasks
	byService      map[string]int        // active tasks per service id
	reservedCPU    int64                 // nano CPUs reserved by active tasks
	reservedMemory int64                 // bytes reserved by active tasks
	hostPorts      map[hostPort]struct{} // host-mode ports published by active tasks; nil when none

	// The service's tasks and recent failures on the node, for the group
	// being placed: copied out of the maps once per group so the ranking
	// compares fields.
	groupTasks    int
	groupFailures int
}

// ServiceTasks returns how many active tasks of the service the node has,
// counting the tasks placed so far in the current Schedule call. Valid only
// inside Schedule (for filters).
func (n *NodeInfo) ServiceTasks(serviceID string) int { return n.byService[serviceID] }

// ActiveTasks returns how many active tasks the node has, counting the
// tasks placed so far in the current Schedule call. Valid only inside
// Schedule (for filters).
func (n *NodeInfo) ActiveTasks() int { return n.total }

// Available returns the node's described resources minus the reservations
// of its active tasks and of the tasks placed so far in the current
// Schedule call; negative when the node is overcommitted. Valid only inside
// Schedule (for filters).
func (n *NodeInfo) Available() (nanoCPUs, memoryBytes int64) {
	r := n.Node.GetDescription().GetResources()
	return r.GetNanoCpus() - n.reservedCPU, r.GetMemoryBytes() - n.reservedMemory
}

// HostPortInUse reports whether an active task of the node, or one placed
// there so far in the current Schedule call, publishes port/protocol in
// host mode. Valid only inside Schedule (for filters).
func (n *NodeInfo) HostPortInUse(protocol shoalpb.PortConfig_Protocol, port uint32) bool {
	_, ok := n.hostPorts[hostPort{protocol: protocol, port: port}]
	return ok
}

// reservations returns what t reserves on its node; negative values (which
// the control API refuses) count as none.
func reservations(t *shoalpb.Task) (nanoCPUs, memoryBytes int64) {
	r := t.GetSpec().GetContainer().GetResources().GetReservations()
	return max(r.GetNanoCpus(), 0), max(r.GetMemoryBytes(), 0)
}

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
// next, so a batch of tasks of one service spreads across the nodes and
// reservations add up. Neither nodes nor tasks are modified.
func Schedule(nodes []NodeInfo, tasks []*shoalpb.Task) []Result {
	return ScheduleWith(DefaultFilters(), nodes, tasks)
}

// ScheduleWith is Schedule with an explicit filter list.
func ScheduleWith(filters []Filter, nodes []NodeInfo, tasks []*shoalpb.Task) []Result {
	b := newBatch(filters, nodes, tasks)
	for _, g := range groupTasks(tasks) {
		b.scheduleGroup(g)
	}
	return b.results
}

// newBatch copies the nodes and counts their active tasks.
func newBatch(filters []Filter, nodes []NodeInfo, tasks []*shoalpb.Task) *batch {
	b := &batch{
		infos:    make([]NodeInfo, len(nodes)),
		hosting:  make(map[string][]*NodeInfo),
		pipeline: NewPipeline(filters),
		tasks:    tasks,
		results:  make([]Result, len(tasks)),
		scratch:  newTreeScratch(len(nodes)),
	}
	for i := range nodes {
		n := &b.infos[i]
		*n = NodeInfo{
			Node:           nodes[i].Node,
			Tasks:          nodes[i].Tasks,
			RecentFailures: nodes[i].RecentFailures,
			byService:      make(map[string]int),
		}
		for _, t := range nodes[i].Tasks {
			b.add(n, t)
		}
	}
	return b
}

// batch is the state of one Schedule call.
type batch struct {
	infos []NodeInfo // copies of the caller's nodes, with the counts
	// hosting lists, by service id, the nodes with active tasks of the
	// service, so a group's counts are read from the few nodes that have
	// some rather than looked up on every node.
	hosting  map[string][]*NodeInfo
	pipeline *Pipeline
	tasks    []*shoalpb.Task
	results  []Result
	scratch  *treeScratch
}

// add counts t as active on n.
func (b *batch) add(n *NodeInfo, t *shoalpb.Task) {
	n.total++
	svc := t.GetServiceId()
	if n.byService[svc] == 0 {
		b.hosting[svc] = append(b.hosting[svc], n)
	}
	n.byService[svc]++
	cpu, mem := reservations(t)
	n.reservedCPU += cpu
	n.reservedMemory += mem
	for _, p := range t.GetSpec().GetEndpoint().GetPorts() {
		if hp, ok := publishedOnHost(p); ok {
			if n.hostPorts == nil {
				n.hostPorts = make(map[hostPort]struct{})
			}
			n.hostPorts[hp] = struct{}{}
		}
	}
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

// scheduleGroup filters the nodes once for the group and arranges the
// passing ones in a spread tree, then places each task on the best node of
// the tree (see the package doc).
func (b *batch) scheduleGroup(g *group) {
	first := b.tasks[g.indexes[0]]
	p := b.pipeline
	p.SetTask(first)
	for i := range b.infos {
		b.infos[i].groupTasks = 0
	}
	for _, n := range b.hosting[g.serviceID] {
		n.groupTasks = n.byService[g.serviceID]
	}
	tree := newSpreadTree(g.serviceID, spreadKeys(first), b.scratch)
	for i := range b.infos {
		if p.Process(&b.infos[i]) {
			tree.add(&b.infos[i])
		}
	}
	tree.init()

	for _, ti := range g.indexes {
		t := b.tasks[ti]
		b.results[ti].TaskID = t.GetId()
		best := tree.best(p)
		if best == nil {
			b.results[ti].Reason = p.Explain(len(b.infos))
			continue
		}
		b.results[ti].NodeID = best.Node.GetId()
		b.add(best, t)
		tree.placed(best)
	}
}
