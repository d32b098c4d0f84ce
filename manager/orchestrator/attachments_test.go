package orchestrator

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// attachments returns the attachment tasks by id.
func (h *harness) attachments() map[string]*shoalpb.Task {
	out := make(map[string]*shoalpb.Task)
	h.s.View(func(tx store.ReadTx) {
		for _, t := range tx.Attachments() {
			out[t.GetId()] = t
		}
	})
	return out
}

func (h *harness) waitAttachments(cond func(map[string]*shoalpb.Task) error) map[string]*shoalpb.Task {
	h.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		got := h.attachments()
		err := cond(got)
		if err == nil {
			return got
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) setDesired(id string, state shoalpb.TaskState) {
	h.t.Helper()
	h.update(func(tx store.ReadTx, b *store.Batch) error {
		t := proto.Clone(tx.GetTask(id)).(*shoalpb.Task)
		t.DesiredState = state
		b.UpdateTask(t)
		return nil
	})
}

// Attachments (shoal network connect) belong to no service: the
// orchestrator must neither remove them as tasks of a removed service nor
// replace them, only reap them once disconnected and orphan them with
// their node.
func TestAttachmentsLiveUntilDisconnected(t *testing.T) {
	h := newHarness(t)
	h.createNode("n1", availActive)
	h.createNode("n2", availActive)
	attachment := func(id, node string) *shoalpb.Task {
		return &shoalpb.Task{
			Id: id, NodeId: node, DesiredState: stRunning,
			Spec:       &shoalpb.ServiceSpec{Name: id},
			Status:     &shoalpb.TaskStatus{State: stNew},
			Attachment: &shoalpb.Attachment{Netns: "/run/netns/" + id, Name: id},
		}
	}
	h.update(func(_ store.ReadTx, b *store.Batch) error {
		for _, a := range []*shoalpb.Task{attachment("running", "n1"), attachment("unplaced", "n1"), attachment("onn2", "n2")} {
			b.CreateTask(a)
		}
		return nil
	})
	h.start()
	h.report("running", "", stRunning)
	h.report("onn2", "", stRunning)

	// An attachment that never reached its node goes at once when
	// disconnected; the running one stays as it is.
	h.setDesired("unplaced", stRemove)
	h.waitAttachments(func(got map[string]*shoalpb.Task) error {
		if got["unplaced"] != nil {
			return fmt.Errorf("disconnected unplaced attachment not reaped")
		}
		if r := got["running"]; r.GetDesiredState() != stRunning || r.GetStatus().GetState() != stRunning {
			return fmt.Errorf("running attachment: desired %v state %v, want RUNNING RUNNING", r.GetDesiredState(), r.GetStatus().GetState())
		}
		return nil
	})

	// A running one waits for its agent to unplug it.
	h.setDesired("running", stRemove)
	h.report("running", "", stShutdown)
	h.waitAttachments(func(got map[string]*shoalpb.Task) error {
		if got["running"] != nil {
			return fmt.Errorf("attachment reported shut down after disconnect not reaped")
		}
		return nil
	})

	// Its node removed, an attachment is orphaned and not replaced.
	h.update(func(_ store.ReadTx, b *store.Batch) error {
		b.DeleteNode("n2", 0)
		return nil
	})
	h.waitAttachments(func(got map[string]*shoalpb.Task) error {
		if len(got) != 1 || got["onn2"].GetStatus().GetState() != stOrphaned {
			return fmt.Errorf("attachments %v, want only onn2, ORPHANED", got)
		}
		return nil
	})
}
