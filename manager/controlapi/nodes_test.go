package controlapi

import (
	"context"
	"testing"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
)

func seedNodes(t *testing.T, s *store.Store) {
	t.Helper()
	seed(t, s, func(b *store.Batch) {
		for _, n := range []*shoalpb.Node{
			{Id: "nmanager", Role: shoalpb.NodeRole_NODE_ROLE_MANAGER, Description: &shoalpb.NodeDescription{Hostname: "m1"},
				Status: &shoalpb.NodeStatus{State: shoalpb.NodeState_NODE_STATE_READY}},
			{Id: "nworkerup", Role: shoalpb.NodeRole_NODE_ROLE_WORKER, Description: &shoalpb.NodeDescription{Hostname: "w1"},
				Spec:   &shoalpb.NodeSpec{Availability: shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
				Status: &shoalpb.NodeStatus{State: shoalpb.NodeState_NODE_STATE_READY}},
			{Id: "nworkerdown", Role: shoalpb.NodeRole_NODE_ROLE_WORKER, Description: &shoalpb.NodeDescription{Hostname: "w2"},
				Status: &shoalpb.NodeStatus{State: shoalpb.NodeState_NODE_STATE_DOWN}},
		} {
			b.CreateNode(n)
		}
	})
}

func TestUpdateNode(t *testing.T) {
	drain := shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN
	tests := []struct {
		name     string
		spec     *shoalpb.NodeSpec
		stale    bool
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "drain and label", spec: &shoalpb.NodeSpec{Availability: drain, Labels: map[string]string{"zone": "a"}}, wantCode: codes.OK},
		{name: "stale version", spec: &shoalpb.NodeSpec{Availability: drain}, stale: true, wantCode: codes.FailedPrecondition, wantMsg: "read it again"},
		{name: "bad label key", spec: &shoalpb.NodeSpec{Labels: map[string]string{"a b": "x"}}, wantCode: codes.InvalidArgument, wantMsg: "label key"},
		{name: "role change refused", spec: &shoalpb.NodeSpec{DesiredRole: shoalpb.NodeRole_NODE_ROLE_MANAGER}, wantCode: codes.InvalidArgument, wantMsg: "promote"},
		{name: "no spec", wantCode: codes.InvalidArgument, wantMsg: "spec"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, s := newServer(t)
			seedNodes(t, s)
			var version uint64
			s.View(func(tx store.ReadTx) { version = tx.GetNode("nworkerup").GetMeta().GetVersion() })
			if tc.stale {
				version--
			}
			resp, err := srv.UpdateNode(context.Background(), &shoalpb.UpdateNodeRequest{Node: "w1", Version: version, Spec: tc.spec})
			if tc.wantCode != codes.OK {
				wantCode(t, err, tc.wantCode, tc.wantMsg)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			n := resp.GetNode()
			if n.GetSpec().GetAvailability() != drain || n.GetSpec().GetLabels()["zone"] != "a" {
				t.Errorf("node after update: %v", n.GetSpec())
			}
			if n.GetRole() != shoalpb.NodeRole_NODE_ROLE_WORKER {
				t.Errorf("role changed to %v", n.GetRole())
			}
		})
	}
}

func TestRemoveNode(t *testing.T) {
	tests := []struct {
		name     string
		node     string
		force    bool
		wantCode codes.Code
		wantMsg  string
	}{
		{"down worker", "w2", false, codes.OK, ""},
		{"ready worker refused", "w1", false, codes.FailedPrecondition, "--force"},
		{"ready worker forced", "w1", true, codes.OK, ""},
		{"manager refused even forced", "m1", true, codes.FailedPrecondition, "demote"},
		{"unknown", "nosuch", false, codes.NotFound, "nosuch"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, s := newServer(t)
			seedNodes(t, s)
			_, err := srv.RemoveNode(context.Background(), &shoalpb.RemoveNodeRequest{Node: tc.node, Force: tc.force})
			if tc.wantCode != codes.OK {
				wantCode(t, err, tc.wantCode, tc.wantMsg)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s.View(func(tx store.ReadTx) {
				for _, n := range tx.ListNodes() {
					if n.GetDescription().GetHostname() == tc.node {
						t.Errorf("node %s still in the store", tc.node)
					}
				}
			})
		})
	}
}
