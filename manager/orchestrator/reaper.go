package orchestrator

import (
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// historyLimit returns how many finished tasks to keep per slot: the
// cluster's setting, DefaultTaskHistoryLimit when unset (0), and no limit
// when negative.
func historyLimit(c *shoalpb.Cluster) int {
	switch l := c.GetSpec().GetTaskHistoryLimit(); {
	case l == 0:
		return DefaultTaskHistoryLimit
	case l < 0:
		return -1
	default:
		return int(l)
	}
}

// historyKey groups a service's tasks the way history is kept: per slot for
// replicated services, per node for global ones (slot 0).
type historyKey struct {
	slot   uint64
	nodeID string
}

// reap deletes the tasks asked to be removed once nothing runs them (they
// finished, or no node ever took them), and the oldest finished tasks of
// each slot beyond the history limit.
func (p *pass) reap() {
	limit := historyLimit(p.tx.GetCluster())
	history := make(map[historyKey][]int)
	var keys []historyKey // first-seen order, for reproducible writes
	for i, t := range p.tasks {
		state := t.GetStatus().GetState()
		if t.GetDesiredState() == shoalpb.TaskState_TASK_STATE_REMOVE &&
			(terminal(state) || state < shoalpb.TaskState_TASK_STATE_ASSIGNED) {
			p.delete(i)
			continue
		}
		if runnable(t) || !terminal(state) {
			continue // running, or still stopping
		}
		k := historyKey{slot: t.GetSlot()}
		if k.slot == 0 {
			k.nodeID = t.GetNodeId()
		}
		if _, ok := history[k]; !ok {
			keys = append(keys, k)
		}
		history[k] = append(history[k], i)
	}
	if limit < 0 {
		return
	}
	for _, k := range keys {
		finished := history[k] // oldest first: p.tasks is
		for len(finished) > limit {
			p.delete(finished[0])
			finished = finished[1:]
		}
	}
}

// delete deletes task i, expecting the version this pass read.
func (p *pass) delete(i int) {
	t := p.tasks[i]
	p.deleted[t.GetId()] = t.GetMeta().GetVersion()
}

// write adds the pass's changes to b, at most MaxWritesPerPass of them:
// updates first, then deletes, then creates. Any prefix of that order is a
// state the next pass continues from: a replacement is only created once
// the task it replaces was told to stop, so a slot never gets a second
// runnable task from a cut pass.
func (p *pass) write(b *store.Batch) {
	budget := MaxWritesPerPass
	take := func() bool {
		if budget == 0 {
			p.more = true
			return false
		}
		budget--
		p.written++
		return true
	}
	for _, t := range p.tasks {
		id := t.GetId()
		if !p.edited[id] {
			continue
		}
		if _, gone := p.deleted[id]; gone {
			continue
		}
		if !take() {
			return
		}
		b.UpdateTask(t)
	}
	for _, t := range p.tasks {
		version, ok := p.deleted[t.GetId()]
		if !ok {
			continue
		}
		if !take() {
			return
		}
		b.DeleteTask(t.GetId(), version)
	}
	for _, t := range p.created {
		if !take() {
			return
		}
		b.CreateTask(t)
	}
}
