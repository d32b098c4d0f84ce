package scheduler

import (
	"fmt"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Filter decides whether a node can take a task. Filters are the seam where
// placement rules are added (constraints, resources, ports): a new rule is a
// new Filter in DefaultFilters, nothing else changes.
//
// A Filter is used by one Schedule call at a time and must not keep state
// across SetTask calls other than what it derives from the task.
type Filter interface {
	// SetTask prepares the filter for t. It returns false when the filter
	// does not apply to t (for example a constraint filter on a task with no
	// constraints); Check is then not called for t.
	SetTask(t *shoalpb.Task) bool
	// Check reports whether the node can run the task given to SetTask. It
	// must depend only on that task and on n, so a repeated Check gives the
	// same answer until n changes.
	Check(n *NodeInfo) bool
	// Explain says why nodes failed Check, for the task's status message;
	// nodes is how many failed (at least 1), e.g. "2 nodes not ready".
	Explain(nodes int) string
}

// RuleFilter is a Filter made of several rules, such as the constraints or
// the host ports of a task, whose explanation names the rule a node
// failed: "constraint node.labels.zone==b not met on 3 nodes" rather than
// all of the task's constraints. The Pipeline calls FailedRule instead of
// Check and counts failures per rule.
type RuleFilter interface {
	Filter
	// FailedRule returns the index of the first rule of the current task
	// that n fails, or -1 when it passes them all: Check(n) is
	// FailedRule(n) < 0.
	FailedRule(n *NodeInfo) int
	// ExplainRule says why nodes (at least 1) failed rule.
	ExplainRule(rule, nodes int) string
}

// DefaultFilters returns the filters Schedule uses. A node is counted
// against the first filter it fails, so the order is also the order of the
// reasons in an explanation. The order is cheapest first:
//
//   - node state and availability: one field each, and they rule a node out
//     for every task;
//   - memory, then CPU: an integer comparison each, and what a busy
//     cluster runs out of (memory first, the one services reserve most);
//   - max replicas per node: one map lookup;
//   - host ports: one map lookup per host-mode port of the task;
//   - constraints last: a label lookup and string comparison per
//     constraint.
//
// This puts resources before constraints in a reason, as in SwarmKit:
// "no suitable node (insufficient memory on 2 nodes; constraint
// node.labels.zone==b not met on 3 nodes)".
func DefaultFilters() []Filter {
	return []Filter{
		&ReadyFilter{},
		&DrainFilter{},
		&PauseFilter{},
		&ResourceFilter{Resource: Memory},
		&ResourceFilter{Resource: CPU},
		&MaxReplicasFilter{},
		&HostPortFilter{},
		&ConstraintFilter{},
	}
}

// plural formats "1 node <what>" / "N nodes <what>".
func plural(n int, what string) string { return nodeCount(n) + " " + what }

// nodeCount formats "1 node" / "N nodes".
func nodeCount(n int) string {
	if n == 1 {
		return "1 node"
	}
	return fmt.Sprintf("%d nodes", n)
}

// ReadyFilter keeps nodes whose agent is connected (status READY).
type ReadyFilter struct{}

// SetTask implements Filter: readiness applies to every task.
func (f *ReadyFilter) SetTask(*shoalpb.Task) bool { return true }

// Check implements Filter.
func (f *ReadyFilter) Check(n *NodeInfo) bool {
	return n.Node.GetStatus().GetState() == shoalpb.NodeState_NODE_STATE_READY
}

// Explain implements Filter.
func (f *ReadyFilter) Explain(nodes int) string { return plural(nodes, "not ready") }

// DrainFilter drops drained nodes: their tasks move elsewhere and they take
// no new ones.
type DrainFilter struct{}

// SetTask implements Filter: availability applies to every task but
// network attachments, whose namespace already lives on their node (like
// a standalone container that draining leaves alone).
func (f *DrainFilter) SetTask(t *shoalpb.Task) bool { return t.GetAttachment() == nil }

// Check implements Filter.
func (f *DrainFilter) Check(n *NodeInfo) bool {
	return n.Node.GetSpec().GetAvailability() != shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN
}

// Explain implements Filter.
func (f *DrainFilter) Explain(nodes int) string { return plural(nodes, "drained") }

// PauseFilter drops paused nodes: they keep their tasks but take no new ones.
// An unspecified availability counts as active (the proto3 zero value of a
// node nobody has configured).
type PauseFilter struct{}

// SetTask implements Filter: availability applies to every task but
// network attachments (see DrainFilter).
func (f *PauseFilter) SetTask(t *shoalpb.Task) bool { return t.GetAttachment() == nil }

// Check implements Filter.
func (f *PauseFilter) Check(n *NodeInfo) bool {
	return n.Node.GetSpec().GetAvailability() != shoalpb.NodeAvailability_NODE_AVAILABILITY_PAUSE
}

// Explain implements Filter.
func (f *PauseFilter) Explain(nodes int) string { return plural(nodes, "paused") }

// MaxReplicasFilter keeps nodes that run fewer tasks of the service than
// its Placement.max_replicas, counting the tasks placed so far.
type MaxReplicasFilter struct {
	serviceID string
	max       uint64
}

// SetTask implements Filter: it applies to services with a cap.
func (f *MaxReplicasFilter) SetTask(t *shoalpb.Task) bool {
	f.serviceID = t.GetServiceId()
	f.max = t.GetSpec().GetPlacement().GetMaxReplicas()
	return f.max > 0
}

// Check implements Filter.
func (f *MaxReplicasFilter) Check(n *NodeInfo) bool {
	return uint64(n.ServiceTasks(f.serviceID)) < f.max
}

// Explain implements Filter.
func (f *MaxReplicasFilter) Explain(nodes int) string {
	return fmt.Sprintf("max replicas per node (%d) reached on %s", f.max, nodeCount(nodes))
}
