package allocator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// onNetworks returns a NEW task of a service attached to the networks.
func onNetworks(id string, networks ...string) *shoalpb.Task {
	t := newTask(id, shoalpb.TaskState_TASK_STATE_RUNNING)
	t.Spec = &shoalpb.ServiceSpec{}
	for _, n := range networks {
		t.Spec.Networks = append(t.Spec.Networks, &shoalpb.NetworkAttachmentConfig{Target: n})
	}
	return t
}

func TestAllocatorAddressesOnNetworks(t *testing.T) {
	s := newStore(t)
	err := s.Update(context.Background(), func(_ store.ReadTx, b *store.Batch) error {
		b.CreateNetwork(&shoalpb.Network{Id: "front", Subnet: "10.10.0.0/29", Gateway: "10.10.0.1", Vni: 4096})
		b.CreateNetwork(&shoalpb.Network{Id: "back", Subnet: "10.10.1.0/24", Gateway: "10.10.1.1", Vni: 4097})
		// A service's VIP is taken.
		b.CreateService(&shoalpb.Service{Id: "svc", Endpoint: &shoalpb.ServiceEndpoint{
			VirtualIps: []*shoalpb.VirtualIP{{NetworkId: "front", Addr: "10.10.0.2/29"}},
		}})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	start(t, s)
	createTasks(t, s, onNetworks("a", "front", "back"), onNetworks("b", "front"))

	a := waitState(t, s, "a", shoalpb.TaskState_TASK_STATE_PENDING)
	b := waitState(t, s, "b", shoalpb.TaskState_TASK_STATE_PENDING)
	got := func(t *shoalpb.Task) string {
		var parts []string
		for _, n := range t.GetNetworks() {
			parts = append(parts, n.GetNetworkId()+"="+strings.Join(n.GetAddresses(), ",")+"@"+n.GetMac())
		}
		return strings.Join(parts, " ")
	}
	if g := got(a); g != "front=10.10.0.3/29@02:42:0a:0a:00:03 back=10.10.1.2/24@02:42:0a:0a:01:02" {
		t.Errorf("task a attachments: %s", g)
	}
	if g := got(b); g != "front=10.10.0.4/29@02:42:0a:0a:00:04" {
		t.Errorf("task b attachments: %s", g)
	}

	// front has .5 and .6 left: the third of three new tasks waits, saying why.
	createTasks(t, s, onNetworks("c", "front"), onNetworks("d", "front"), onNetworks("e", "front"))
	deadline := time.Now().Add(waitTimeout)
	for {
		var pending, waiting int
		var msg string
		s.View(func(tx store.ReadTx) {
			for _, id := range []string{"c", "d", "e"} {
				task := tx.GetTask(id)
				switch {
				case task.GetStatus().GetState() == shoalpb.TaskState_TASK_STATE_PENDING:
					pending++
				case strings.HasPrefix(task.GetStatus().GetMessage(), "waiting: no address for network front"):
					waiting++
					msg = task.GetStatus().GetMessage()
				}
			}
		})
		if pending == 2 && waiting == 1 {
			t.Logf("waiting task says %q", msg)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pending and %d waiting, want 2 and 1", pending, waiting)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
