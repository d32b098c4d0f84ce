package dispatcher

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Assignments streams the full set of tasks assigned to the node: once at
// start, then again AssignmentsBatchDelay after any of them changes, is
// added or is deleted. A change of a task's status alone (the agent's own
// report coming back) is not resent. The stream ends with the session.
func (d *Dispatcher) Assignments(req *shoalpb.AssignmentsRequest, stream grpc.ServerStreamingServer[shoalpb.AssignmentsMessage]) error {
	s, err := d.lookup(req.GetNodeId(), req.GetSessionId())
	if err != nil {
		return err
	}
	ctx := stream.Context()
	nodeID := s.nodeID

	// send pushes the current set when it differs from the last one sent
	// (always the first time).
	var sent map[string]*shoalpb.Task
	var sentNets *shoalpb.AssignmentsMessage
	send := func() error {
		msg := d.assignments(nodeID)
		tasks := msg.GetTasks()
		nets := &shoalpb.AssignmentsMessage{Networks: msg.GetNetworks(), Services: msg.GetServices()}
		if sent != nil && sameAssignments(sent, tasks) && proto.Equal(sentNets, nets) {
			return nil
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
		sentNets = nets
		sent = make(map[string]*shoalpb.Task, len(tasks))
		for _, t := range tasks {
			sent[t.GetId()] = t
		}
		return nil
	}

	// flush fires AssignmentsBatchDelay after the first change of a burst;
	// stopped while nothing is pending (Go 1.23+ timers: no stale tick).
	flush := time.NewTimer(AssignmentsBatchDelay)
	flush.Stop()
	defer flush.Stop()

	for {
		// The watch lives until it closes (this stream fell behind);
		// then a fresh watch and a full send resync.
		wctx, cancel := context.WithCancel(ctx)
		events := d.store.Watch(wctx)
		armed := false
		err := send()
		for err == nil {
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-s.ctx.Done():
				err = sessionEnded(s)
			case <-flush.C:
				armed = false
				err = send()
			case ev, ok := <-events:
				if !ok {
					err = errResync
					continue
				}
				if !armed && d.concerns(ev, nodeID, sent, sentNets) {
					flush.Reset(AssignmentsBatchDelay)
					armed = true
				}
			}
		}
		cancel()
		if !errors.Is(err, errResync) {
			if ctx.Err() != nil {
				return nil // the agent went away
			}
			return err
		}
	}
}

// errResync ends one watch of Assignments' loop; never returned.
var errResync = errors.New("watch closed: resync")

// concerns reports whether a store event may change what the node is
// sent: one of its tasks, or a network or service its tasks' networks
// involve.
func (d *Dispatcher) concerns(ev store.Event, nodeID string, sent map[string]*shoalpb.Task, last *shoalpb.AssignmentsMessage) bool {
	switch o := ev.Object.(type) {
	case *shoalpb.Task:
		return o.GetNodeId() == nodeID || sent[o.GetId()] != nil
	case *shoalpb.Network, *shoalpb.Service:
		return len(last.GetNetworks()) > 0
	}
	return false
}

// assignments returns what the node must know: the tasks placed on it (by
// id, until they are deleted), the networks they attach to, and the
// services on those networks with their virtual IPs.
func (d *Dispatcher) assignments(nodeID string) *shoalpb.AssignmentsMessage {
	msg := &shoalpb.AssignmentsMessage{}
	d.store.View(func(tx store.ReadTx) {
		nets := make(map[string]bool)
		for _, t := range tx.TasksByNode(nodeID) {
			// Global tasks name their node before they are assigned:
			// the agent sees them once placement agrees.
			if t.GetStatus().GetState() >= shoalpb.TaskState_TASK_STATE_ASSIGNED &&
				t.GetDesiredState() <= shoalpb.TaskState_TASK_STATE_REMOVE {
				msg.Tasks = append(msg.Tasks, t)
				for _, a := range t.GetNetworks() {
					nets[a.GetNetworkId()] = true
				}
			}
		}
		if len(nets) == 0 {
			return
		}
		for _, n := range tx.ListNetworks() { // by id
			if nets[n.GetId()] {
				msg.Networks = append(msg.Networks, n)
			}
		}
		for _, s := range tx.ListServices() { // by id
			var vips []*shoalpb.VirtualIP
			on := false
			for _, a := range s.GetSpec().GetNetworks() {
				on = on || nets[a.GetTarget()]
			}
			if !on {
				continue
			}
			for _, v := range s.GetEndpoint().GetVirtualIps() {
				if nets[v.GetNetworkId()] {
					vips = append(vips, v)
				}
			}
			msg.Services = append(msg.Services, &shoalpb.Service{
				Id:       s.GetId(),
				Spec:     &shoalpb.ServiceSpec{Name: s.GetSpec().GetName(), Networks: s.GetSpec().GetNetworks(), Endpoint: &shoalpb.EndpointSpec{Mode: s.GetSpec().GetEndpoint().GetMode()}},
				Endpoint: &shoalpb.ServiceEndpoint{VirtualIps: vips},
			})
		}
	})
	sort.Slice(msg.Tasks, func(i, j int) bool { return msg.Tasks[i].GetId() < msg.Tasks[j].GetId() })
	return msg
}

// sameAssignments reports whether tasks holds the same tasks as sent with
// the same content apart from status and meta.
func sameAssignments(sent map[string]*shoalpb.Task, tasks []*shoalpb.Task) bool {
	if len(sent) != len(tasks) {
		return false
	}
	for _, t := range tasks {
		old := sent[t.GetId()]
		if old == nil || !sameButStatus(old, t) {
			return false
		}
	}
	return true
}

// sameButStatus compares two versions of a task ignoring Status and Meta.
func sameButStatus(a, b *shoalpb.Task) bool {
	if a.GetMeta().GetVersion() == b.GetMeta().GetVersion() {
		return true
	}
	a, b = proto.Clone(a).(*shoalpb.Task), proto.Clone(b).(*shoalpb.Task)
	a.Meta, a.Status, b.Meta, b.Status = nil, nil, nil, nil
	return proto.Equal(a, b)
}
