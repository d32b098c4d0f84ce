package orchestrator

import (
	"fmt"
	"maps"
	"sort"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/shoal-project/shoal/scheduler"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// pass is one reconciliation of one service against one read view. It
// computes every change first, then writes them in an order where any
// prefix is a valid state (see write), so MaxWritesPerPass can cut it.
type pass struct {
	tx        store.ReadTx
	now       time.Time
	serviceID string

	svc   *shoalpb.Service // nil when the service was removed
	tasks []*shoalpb.Task  // the service's tasks, oldest first; edited ones are clones
	nodes map[string]*shoalpb.Node

	edited  map[string]bool   // tasks changed in this pass
	deleted map[string]uint64 // id -> expected version
	created []*shoalpb.Task

	more    bool      // out: writes were left for another pass
	wake    time.Time // out: when a restart delay ends, zero if none
	written int       // out: writes proposed
}

// run computes the pass's changes.
func (p *pass) run() {
	p.svc = p.tx.GetService(p.serviceID)
	if p.serviceID == "" {
		p.tasks = append([]*shoalpb.Task(nil), p.tx.Attachments()...)
	} else {
		p.tasks = append([]*shoalpb.Task(nil), p.tx.TasksByService(p.serviceID)...)
	}
	sortOldestFirst(p.tasks)
	p.edited = make(map[string]bool)
	p.deleted = make(map[string]uint64)
	p.nodes = make(map[string]*shoalpb.Node)

	p.orphan()
	switch {
	case p.serviceID == "":
		// Network attachments (shoal network connect) belong to no
		// service: each lives on its node until it is disconnected, its
		// namespace goes or its node is removed, and is never replaced.
	case p.svc == nil:
		p.removeAll()
	case p.svc.GetSpec().GetGlobal() != nil:
		p.global()
	default:
		// A service without a mode is replicated with 0 replicas: the
		// control API always sets one.
		p.replicated()
	}
	p.stopUnassigned()
	p.reap()
}

// sortOldestFirst orders tasks by creation (then version and id, so the
// order is total).
func sortOldestFirst(tasks []*shoalpb.Task) {
	sort.Slice(tasks, func(i, j int) bool {
		a, b := tasks[i].GetMeta(), tasks[j].GetMeta()
		if c := a.GetCreatedAt().AsTime().Compare(b.GetCreatedAt().AsTime()); c != 0 {
			return c < 0
		}
		if a.GetVersion() != b.GetVersion() {
			return a.GetVersion() < b.GetVersion()
		}
		return tasks[i].GetId() < tasks[j].GetId()
	})
}

// node returns the node with id, or nil when it was removed.
func (p *pass) node(id string) *shoalpb.Node {
	n, ok := p.nodes[id]
	if !ok {
		n = p.tx.GetNode(id)
		p.nodes[id] = n
	}
	return n
}

// edit returns task i ready to modify (a clone, made once per pass).
func (p *pass) edit(i int) *shoalpb.Task {
	t := p.tasks[i]
	if !p.edited[t.GetId()] {
		t = proto.Clone(t).(*shoalpb.Task)
		p.tasks[i] = t
		p.edited[t.GetId()] = true
	}
	return t
}

// setStatus records a state the manager observed on the task's behalf.
func (p *pass) setStatus(i int, state shoalpb.TaskState, msg string) {
	t := p.edit(i)
	t.Status = &shoalpb.TaskStatus{
		Timestamp: timestamppb.New(p.now),
		State:     state,
		Message:   msg,
	}
}

// shutdown asks for task i to stop.
func (p *pass) shutdown(i int) {
	if p.tasks[i].GetDesiredState() < shoalpb.TaskState_TASK_STATE_SHUTDOWN {
		p.edit(i).DesiredState = shoalpb.TaskState_TASK_STATE_SHUTDOWN
	}
}

// terminal reports whether a task in state s has finished for good.
func terminal(s shoalpb.TaskState) bool {
	return s >= shoalpb.TaskState_TASK_STATE_COMPLETE && s != shoalpb.TaskState_TASK_STATE_REMOVE
}

// runnable reports whether the task is meant to run.
func runnable(t *shoalpb.Task) bool {
	return t.GetDesiredState() <= shoalpb.TaskState_TASK_STATE_RUNNING
}

// orphan marks ORPHANED the unfinished tasks whose node was removed: no
// agent will ever report on them again.
func (p *pass) orphan() {
	for i, t := range p.tasks {
		id := t.GetNodeId()
		if id == "" || terminal(t.GetStatus().GetState()) || p.node(id) != nil {
			continue
		}
		p.setStatus(i, shoalpb.TaskState_TASK_STATE_ORPHANED, fmt.Sprintf("node %s removed", id))
	}
}

// removeAll asks every task of a removed service to stop and be deleted.
// The control API usually did it when it removed the service; this covers
// tasks created concurrently.
func (p *pass) removeAll() {
	for i, t := range p.tasks {
		if t.GetDesiredState() < shoalpb.TaskState_TASK_STATE_REMOVE {
			p.edit(i).DesiredState = shoalpb.TaskState_TASK_STATE_REMOVE
		}
	}
}

// retire shuts down runnable tasks that finished (restart: they are
// replaced) or were made from an older container spec (update: replaced by
// one with the current spec, all at once until an update orchestrator
// paces it), and returns the indexes of the runnable tasks left.
func (p *pass) retire() []int {
	var live []int
	for i, t := range p.tasks {
		if !runnable(t) {
			continue
		}
		if terminal(t.GetStatus().GetState()) || specChanged(t, p.svc) || p.lost(t) {
			p.shutdown(i)
			continue
		}
		live = append(live, i)
	}
	return live
}

// lost reports whether a replicated task's node is down: its tasks are
// replaced elsewhere at once, and stopped on the node if it comes back (it
// finds them asked to shut down). A global task stays with its node.
func (p *pass) lost(t *shoalpb.Task) bool {
	if p.svc.GetSpec().GetGlobal() != nil || t.GetNodeId() == "" {
		return false
	}
	n := p.node(t.GetNodeId())
	return n != nil && n.GetStatus().GetState() == shoalpb.NodeState_NODE_STATE_DOWN
}

// draining reports whether task i runs on a drained node: it keeps running
// until its replacement runs (so a drain never leaves a slot empty), then
// stops.
func (p *pass) draining(i int) bool {
	id := p.tasks[i].GetNodeId()
	if id == "" {
		return false
	}
	return p.node(id).GetSpec().GetAvailability() == shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN
}

// specChanged reports whether the task runs something other than the
// service's current spec says (its container, labels or networks). The
// mode is ignored: scaling does not replace tasks.
func specChanged(t *shoalpb.Task, svc *shoalpb.Service) bool {
	if len(t.GetSpec().GetNetworks()) != len(svc.GetSpec().GetNetworks()) {
		return true
	}
	for i, n := range t.GetSpec().GetNetworks() {
		if !proto.Equal(n, svc.GetSpec().GetNetworks()[i]) {
			return true
		}
	}
	return !proto.Equal(t.GetSpec().GetContainer(), svc.GetSpec().GetContainer()) ||
		!maps.Equal(t.GetSpec().GetLabels(), svc.GetSpec().GetLabels())
}

// keepOne shuts down all but the most advanced of several runnable tasks
// in one slot (or on one node); ties go to the newest.
func (p *pass) keepOne(idx []int) {
	best := idx[0]
	for _, i := range idx[1:] {
		if p.tasks[i].GetStatus().GetState() >= p.tasks[best].GetStatus().GetState() {
			best = i
		}
	}
	for _, i := range idx {
		if i != best {
			p.shutdown(i)
		}
	}
}

// replicated keeps one runnable task in each slot 1..replicas and none
// above.
func (p *pass) replicated() {
	n := p.svc.GetSpec().GetReplicated().GetReplicas()
	bySlot := make(map[uint64][]int)
	for _, i := range p.retire() {
		slot := p.tasks[i].GetSlot()
		if slot < 1 || slot > n {
			p.shutdown(i) // scaled down
			continue
		}
		bySlot[slot] = append(bySlot[slot], i)
	}
	for slot := uint64(1); slot <= n; slot++ {
		var moving, staying []int
		for _, i := range bySlot[slot] {
			if p.draining(i) {
				moving = append(moving, i)
			} else {
				staying = append(staying, i)
			}
		}
		switch {
		case len(staying) == 0 && len(moving) > 0:
			// Start the replacement first; the drained task stops
			// once it runs. A restart policy does not apply: nothing
			// failed.
			p.create(slot, "")
			continue
		case len(staying) == 0:
			if p.restartAllowed(slot, "") {
				p.create(slot, "")
			}
			continue
		case len(staying) > 1:
			p.keepOne(staying)
		}
		if len(moving) > 0 && p.slotRunning(staying) {
			for _, i := range moving {
				p.shutdown(i)
			}
		}
	}
}

// slotRunning reports whether one of the tasks runs.
func (p *pass) slotRunning(idx []int) bool {
	for _, i := range idx {
		if p.tasks[i].GetStatus().GetState() == shoalpb.TaskState_TASK_STATE_RUNNING {
			return true
		}
	}
	return false
}

// restartAllowed applies the service's restart policy to a slot (or, for a
// global service, a node) without a runnable task. Only a task that ended
// by itself (COMPLETE, FAILED, REJECTED) with the current spec counts: a
// slot emptied on purpose (scaling, an update, a lost or removed node) is
// always filled again.
func (p *pass) restartAllowed(slot uint64, nodeID string) bool {
	var latest *shoalpb.Task
	for _, t := range p.tasks { // oldest first
		if inSlot(t, slot, nodeID) {
			latest = t
		}
	}
	if latest == nil || !endedByItself(latest) || specChanged(latest, p.svc) {
		return true
	}
	policy := p.svc.GetSpec().GetRestartPolicy()
	switch policy.GetCondition() {
	case shoalpb.RestartPolicy_CONDITION_NONE:
		return false
	case shoalpb.RestartPolicy_CONDITION_ON_FAILURE:
		if latest.GetStatus().GetState() == shoalpb.TaskState_TASK_STATE_COMPLETE {
			return false
		}
	}
	if max := policy.GetMaxAttempts(); max > 0 {
		// Every ended task after the first was a restart: max attempts
		// allow max+1 runs in the window.
		window := policy.GetWindow().AsDuration()
		var runs uint64
		for _, t := range p.tasks {
			if !inSlot(t, slot, nodeID) || !endedByItself(t) || specChanged(t, p.svc) {
				continue
			}
			if window > 0 && p.now.Sub(t.GetStatus().GetTimestamp().AsTime()) > window {
				continue
			}
			runs++
		}
		if runs > max {
			return false
		}
	}
	return true
}

// inSlot reports whether t belongs to the slot (replicated) or, for slot
// 0, to the node (global).
func inSlot(t *shoalpb.Task, slot uint64, nodeID string) bool {
	return t.GetSlot() == slot && (slot != 0 || t.GetNodeId() == nodeID)
}

// endedByItself reports whether the task's container finished without
// being asked to stop: what a restart policy judges.
func endedByItself(t *shoalpb.Task) bool {
	switch t.GetStatus().GetState() {
	case shoalpb.TaskState_TASK_STATE_COMPLETE, shoalpb.TaskState_TASK_STATE_FAILED, shoalpb.TaskState_TASK_STATE_REJECTED:
		return true
	}
	return false
}

// eligible reports whether a node takes new tasks of a global service.
func eligible(n *shoalpb.Node) bool {
	switch n.GetSpec().GetAvailability() {
	case shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN, shoalpb.NodeAvailability_NODE_AVAILABILITY_PAUSE:
		return false
	}
	return n.GetStatus().GetState() == shoalpb.NodeState_NODE_STATE_READY
}

// parseConstraints parses a service's constraints. The control API refused
// invalid ones; one that fails anyway matches no node.
func parseConstraints(texts []string) []scheduler.Constraint {
	cs := make([]scheduler.Constraint, 0, len(texts))
	for _, s := range texts {
		c, err := scheduler.ParseConstraint(s)
		if err != nil {
			c = scheduler.Constraint{Key: "node.id", Equal: true, Value: ""}
		}
		cs = append(cs, c)
	}
	return cs
}

// meets reports whether n meets every constraint.
func meets(n *shoalpb.Node, cs []scheduler.Constraint) bool {
	for _, c := range cs {
		if !c.Matches(n) {
			return false
		}
	}
	return true
}

// global keeps one runnable task on every eligible node that meets the
// service's constraints; a node that stops meeting them (its labels
// changed) loses its task. A node that is
// down or paused keeps the task it has (node loss is handled elsewhere); a
// drained node loses it.
func (p *pass) global() {
	byNode := make(map[string][]int)
	for _, i := range p.retire() {
		id := p.tasks[i].GetNodeId()
		byNode[id] = append(byNode[id], i)
	}
	constraints := parseConstraints(p.svc.GetSpec().GetPlacement().GetConstraints())
	nodes := append([]*shoalpb.Node(nil), p.tx.ListNodes()...)
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].GetId() < nodes[j].GetId() })
	for _, n := range nodes {
		idx := byNode[n.GetId()]
		delete(byNode, n.GetId())
		switch {
		case n.GetSpec().GetAvailability() == shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN || !meets(n, constraints):
			for _, i := range idx {
				p.shutdown(i)
			}
		case len(idx) > 1:
			p.keepOne(idx)
		case len(idx) == 0 && eligible(n) && p.restartAllowed(0, n.GetId()):
			p.create(0, n.GetId())
		}
	}
	// Tasks left have no node (removed: already orphaned) or none at all.
	for _, idx := range byNode {
		for _, i := range idx {
			p.shutdown(i)
		}
	}
}

