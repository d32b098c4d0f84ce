package main

import (
	"strings"
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// attachmentAt is the fake's attachment "att1" in a state.
func attachmentAt(state shoalpb.TaskState, errMsg string) *shoalpb.Task {
	return &shoalpb.Task{
		Id: "att1", Status: &shoalpb.TaskStatus{State: state, Err: errMsg},
		Networks:   []*shoalpb.NetworkAttachment{{NetworkId: "net1", Addresses: []string{"10.10.3.4/24"}}},
		Attachment: &shoalpb.Attachment{Netns: "/run/netns/dbg", Name: "dbg", Interfaces: []string{"eth1"}},
	}
}

func TestNetworkConnect(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		states   []*shoalpb.Task // GetTask's answers in turn, the last repeated
		wantCode int
		wantNode string
		want     []string // in stdout, or stderr when the command fails
	}{
		{
			name: "waits until the node plugged it in, on this node by default",
			args: []string{"network", "connect", "--netns", "/run/netns/dbg", "tools"},
			states: []*shoalpb.Task{
				attachmentAt(shoalpb.TaskState_TASK_STATE_PENDING, ""),
				attachmentAt(shoalpb.TaskState_TASK_STATE_RUNNING, ""),
			},
			wantNode: "self-node",
			want:     []string{"ATTACHMENT", "dbg", "eth1", "10.10.3.4/24", "tools"},
		},
		{
			name:     "a refusal on the node is the command's error",
			args:     []string{"network", "connect", "--node", "w2", "--netns", "/run/netns/dbg", "tools"},
			states:   []*shoalpb.Task{attachmentAt(shoalpb.TaskState_TASK_STATE_REJECTED, "network namespace /run/netns/dbg does not exist on this node")},
			wantCode: 1,
			wantNode: "w2",
			want:     []string{"could not connect it (rejected)", "does not exist on this node"},
		},
		{
			name:     "detach prints the id at once",
			args:     []string{"network", "connect", "-d", "--netns", "/run/netns/dbg", "tools"},
			wantNode: "self-node",
			want:     []string{"att1"},
		},
		{
			name:     "netns is required",
			args:     []string{"network", "connect", "tools"},
			wantCode: exitUsage,
			want:     []string{"--netns is required", "/run/netns/NAME"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeDaemon{nodeID: "self-node", getTask: func(call int) *shoalpb.Task {
				return tt.states[min(call, len(tt.states))-1]
			}}
			res := runCLI(t, startFake(t, f), nil, tt.args...)
			if res.code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stdout %q stderr %q", res.code, tt.wantCode, res.stdout, res.stderr)
			}
			out := res.stdout
			if tt.wantCode != 0 {
				out = res.stderr
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output %q does not mention %q", out, w)
				}
			}
			if tt.wantNode != "" && (len(f.connects) != 1 || f.connects[0].GetNode() != tt.wantNode) {
				t.Errorf("connect requests %v, want one for node %s", f.connects, tt.wantNode)
			}
		})
	}
}
