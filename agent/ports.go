package agent

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/shoal-project/shoal/overlay/bridge"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// portTable is the host's table of published ports: Apply replaces its
// whole content with the set given. *bridge.PortTable implements it; tests
// pass a fake.
type portTable interface {
	Apply(ctx context.Context, mappings []bridge.PortMapping) error
}

// portPublisher keeps the host-mode ports of this host's tasks published.
// It holds the desired mappings of every task and writes the full set to
// the port table whenever that set changes, so the table never holds a
// mapping of a task it no longer knows. A failed write leaves the publisher
// unsynced: the next call writes the full set again, whether or not its own
// task changed anything. A new publisher (a restarted daemon) starts
// unsynced, so its first write also clears what an earlier process left.
type portPublisher struct {
	table portTable
	log   *slog.Logger

	// mu guards following. It is held across the write, so that writes
	// reach the kernel in the order of the changes.
	mu     sync.Mutex
	byTask map[string][]bridge.PortMapping
	synced bool // the table holds exactly the mappings of byTask
}

func newPortPublisher(table portTable, log *slog.Logger) *portPublisher {
	return &portPublisher{table: table, log: log, byTask: make(map[string][]bridge.PortMapping)}
}

// publish makes ms the mappings of task id. A task with no mappings that
// had none before writes nothing, even when unsynced: adopting a task
// without ports must not wipe the ports of tasks not yet adopted. A host
// port another task publishes is refused, and nothing changes: the
// scheduler keeps such tasks apart, and one bad task must not stop the
// table from being written for all the others.
func (p *portPublisher) publish(ctx context.Context, id string, ms []bridge.PortMapping) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for other, oms := range p.byTask {
		if other == id {
			continue
		}
		for _, m := range ms {
			if i := slices.IndexFunc(oms, func(o bridge.PortMapping) bool {
				return o.Protocol == m.Protocol && o.HostPort == m.HostPort
			}); i >= 0 {
				return fmt.Errorf("host port %d/%s is already published by task %s", m.HostPort, m.Protocol, other)
			}
		}
	}
	old, had := p.byTask[id]
	if !had && len(ms) == 0 {
		return nil
	}
	if len(ms) == 0 {
		delete(p.byTask, id)
	} else {
		p.byTask[id] = slices.Clone(ms)
	}
	if p.synced && slices.Equal(old, ms) {
		return nil
	}
	return p.writeLocked(ctx)
}

// unpublish removes the mappings of task id. It writes when the task had
// mappings or the table is not known to be in sync.
func (p *portPublisher) unpublish(ctx context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, had := p.byTask[id]
	delete(p.byTask, id)
	if p.synced && !had {
		return nil
	}
	return p.writeLocked(ctx)
}

// writeLocked writes the full desired set.
func (p *portPublisher) writeLocked(ctx context.Context) error {
	var all []bridge.PortMapping
	for _, id := range slices.Sorted(maps.Keys(p.byTask)) {
		all = append(all, p.byTask[id]...)
	}
	if err := p.table.Apply(ctx, all); err != nil {
		p.synced = false
		return err
	}
	p.synced = true
	return nil
}

// hostMappings returns the mappings that publish t's host-mode ports on
// addr, its container's address, and the ports it leaves out: those in
// ingress mode (the routing mesh is not implemented yet; the CLI refuses
// them) and those without a published port (Shoal does not choose one).
func hostMappings(t *shoalpb.Task, addr netip.Addr) (ms []bridge.PortMapping, skipped []*shoalpb.PortConfig) {
	for _, pc := range t.GetSpec().GetEndpoint().GetPorts() {
		if pc.GetPublishMode() != shoalpb.PortConfig_PUBLISH_MODE_HOST ||
			pc.GetPublishedPort() == 0 || pc.GetPublishedPort() > 65535 ||
			pc.GetTargetPort() == 0 || pc.GetTargetPort() > 65535 {
			skipped = append(skipped, pc)
			continue
		}
		proto := bridge.TCP
		if pc.GetProtocol() == shoalpb.PortConfig_PROTOCOL_UDP {
			proto = bridge.UDP
		}
		ms = append(ms, bridge.PortMapping{
			Protocol: proto,
			HostPort: uint16(pc.GetPublishedPort()),
			Target:   netip.AddrPortFrom(addr, uint16(pc.GetTargetPort())),
		})
	}
	return ms, skipped
}

// portString writes a port as the CLI takes it: "8080:80/tcp (host)".
func portString(pc *shoalpb.PortConfig) string {
	proto, mode := "tcp", "ingress"
	if pc.GetProtocol() == shoalpb.PortConfig_PROTOCOL_UDP {
		proto = "udp"
	}
	if pc.GetPublishMode() == shoalpb.PortConfig_PUBLISH_MODE_HOST {
		mode = "host"
	}
	return fmt.Sprintf("%d:%d/%s (%s)", pc.GetPublishedPort(), pc.GetTargetPort(), proto, mode)
}
