package scheduler

import (
	"strings"
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
)

func TestParseConstraint(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{in: "node.role==worker"},
		{in: "node.labels.zone != b"},
		{in: "engine.labels.disk==ssd"},
		{in: "node.hostname==web-1"},
		{in: "node.platform.arch==amd64"},
		{in: "zone=a", wantErr: "expected KEY==VALUE or KEY!=VALUE"},
		{in: "node.labels.==a", wantErr: "unknown key"},
		{in: "node.colour==red", wantErr: "unknown key"},
		{in: "node.role==boss", wantErr: "manager or worker"},
		{in: "node.id==", wantErr: "expected KEY==VALUE"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			_, err := ParseConstraint(tc.in)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func labelled(id string, role shoalpb.NodeRole, labels map[string]string) NodeInfo {
	n := ready(id)
	n.Node.Role = role
	n.Node.Description = &shoalpb.NodeDescription{Hostname: "Host-" + id, Platform: &shoalpb.Platform{Os: "linux", Architecture: "amd64"}}
	if n.Node.Spec == nil {
		n.Node.Spec = &shoalpb.NodeSpec{}
	}
	n.Node.Spec.Labels = labels
	return n
}

func constrained(id, service string, constraints ...string) *shoalpb.Task {
	t := task(id, service)
	if t.Spec == nil {
		t.Spec = &shoalpb.ServiceSpec{}
	}
	t.Spec.Placement = &shoalpb.Placement{Constraints: constraints}
	return t
}

func TestScheduleWithConstraints(t *testing.T) {
	worker, manager := shoalpb.NodeRole_NODE_ROLE_WORKER, shoalpb.NodeRole_NODE_ROLE_MANAGER
	nodes := []NodeInfo{
		labelled("m1", manager, map[string]string{"zone": "a"}),
		labelled("w1", worker, map[string]string{"zone": "a"}),
		labelled("w2", worker, map[string]string{"zone": "b"}),
		labelled("w3", worker, nil),
	}
	tests := []struct {
		name        string
		constraints []string
		wantNodes   []string // acceptable nodes; empty: unplaceable
		wantReason  string
	}{
		{"role", []string{"node.role==worker"}, []string{"w1", "w2", "w3"}, ""},
		{"role and label", []string{"node.role==worker", "node.labels.zone==a"}, []string{"w1"}, ""},
		{"not equal matches a node without the label", []string{"node.labels.zone!=a", "node.role!=manager"}, []string{"w2", "w3"}, ""},
		{"hostname is case-insensitive", []string{"node.hostname==host-w2"}, []string{"w2"}, ""},
		{"platform", []string{"node.platform.os==linux", "node.id==w3"}, []string{"w3"}, ""},
		{"impossible", []string{"node.labels.zone==c"}, nil, "no suitable node (constraint node.labels.zone==c not met on 4 nodes)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := Schedule(nodes, []*shoalpb.Task{constrained("t1", "svc", tc.constraints...)})
			if len(res) != 1 {
				t.Fatalf("%d results", len(res))
			}
			got := res[0]
			if len(tc.wantNodes) == 0 {
				if got.NodeID != "" || got.Reason != tc.wantReason {
					t.Errorf("placed on %q reason %q, want unplaced with %q", got.NodeID, got.Reason, tc.wantReason)
				}
				return
			}
			ok := false
			for _, n := range tc.wantNodes {
				ok = ok || got.NodeID == n
			}
			if !ok {
				t.Errorf("placed on %q (reason %q), want one of %v", got.NodeID, got.Reason, tc.wantNodes)
			}
		})
	}
}
