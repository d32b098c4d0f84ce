package scheduler

import (
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
)

func TestResourceFilter(t *testing.T) {
	runScheduleCases(t, []scheduleCase{
		{
			name:  "memory reservation skips the node that is too small",
			nodes: []NodeInfo{withResources(ready("n1"), 4*nano, 1*gib), withResources(ready("n2"), 4*nano, 4*gib)},
			tasks: replicas("web", 1, reserve(0, 2*gib)),
			want:  []string{"n2"},
		},
		{
			// n1 ranks first (fewer tasks) but its active task
			// reserves most of its memory.
			name: "reservations of active tasks count",
			nodes: []NodeInfo{
				withResources(ready("n1", specTask("a", "db", reserve(0, 3*gib))), 4*nano, 4*gib),
				withResources(ready("n2", task("b", "x"), task("c", "y")), 4*nano, 2*gib),
			},
			tasks: replicas("web", 1, reserve(0, 2*gib)),
			want:  []string{"n2"},
		},
		{
			name:  "a batch fills the nodes, then says why",
			nodes: []NodeInfo{withResources(ready("n1"), 4*nano, 2*gib), withResources(ready("n2"), 4*nano, 1*gib)},
			tasks: replicas("web", 4, reserve(0, 1*gib)),
			want:  []string{"n1", "n2", "n1", "no suitable node (insufficient memory on 2 nodes)"},
		},
		{
			// web is placed first (it comes first) and leaves room for
			// one db task only.
			name:  "reservations of another service placed in the same call count",
			nodes: []NodeInfo{withResources(ready("n1"), 4*nano, 2*gib)},
			tasks: append(replicas("web", 1, reserve(0, 1*gib)), replicas("db", 2, reserve(0, 1*gib))...),
			want:  []string{"n1", "n1", "no suitable node (insufficient memory on 1 node)"},
		},
		{
			name:  "CPU",
			nodes: []NodeInfo{withResources(ready("n1"), 2*nano, 8*gib), withResources(ready("n2"), 1*nano, 8*gib)},
			tasks: replicas("web", 2, reserve(1.5*nano, 0)),
			want:  []string{"n1", "no suitable node (insufficient CPU on 2 nodes)"},
		},
		{
			name: "memory and CPU explained apart",
			nodes: []NodeInfo{
				withResources(ready("n1"), 8*nano, 1*gib),
				withResources(ready("n2"), 1*nano, 8*gib),
				withResources(ready("n3"), 1*nano, 1*gib),
			},
			tasks: replicas("web", 1, reserve(2*nano, 2*gib)),
			want:  []string{"no suitable node (insufficient memory on 2 nodes; insufficient CPU on 1 node)"},
		},
		{
			name:  "exact fit",
			nodes: []NodeInfo{withResources(ready("n1"), 1*nano, 1*gib)},
			tasks: replicas("web", 2, reserve(0.5*nano, 0.5*gib)),
			want:  []string{"n1", "n1"},
		},
		{
			name:  "a node that describes no resources takes no reservation",
			nodes: []NodeInfo{ready("n1")},
			tasks: replicas("web", 1, reserve(0, 1)),
			want:  []string{"no suitable node (insufficient memory on 1 node)"},
		},
		{
			name:  "a task reserving nothing fits anywhere",
			nodes: []NodeInfo{ready("n1")},
			tasks: replicas("web", 1, reserve(0, 0)),
			want:  []string{"n1"},
		},
		{
			name: "an overcommitted node takes no reservation",
			nodes: []NodeInfo{
				withResources(ready("n1", specTask("a", "db", reserve(0, 3*gib))), 4*nano, 2*gib),
			},
			tasks: replicas("web", 1, reserve(0, 1)),
			want:  []string{"no suitable node (insufficient memory on 1 node)"},
		},
		{
			// The example: resources are explained before
			// constraints, each node once, against the first filter it
			// fails.
			name: "memory and constraint",
			nodes: []NodeInfo{
				withResources(withLabels(ready("b1"), map[string]string{"zone": "b"}), 4*nano, 1*gib),
				withResources(withLabels(ready("b2"), map[string]string{"zone": "b"}), 4*nano, 1*gib),
				withResources(withLabels(ready("a1"), map[string]string{"zone": "a"}), 4*nano, 8*gib),
				withResources(withLabels(ready("a2"), map[string]string{"zone": "a"}), 4*nano, 8*gib),
				withResources(ready("x1"), 4*nano, 8*gib),
			},
			tasks: replicas("web", 1, reserve(0, 2*gib), constraints("node.labels.zone==b")),
			want:  []string{"no suitable node (insufficient memory on 2 nodes; constraint node.labels.zone==b not met on 3 nodes)"},
		},
	})
}

func TestMaxReplicasFilter(t *testing.T) {
	runScheduleCases(t, []scheduleCase{
		{
			name:  "caps the service's tasks per node",
			nodes: []NodeInfo{ready("n1"), ready("n2")},
			tasks: replicas("web", 5, maxPerNode(2)),
			want:  []string{"n1", "n2", "n1", "n2", "no suitable node (max replicas per node (2) reached on 2 nodes)"},
		},
		{
			name: "existing tasks count",
			nodes: []NodeInfo{
				ready("n1", task("a", "web"), task("b", "web")),
				ready("n2", task("c", "web")),
				ready("n3", task("d", "web"), task("e", "web")),
			},
			tasks: replicas("web", 2, maxPerNode(2)),
			want:  []string{"n2", "no suitable node (max replicas per node (2) reached on 3 nodes)"},
		},
		{
			name:  "other services do not count",
			nodes: []NodeInfo{ready("n1", task("a", "db"), task("b", "db"))},
			tasks: replicas("web", 1, maxPerNode(1)),
			want:  []string{"n1"},
		},
		{
			name:  "zero means no cap",
			nodes: []NodeInfo{ready("n1")},
			tasks: replicas("web", 3, maxPerNode(0)),
			want:  []string{"n1", "n1", "n1"},
		},
	})
}

