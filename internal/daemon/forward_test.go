package daemon

import (
	"testing"

	"github.com/shoal-project/shoal/internal/ca"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
)

// methods lists the full names of a service's methods and streams.
func methods(desc grpc.ServiceDesc) []string {
	var out []string
	for _, m := range desc.Methods {
		out = append(out, "/"+desc.ServiceName+"/"+m.MethodName)
	}
	for _, s := range desc.Streams {
		out = append(out, "/"+desc.ServiceName+"/"+s.StreamName)
	}
	return out
}

// Every forwarded method must resolve to its message types, or a follower
// would fail the call instead of handing it to the leader.
func TestForwardedMethodsResolve(t *testing.T) {
	for _, desc := range []grpc.ServiceDesc{shoalpb.Control_ServiceDesc, shoalpb.Dispatcher_ServiceDesc} {
		if !forwardedServices[desc.ServiceName] {
			t.Errorf("%s is not forwarded to the leader", desc.ServiceName)
		}
		for _, m := range methods(desc) {
			md, err := methodDescriptor(m)
			if err != nil {
				t.Errorf("%s: %v", m, err)
				continue
			}
			if _, err := newMessage(md.Input()); err != nil {
				t.Errorf("%s input: %v", m, err)
			}
			if _, err := newMessage(md.Output()); err != nil {
				t.Errorf("%s output: %v", m, err)
			}
		}
	}
}

// The network listener denies methods missing from its policy: every
// method it serves must be listed, with the roles DESIGN.md gives it.
func TestClusterPolicyCoversEveryMethod(t *testing.T) {
	policy := clusterPolicy()
	tests := []struct {
		desc  grpc.ServiceDesc
		roles []ca.Role
	}{
		{shoalpb.Control_ServiceDesc, []ca.Role{ca.RoleManager, ca.RoleWorker}}, // workers need an operator token too
		{shoalpb.Dispatcher_ServiceDesc, []ca.Role{ca.RoleWorker, ca.RoleManager}},
		{shoalpb.NodeCA_ServiceDesc, []ca.Role{ca.RoleWorker, ca.RoleManager}},
		{shoalpb.Raft_ServiceDesc, []ca.Role{ca.RoleManager}},
		{shoalpb.RaftMembership_ServiceDesc, []ca.Role{ca.RoleManager}},
	}
	for _, tc := range tests {
		t.Run(tc.desc.ServiceName, func(t *testing.T) {
			for _, m := range methods(tc.desc) {
				got, ok := policy[m]
				if !ok {
					t.Errorf("%s is not in the policy: it would be refused to everyone", m)
					continue
				}
				if len(got) != len(tc.roles) {
					t.Errorf("%s allows %v, want %v", m, got, tc.roles)
					continue
				}
				for i := range got {
					if got[i] != tc.roles[i] {
						t.Errorf("%s allows %v, want %v", m, got, tc.roles)
					}
				}
			}
		})
	}
	if _, ok := policy["/"+shoalpb.Local_ServiceDesc.ServiceName+"/InitCluster"]; ok {
		t.Error("the local API must never be served on the network")
	}
}

func TestIsRead(t *testing.T) {
	tests := []struct {
		method string
		read   bool
	}{
		{"/shoal.v1.Control/GetService", true},
		{"/shoal.v1.Control/ListTasks", true},
		{"/shoal.v1.Control/GetJoinToken", false}, // may rotate: a write
		{"/shoal.v1.Control/CreateService", false},
		{"/shoal.v1.Control/UpdateNode", false},
	}
	for _, tc := range tests {
		if got := isRead(tc.method); got != tc.read {
			t.Errorf("isRead(%s) = %v, want %v", tc.method, got, tc.read)
		}
	}
}
