package scheduler

import (
	shoalpb "github.com/shoal-project/shoal/proto"
)

// Resource is a kind of resource a task reserves on its node.
type Resource int

const (
	// Memory is ContainerSpec.resources.reservations.memory_bytes.
	Memory Resource = iota
	// CPU is ContainerSpec.resources.reservations.nano_cpus.
	CPU
)

// String returns the name used in explanations.
func (r Resource) String() string {
	if r == CPU {
		return "CPU"
	}
	return "memory"
}

// ResourceFilter keeps nodes with enough of one resource left for the
// task's reservation: the node's described resources minus the
// reservations of its active tasks and of the tasks placed so far. A node
// that describes no resources has none to reserve. DefaultFilters holds
// one for memory and one for CPU, so the reason says which ran out.
type ResourceFilter struct {
	Resource Resource
	want     int64
}

// SetTask implements Filter: it applies to tasks reserving the resource.
func (f *ResourceFilter) SetTask(t *shoalpb.Task) bool {
	cpu, mem := reservations(t)
	f.want = mem
	if f.Resource == CPU {
		f.want = cpu
	}
	return f.want > 0
}

// Check implements Filter.
func (f *ResourceFilter) Check(n *NodeInfo) bool {
	cpu, mem := n.Available()
	if f.Resource == CPU {
		return cpu >= f.want
	}
	return mem >= f.want
}

// Explain implements Filter: "insufficient memory on 2 nodes".
func (f *ResourceFilter) Explain(nodes int) string {
	return "insufficient " + f.Resource.String() + " on " + nodeCount(nodes)
}
