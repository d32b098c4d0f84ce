package controlapi

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

func TestConnectNetworkValidation(t *testing.T) {
	srv, st := newServer(t)
	seedNodes(t, st)
	createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "dbg", Attachable: true})
	createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "tools", Attachable: true})
	createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "front"})
	tests := []struct {
		name  string
		req   *shoalpb.ConnectNetworkRequest
		code  codes.Code
		parts []string
	}{
		{"no network", &shoalpb.ConnectNetworkRequest{Node: "w1", Netns: "/run/netns/a"},
			codes.InvalidArgument, []string{"networks", "at least one"}},
		{"relative netns", &shoalpb.ConnectNetworkRequest{Networks: []string{"dbg"}, Node: "w1", Netns: "netns/a"},
			codes.InvalidArgument, []string{"netns", `"netns/a"`, "absolute path"}},
		{"unclean netns", &shoalpb.ConnectNetworkRequest{Networks: []string{"dbg"}, Node: "w1", Netns: "/run/netns/../a"},
			codes.InvalidArgument, []string{"netns"}},
		{"no node", &shoalpb.ConnectNetworkRequest{Networks: []string{"dbg"}, Netns: "/run/netns/a"},
			codes.InvalidArgument, []string{"node"}},
		{"unknown node", &shoalpb.ConnectNetworkRequest{Networks: []string{"dbg"}, Node: "w9", Netns: "/run/netns/a"},
			codes.NotFound, []string{"no such node: w9"}},
		{"unknown network", &shoalpb.ConnectNetworkRequest{Networks: []string{"nope"}, Node: "w1", Netns: "/run/netns/a"},
			codes.InvalidArgument, []string{"networks[0]", "no such network: nope"}},
		{"not attachable", &shoalpb.ConnectNetworkRequest{Networks: []string{"dbg", "front"}, Node: "w1", Netns: "/run/netns/a"},
			codes.FailedPrecondition, []string{"network front is not attachable", "--attachable"}},
		{"network twice", &shoalpb.ConnectNetworkRequest{Networks: []string{"dbg", "dbg"}, Node: "w1", Netns: "/run/netns/a"},
			codes.InvalidArgument, []string{"networks[1]", "given twice"}},
		{"bad name", &shoalpb.ConnectNetworkRequest{Networks: []string{"dbg"}, Node: "w1", Netns: "/run/netns/a", Name: "-x"},
			codes.InvalidArgument, []string{"name", `"-x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := srv.ConnectNetwork(context.Background(), tt.req)
			wantCode(t, err, tt.code, tt.parts...)
		})
	}
	st.View(func(tx store.ReadTx) {
		if n := len(tx.Attachments()); n != 0 {
			t.Errorf("refused connects stored %d attachments", n)
		}
	})
}

func TestConnectNetwork(t *testing.T) {
	srv, st := newServer(t)
	seedNodes(t, st)
	dbg := createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "dbg", Attachable: true})
	tools := createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "tools", Attachable: true})
	ctx := context.Background()

	resp, err := srv.ConnectNetwork(ctx, &shoalpb.ConnectNetworkRequest{Networks: []string{"dbg", "tools"}, Node: "w1", Netns: "/run/netns/shell"})
	if err != nil {
		t.Fatalf("ConnectNetwork: %v", err)
	}
	a := resp.GetAttachment()
	want := &shoalpb.Attachment{Netns: "/run/netns/shell", Name: "shell", Interfaces: []string{"eth1", "eth2"}}
	if !proto.Equal(a.GetAttachment(), want) {
		t.Errorf("attachment = %v, want %v", a.GetAttachment(), want)
	}
	if a.GetNodeId() != "nworkerup" || a.GetServiceId() != "" || a.GetStatus().GetState() != shoalpb.TaskState_TASK_STATE_NEW ||
		a.GetDesiredState() != shoalpb.TaskState_TASK_STATE_RUNNING {
		t.Errorf("task: node %q service %q state %v desired %v; want nworkerup, none, NEW, RUNNING",
			a.GetNodeId(), a.GetServiceId(), a.GetStatus().GetState(), a.GetDesiredState())
	}
	if n := a.GetSpec().GetNetworks(); len(n) != 2 || n[0].GetTarget() != dbg.GetId() || n[1].GetTarget() != tools.GetId() {
		t.Errorf("spec networks = %v, want dbg then tools by id", n)
	}

	// A namespace outside /run/netns is named after the attachment's id.
	resp, err = srv.ConnectNetwork(ctx, &shoalpb.ConnectNetworkRequest{Networks: []string{"dbg"}, Node: "nworkerup", Netns: "/proc/42/ns/net"})
	if err != nil {
		t.Fatalf("ConnectNetwork /proc/42/ns/net: %v", err)
	}
	if got, id := resp.GetAttachment().GetAttachment().GetName(), resp.GetAttachment().GetId(); got != id[:attachmentNameLen] {
		t.Errorf("default name %q, want the short id %q", got, id[:attachmentNameLen])
	}

	// The same namespace on the same node is refused; on another node
	// it is another namespace.
	_, err = srv.ConnectNetwork(ctx, &shoalpb.ConnectNetworkRequest{Networks: []string{"tools"}, Node: "w1", Netns: "/run/netns/shell", Name: "other"})
	wantCode(t, err, codes.AlreadyExists, "/run/netns/shell", "already connected", "shell")
	_, err = srv.ConnectNetwork(ctx, &shoalpb.ConnectNetworkRequest{Networks: []string{"tools"}, Node: "w2", Netns: "/run/netns/shell"})
	wantCode(t, err, codes.AlreadyExists, `attachment name "shell" is already in use`, "--name")
	if _, err := srv.ConnectNetwork(ctx, &shoalpb.ConnectNetworkRequest{Networks: []string{"tools"}, Node: "w2", Netns: "/run/netns/shell", Name: "shell2"}); err != nil {
		t.Fatalf("same path on another node: %v", err)
	}

	// The network cannot go while attachments use it, and says which.
	_, err = srv.RemoveNetwork(ctx, &shoalpb.RemoveNetworkRequest{Network: "tools"})
	wantCode(t, err, codes.FailedPrecondition, "attachments shell, shell2", "shoal network disconnect")

	// Disconnect by name asks the node to unplug it; its name is free
	// again once it has finished.
	d, err := srv.DisconnectNetwork(ctx, &shoalpb.DisconnectNetworkRequest{Attachment: "shell"})
	if err != nil {
		t.Fatalf("DisconnectNetwork: %v", err)
	}
	if d.GetAttachment().GetId() != a.GetId() || d.GetAttachment().GetDesiredState() != shoalpb.TaskState_TASK_STATE_REMOVE {
		t.Errorf("disconnected %s desired %v, want %s REMOVE", d.GetAttachment().GetId(), d.GetAttachment().GetDesiredState(), a.GetId())
	}
	if _, err := srv.ConnectNetwork(ctx, &shoalpb.ConnectNetworkRequest{Networks: []string{"dbg"}, Node: "w1", Netns: "/run/netns/shell"}); err != nil {
		t.Errorf("connect again after disconnect: %v", err)
	}
	_, err = srv.DisconnectNetwork(ctx, &shoalpb.DisconnectNetworkRequest{Attachment: "nope"})
	wantCode(t, err, codes.NotFound, "no such attachment: nope")
}