// restartDelay is how long a slot waits before its finished task is
// replaced: the restart policy's delay when it sets one, else
// DefaultRestartDelay after a lone failure, backing off when failures
// repeat within RestartBackoffWindow.
func (p *pass) restartDelay(slot uint64, nodeID string) time.Duration {
	recent := 0
	for _, t := range p.tasks {
		if t.GetSlot() != slot || (slot == 0 && t.GetNodeId() != nodeID) || !terminal(t.GetStatus().GetState()) {
			continue
		}
		if p.now.Sub(t.GetStatus().GetTimestamp().AsTime()) < RestartBackoffWindow {
			recent++
		}
	}
	if d := p.svc.GetSpec().GetRestartPolicy().GetDelay(); d != nil {
		return d.AsDuration()
	}
	if recent <= 1 {
		return DefaultRestartDelay
	}
	return max(DefaultRestartDelay, RestartBackoffBase<<min(recent-2, 6))
}

// create adds a task for the slot (replicated) or node (global), unless the
// slot's restart delay has not passed yet; then the pass asks to be woken
// when it has.
func (p *pass) create(slot uint64, nodeID string) {
	if d := p.restartDelay(slot, nodeID); d > 0 {
		if last := p.lastFinished(slot, nodeID); !last.IsZero() {
			if at := last.Add(d); p.now.Before(at) {
				if p.wake.IsZero() || at.Before(p.wake) {
					p.wake = at
				}
				return
			}
		}
	}
	p.created = append(p.created, &shoalpb.Task{
		Id:             store.NewID(),
		ServiceId:      p.svc.GetId(),
		ServiceName:    p.svc.GetSpec().GetName(),
		Slot:           slot,
		NodeId:         nodeID,
		Spec:           proto.Clone(p.svc.GetSpec()).(*shoalpb.ServiceSpec),
		DesiredState:   shoalpb.TaskState_TASK_STATE_RUNNING,
		ServiceVersion: p.svc.GetMeta().GetVersion(),
		Status: &shoalpb.TaskStatus{
			Timestamp: timestamppb.New(p.now),
			State:     shoalpb.TaskState_TASK_STATE_NEW,
			Message:   "created",
		},
	})
}

// lastFinished returns when the latest finished task of the slot (or node)
// finished, or the zero time.
func (p *pass) lastFinished(slot uint64, nodeID string) time.Time {
	var last time.Time
	for _, t := range p.tasks {
		if t.GetSlot() != slot || (slot == 0 && t.GetNodeId() != nodeID) || !terminal(t.GetStatus().GetState()) {
			continue
		}
		if at := t.GetStatus().GetTimestamp().AsTime(); at.After(last) {
			last = at
		}
	}
	return last
}

// stopUnassigned marks SHUTDOWN the tasks asked to stop before any node
// took them: no agent will report on them.
func (p *pass) stopUnassigned() {
	for i, t := range p.tasks {
		if t.GetDesiredState() == shoalpb.TaskState_TASK_STATE_SHUTDOWN &&
			t.GetStatus().GetState() < shoalpb.TaskState_TASK_STATE_ASSIGNED {
			p.setStatus(i, shoalpb.TaskState_TASK_STATE_SHUTDOWN, "shut down before it was assigned")
		}
	}
}
