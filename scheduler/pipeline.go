package scheduler

import (
	"strings"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Pipeline runs a task through a list of filters. It is not safe for
// concurrent use: filters hold the current task.
type Pipeline struct {
	filters []Filter
	active  []Filter // the filters that apply to the current task
	failed  []int    // failed[i]: nodes that first failed active[i]
}

// NewPipeline returns a pipeline over filters, checked in the given order.
func NewPipeline(filters []Filter) *Pipeline {
	return &Pipeline{filters: filters}
}

// SetTask selects the filters that apply to t and resets the failure counts.
func (p *Pipeline) SetTask(t *shoalpb.Task) {
	p.active = p.active[:0]
	for _, f := range p.filters {
		if f.SetTask(t) {
			p.active = append(p.active, f)
		}
	}
	p.failed = make([]int, len(p.active))
}

// Process reports whether n passes every filter that applies to the current
// task. A failing node is counted against the first filter it fails, for
// Explain.
func (p *Pipeline) Process(n *NodeInfo) bool {
	for i, f := range p.active {
		if !f.Check(n) {
			p.failed[i]++
			return false
		}
	}
	return true
}

// Recheck is Process without counting: used on a node already known to have
// passed, after placements may have changed it.
func (p *Pipeline) Recheck(n *NodeInfo) bool {
	for _, f := range p.active {
		if !f.Check(n) {
			return false
		}
	}
	return true
}

// Explain says why no node passed, from the failures Process counted since
// the last SetTask, e.g. "no suitable node (1 node not ready; 1 node drained)".
func (p *Pipeline) Explain(totalNodes int) string {
	if totalNodes == 0 {
		return "no suitable node (no nodes in the cluster)"
	}
	var reasons []string
	for i, f := range p.active {
		if p.failed[i] > 0 {
			reasons = append(reasons, f.Explain(p.failed[i]))
		}
	}
	if len(reasons) == 0 {
		// Every node passed the filters at first but was used up by
		// earlier placements of the same batch.
		return "no suitable node (all nodes full)"
	}
	return "no suitable node (" + strings.Join(reasons, "; ") + ")"
}
