package scheduler

import (
	"strings"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Pipeline runs a task through a list of filters. It is not safe for
// concurrent use: filters hold the current task.
type Pipeline struct {
	filters []Filter
	active  []Filter     // the filters that apply to the current task
	rules   []RuleFilter // rules[i] is active[i] when it is a RuleFilter, else nil
	// failed[i][r] counts the nodes that first failed rule r of active[i];
	// r is 0 for a filter that is not a RuleFilter.
	failed [][]int
}

// NewPipeline returns a pipeline over filters, checked in the given order.
func NewPipeline(filters []Filter) *Pipeline {
	return &Pipeline{filters: filters}
}

// SetTask selects the filters that apply to t and resets the failure counts.
func (p *Pipeline) SetTask(t *shoalpb.Task) {
	p.active, p.rules = p.active[:0], p.rules[:0]
	for _, f := range p.filters {
		if f.SetTask(t) {
			rf, _ := f.(RuleFilter)
			p.active = append(p.active, f)
			p.rules = append(p.rules, rf)
		}
	}
	// Reuse the counts' memory: SetTask runs once per group of tasks.
	for len(p.failed) < len(p.active) {
		p.failed = append(p.failed, nil)
	}
	p.failed = p.failed[:len(p.active)]
	for i := range p.failed {
		p.failed[i] = p.failed[i][:0]
	}
}

// Process reports whether n passes every filter that applies to the current
// task. A failing node is counted against the first filter (and rule) it
// fails, for Explain. Schedule processes every node once per group of
// tasks, then again each time a node that passed is about to be used (a
// placement may have used it up); a node is dropped the first time it
// fails, so it is counted once.
func (p *Pipeline) Process(n *NodeInfo) bool {
	for i, f := range p.active {
		if rf := p.rules[i]; rf != nil {
			if r := rf.FailedRule(n); r >= 0 {
				p.count(i, r)
				return false
			}
			continue
		}
		if !f.Check(n) {
			p.count(i, 0)
			return false
		}
	}
	return true
}

func (p *Pipeline) count(filter, rule int) {
	for len(p.failed[filter]) <= rule {
		p.failed[filter] = append(p.failed[filter], 0)
	}
	p.failed[filter][rule]++
}

// Explain says why no node passed, from the failures Process counted since
// the last SetTask, in filter order then rule order, e.g. "no suitable node
// (1 node not ready; 1 node drained)".
func (p *Pipeline) Explain(totalNodes int) string {
	if totalNodes == 0 {
		return "no suitable node (no nodes in the cluster)"
	}
	var reasons []string
	for i, counts := range p.failed {
		for r, n := range counts {
			switch {
			case n == 0:
			case p.rules[i] != nil:
				reasons = append(reasons, p.rules[i].ExplainRule(r, n))
			default:
				reasons = append(reasons, p.active[i].Explain(n))
			}
		}
	}
	if len(reasons) == 0 {
		// Every node passed the filters but none was left to take the
		// task: only a filter whose Check changes its mind without a
		// placement gets here.
		return "no suitable node (all nodes full)"
	}
	return "no suitable node (" + strings.Join(reasons, "; ") + ")"
}