func TestHostPortFilter(t *testing.T) {
	udp := shoalpb.PortConfig_PROTOCOL_UDP
	ingress := &shoalpb.PortConfig{TargetPort: 80, PublishedPort: 8080}
	runScheduleCases(t, []scheduleCase{
		{
			// n1 ranks first (fewer tasks) but publishes the port.
			name: "a port published by an active task",
			nodes: []NodeInfo{
				ready("n1", specTask("a", "api", ports(hostTCP(8080)))),
				ready("n2", task("b", "x"), task("c", "y")),
			},
			tasks: replicas("web", 1, ports(hostTCP(8080))),
			want:  []string{"n2"},
		},
		{
			name:  "one replica per node, then says which port",
			nodes: []NodeInfo{ready("n1"), ready("n2"), ready("n3")},
			tasks: replicas("web", 4, ports(hostTCP(8080))),
			want:  []string{"n1", "n2", "n3", "no suitable node (host port 8080/tcp in use on 3 nodes)"},
		},
		{
			name: "each node counted against its first port in use",
			nodes: []NodeInfo{
				ready("n1", specTask("a", "api", ports(hostTCP(80)))),
				ready("n2", specTask("b", "api", ports(hostTCP(443), hostTCP(80)))),
				ready("n3", specTask("c", "api", ports(hostTCP(443)))),
			},
			tasks: replicas("web", 1, ports(hostTCP(80), hostTCP(443))),
			want:  []string{"no suitable node (host port 80/tcp in use on 2 nodes; host port 443/tcp in use on 1 node)"},
		},
		{
			name:  "another protocol is another port",
			nodes: []NodeInfo{ready("n1", specTask("a", "dns", ports(hostPortConfig(53, udp))))},
			tasks: replicas("web", 2, ports(hostTCP(53))),
			want:  []string{"n1", "no suitable node (host port 53/tcp in use on 1 node)"},
		},
		{
			name:  "udp",
			nodes: []NodeInfo{ready("n1", specTask("a", "dns", ports(hostPortConfig(53, udp))))},
			tasks: replicas("web", 1, ports(hostPortConfig(53, udp))),
			want:  []string{"no suitable node (host port 53/udp in use on 1 node)"},
		},
		{
			name:  "ingress ports are published by the mesh, not the task",
			nodes: []NodeInfo{ready("n1", specTask("a", "api", ports(ingress)))},
			tasks: replicas("web", 2, ports(ingress)),
			want:  []string{"n1", "n1"},
		},
		{
			name:  "a host port chosen on the node cannot conflict",
			nodes: []NodeInfo{ready("n1")},
			tasks: replicas("web", 2, ports(hostTCP(0))),
			want:  []string{"n1", "n1"},
		},
	})
}

func TestPipelineExplainsRules(t *testing.T) {
	// A node failing several filters or constraints counts once, against
	// the first.
	m1 := withLabels(ready("m1"), map[string]string{"zone": "a"})
	m1.Node.Role = shoalpb.NodeRole_NODE_ROLE_MANAGER
	nodes := []NodeInfo{
		node("down", down, active),
		m1,
		withLabels(ready("w1"), map[string]string{"zone": "b"}),
		withLabels(ready("w2"), map[string]string{"zone": "b"}),
	}
	runScheduleCases(t, []scheduleCase{
		{
			name:  "first constraint",
			nodes: nodes,
			tasks: replicas("web", 1, constraints("node.role==manager", "node.labels.zone==c")),
			want:  []string{"no suitable node (1 node not ready; constraint node.role==manager not met on 2 nodes; constraint node.labels.zone==c not met on 1 node)"},
		},
		{
			name:  "second constraint",
			nodes: nodes,
			tasks: replicas("web", 1, constraints("node.role==worker", "node.labels.zone==a")),
			want:  []string{"no suitable node (1 node not ready; constraint node.role==worker not met on 1 node; constraint node.labels.zone==a not met on 2 nodes)"},
		},
	})
}

// Explain on a RuleFilter, for a caller that does not know the rule, names
// every rule.
func TestRuleFilterExplain(t *testing.T) {
	tests := []struct {
		filter Filter
		task   *shoalpb.Task
		want   string
	}{
		{&ConstraintFilter{}, specTask("t", "web", constraints("node.role==worker")), "constraint node.role==worker not met on 1 node"},
		{&ConstraintFilter{}, specTask("t", "web", constraints("node.role==worker", "node.labels.zone==a")), "constraints node.role==worker, node.labels.zone==a not met on 1 node"},
		{&HostPortFilter{}, specTask("t", "web", ports(hostTCP(80))), "host port 80/tcp in use on 1 node"},
		{&HostPortFilter{}, specTask("t", "web", ports(hostTCP(80), hostTCP(443))), "one of host ports 80/tcp, 443/tcp in use on 1 node"},
	}
	for _, tc := range tests {
		if !tc.filter.SetTask(tc.task) {
			t.Fatalf("%T does not apply to %v", tc.filter, tc.task)
		}
		if got := tc.filter.Explain(1); got != tc.want {
			t.Errorf("%T.Explain(1) = %q, want %q", tc.filter, got, tc.want)
		}
	}
}
