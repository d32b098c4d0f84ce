package agent

import (
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
)

func TestTaskRunnerReportsExit(t *testing.T) {
	const (
		failed   = shoalpb.TaskState_TASK_STATE_FAILED
		complete = shoalpb.TaskState_TASK_STATE_COMPLETE
	)
	for _, tc := range []struct {
		name      string
		exit      ContainerStatus
		wantState shoalpb.TaskState
		wantCode  int32
		wantErr   string
	}{
		{name: "exit 0", exit: ContainerStatus{}, wantState: complete},
		{name: "non-zero exit", exit: ContainerStatus{ExitCode: 3}, wantState: failed, wantCode: 3, wantErr: "task: non-zero exit (3)"},
		{
			name:      "killed by a signal",
			exit:      ContainerStatus{ExitCode: 137, Signal: "SIGKILL", MemoryLimit: 32 << 20},
			wantState: failed, wantCode: 137, wantErr: "task: killed by SIGKILL (exit 137)",
		},
		{
			name:      "OOM killed at its memory limit",
			exit:      ContainerStatus{ExitCode: 137, Signal: "SIGKILL", OOMKilled: true, MemoryLimit: 32 << 20},
			wantState: failed, wantCode: 137, wantErr: "OOM killed: container exceeded its memory limit of 32 MiB",
		},
		{
			name:      "OOM killed without a limit",
			exit:      ContainerStatus{ExitCode: 137, Signal: "SIGKILL", OOMKilled: true},
			wantState: failed, wantCode: 137, wantErr: "OOM killed: the host ran out of memory",
		},
		{
			name:      "a child OOM killed, init failing",
			exit:      ContainerStatus{ExitCode: 3, OOMKilled: true, MemoryLimit: 1536 << 20},
			wantState: failed, wantCode: 3,
			wantErr: "task: non-zero exit (3) after a process was OOM killed: container exceeded its memory limit of 1.5 GiB",
		},
		{
			name:      "a child OOM killed, init succeeding",
			exit:      ContainerStatus{OOMKilled: true, MemoryLimit: 32 << 20},
			wantState: complete,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeExecutor()
			log := newStatusLog()
			startRunner(t, f, newTask("t", shoalpb.TaskState_TASK_STATE_ASSIGNED, shoalpb.TaskState_TASK_STATE_RUNNING), log)
			waitFor(t, "running", func() bool { return log.lastOf("t").GetState() == shoalpb.TaskState_TASK_STATE_RUNNING })
			f.exitWith("t", tc.exit)
			waitFor(t, tc.wantState.String(), func() bool { return log.lastOf("t").GetState() == tc.wantState })
			st := log.lastOf("t")
			if st.GetExitCode() != tc.wantCode || st.GetErr() != tc.wantErr {
				t.Errorf("status exit %d err %q; want %d %q", st.GetExitCode(), st.GetErr(), tc.wantCode, tc.wantErr)
			}
		})
	}
}

func TestFormatBytes(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0 bytes"},
		{1023, "1023 bytes"},
		{1024, "1 KiB"},
		{1536, "1.5 KiB"},
		{32 << 20, "32 MiB"},
		{6<<20 + 1, "6.0 MiB"},
		{1536 << 20, "1.5 GiB"},
		{3 << 40, "3 TiB"},
		{1 << 62, "4 EiB"},
	} {
		if got := formatBytes(tc.n); got != tc.want {
			t.Errorf("formatBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

func TestContainerResources(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   *shoalpb.ResourceRequirements
		want struct{ mem, cpus, pids int64 }
	}{
		{name: "none"},
		{
			name: "limits and pids",
			in: &shoalpb.ResourceRequirements{
				Limits:    &shoalpb.Resources{NanoCpus: 5e8, MemoryBytes: 64 << 20},
				PidsLimit: 20,
			},
			want: struct{ mem, cpus, pids int64 }{64 << 20, 5e8, 20},
		},
		{
			name: "reservations are not limits",
			in:   &shoalpb.ResourceRequirements{Reservations: &shoalpb.Resources{NanoCpus: 1e9, MemoryBytes: 1 << 30}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := containerResources(tc.in)
			if got.MemoryBytes != tc.want.mem || got.NanoCPUs != tc.want.cpus || got.PidsLimit != tc.want.pids {
				t.Errorf("containerResources = %+v, want %+v", got, tc.want)
			}
		})
	}
}
