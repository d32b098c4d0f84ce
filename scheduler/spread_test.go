package scheduler

import (
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// zoned returns a ready node labelled zone (and rack unless "").
func zoned(id, zone, rack string, tasks ...*shoalpb.Task) NodeInfo {
	labels := map[string]string{"zone": zone}
	if rack != "" {
		labels["rack"] = rack
	}
	return withLabels(ready(id, tasks...), labels)
}

// failedOn marks recent failures of services on the node.
func failedOn(n NodeInfo, failures map[string]int) NodeInfo {
	n.RecentFailures = failures
	return n
}

func TestSpread(t *testing.T) {
	const byZone = "node.labels.zone"
	runScheduleCases(t, []scheduleCase{
		{
			// Without the preference each node would get one task.
			name:  "two zones of unequal size get 2+2",
			nodes: []NodeInfo{zoned("a1", "a", ""), zoned("a2", "a", ""), zoned("a3", "a", ""), zoned("b1", "b", "")},
			tasks: replicas("web", 4, spread(byZone)),
			want:  []string{"a1", "b1", "a2", "b1"},
		},
		{
			name:  "two zones of two nodes get one task per node",
			nodes: []NodeInfo{zoned("a1", "a", ""), zoned("a2", "a", ""), zoned("b1", "b", ""), zoned("b2", "b", "")},
			tasks: replicas("web", 4, spread(byZone)),
			want:  []string{"a1", "b1", "a2", "b2"},
		},
		{
			name: "existing tasks of the service count, others do not",
			nodes: []NodeInfo{
				zoned("a1", "a", "", task("x", "web")), zoned("a2", "a", "", task("y", "web")),
				zoned("b1", "b", "", task("z", "db"), task("w", "db")),
			},
			tasks: replicas("web", 3, spread(byZone)),
			want:  []string{"b1", "b1", "a1"},
		},
		{
			// Nodes without the label are one more group, chosen after
			// the labelled ones on a tie.
			name:  "nodes without the label",
			nodes: []NodeInfo{ready("x1"), ready("x2"), zoned("a1", "a", ""), zoned("b1", "b", "")},
			tasks: replicas("web", 5, spread(byZone)),
			want:  []string{"a1", "b1", "x1", "a1", "b1"},
		},
		{
			// zone a splits into racks r1 and r2: its second task goes
			// to r2, not to the emptier-by-id a-r1-2.
			name: "nested",
			nodes: []NodeInfo{
				zoned("a-r1-1", "a", "r1"), zoned("a-r1-2", "a", "r1"), zoned("a-r2-1", "a", "r2"),
				zoned("b-r1-1", "b", "r1"),
			},
			tasks: replicas("web", 6, spread(byZone, "node.labels.rack")),
			want:  []string{"a-r1-1", "b-r1-1", "a-r2-1", "b-r1-1", "a-r1-2", "b-r1-1"},
		},
		{
			name: "engine labels",
			nodes: func() []NodeInfo {
				nodes := []NodeInfo{ready("n1"), ready("n2"), ready("n3")}
				for i, disk := range []string{"ssd", "ssd", "hdd"} {
					nodes[i].Node.Description = &shoalpb.NodeDescription{EngineLabels: map[string]string{"disk": disk}}
				}
				return nodes
			}(),
			tasks: replicas("web", 2, spread("engine.labels.disk")),
			want:  []string{"n3", "n1"},
		},
		{
			name:  "only nodes that pass the filters are spread over",
			nodes: []NodeInfo{zoned("a1", "a", ""), zoned("b1", "b", ""), withLabels(node("c1", down, active), map[string]string{"zone": "c"})},
			tasks: replicas("web", 2, spread(byZone)),
			want:  []string{"a1", "b1"},
		},
		{
			// Zone a's one node fills up: the rest go to zone b.
			name: "a full group is left out",
			nodes: []NodeInfo{
				withResources(zoned("a1", "a", ""), 4*nano, 1*gib),
				withResources(zoned("b1", "b", ""), 4*nano, 4*gib),
				withResources(zoned("b2", "b", ""), 4*nano, 4*gib),
			},
			tasks: replicas("web", 4, spread(byZone), reserve(0, 1*gib)),
			want:  []string{"a1", "b1", "b2", "b1"},
		},
		{
			// Rack r1 of zone a fills up, then r2, then zone a is gone.
			name: "nested groups fill up",
			nodes: []NodeInfo{
				withResources(zoned("a-r1", "a", "r1"), 4*nano, 1*gib),
				withResources(zoned("a-r2", "a", "r2"), 4*nano, 1*gib),
				withResources(zoned("b-r1", "b", "r1"), 4*nano, 8*gib),
			},
			tasks: replicas("web", 5, spread(byZone, "node.labels.rack"), reserve(0, 1*gib)),
			want:  []string{"a-r1", "b-r1", "a-r2", "b-r1", "b-r1"},
		},
		{
			name:  "every group full",
			nodes: []NodeInfo{withResources(zoned("a1", "a", ""), 4*nano, 1*gib), withResources(zoned("b1", "b", ""), 4*nano, 1*gib)},
			tasks: replicas("web", 3, spread(byZone), reserve(0, 1*gib)),
			want:  []string{"a1", "b1", "no suitable node (insufficient memory on 2 nodes)"},
		},
		{
			name:  "with max replicas",
			nodes: []NodeInfo{zoned("a1", "a", ""), zoned("b1", "b", ""), zoned("b2", "b", "")},
			tasks: replicas("web", 4, spread(byZone), maxPerNode(1)),
			want:  []string{"a1", "b1", "b2", "no suitable node (max replicas per node (1) reached on 3 nodes)"},
		},
		{
			name:  "an invalid key spreads nothing",
			nodes: []NodeInfo{zoned("a1", "a", ""), zoned("a2", "a", ""), zoned("b1", "b", "")},
			tasks: replicas("web", 2, spread("zone")),
			want:  []string{"a1", "a2"},
		},
	})
}

func TestRecentFailures(t *testing.T) {
	runScheduleCases(t, []scheduleCase{
		{
			// n1 runs no task of web but web failed there: it is used
			// only once every other node is gone.
			name:  "a node where the service failed goes last",
			nodes: []NodeInfo{failedOn(ready("n1"), map[string]int{"web": 1}), ready("n2"), ready("n3")},
			tasks: replicas("web", 3),
			want:  []string{"n2", "n3", "n2"},
		},
		{
			name:  "used when nothing else fits",
			nodes: []NodeInfo{failedOn(ready("n1"), map[string]int{"web": 1}), ready("n2")},
			tasks: replicas("web", 2, maxPerNode(1)),
			want:  []string{"n2", "n1"},
		},
		{
			name:  "fewest failures first",
			nodes: []NodeInfo{failedOn(ready("n1"), map[string]int{"web": 3}), failedOn(ready("n2"), map[string]int{"web": 1})},
			tasks: replicas("web", 1),
			want:  []string{"n2"},
		},
		{
			name:  "failures of another service do not count",
			nodes: []NodeInfo{failedOn(ready("n1"), map[string]int{"db": 5}), ready("n2")},
			tasks: replicas("web", 1),
			want:  []string{"n1"},
		},
		{
			// Failures rank nodes within a spread group, not the groups.
			name: "within a spread group",
			nodes: []NodeInfo{
				failedOn(zoned("a1", "a", ""), map[string]int{"web": 1}), zoned("a2", "a", ""),
				zoned("b1", "b", ""),
			},
			tasks: replicas("web", 3, spread("node.labels.zone")),
			want:  []string{"a2", "b1", "a2"},
		},
	})
}

func TestValidateSpread(t *testing.T) {
	for _, key := range []string{"node.labels.zone", "engine.labels.disk"} {
		if err := ValidateSpread(key); err != nil {
			t.Errorf("ValidateSpread(%q) = %v", key, err)
		}
	}
	for _, key := range []string{"", "zone", "node.labels.", "node.hostname"} {
		if err := ValidateSpread(key); err == nil {
			t.Errorf("ValidateSpread(%q) = nil, want an error", key)
		}
	}
}
