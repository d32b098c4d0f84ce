package orchestrator

import (
	"testing"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestRestartDelayBacksOffRepeatedFailures(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	failed := func(slot uint64, ago time.Duration) *shoalpb.Task {
		return &shoalpb.Task{Slot: slot, Status: &shoalpb.TaskStatus{
			State: shoalpb.TaskState_TASK_STATE_FAILED, Timestamp: timestamppb.New(now.Add(-ago)),
		}}
	}
	running := &shoalpb.Task{Slot: 1, Status: &shoalpb.TaskStatus{State: shoalpb.TaskState_TASK_STATE_RUNNING, Timestamp: timestamppb.New(now)}}
	tests := []struct {
		name  string
		tasks []*shoalpb.Task
		want  time.Duration
	}{
		{"no failure", []*shoalpb.Task{running}, 0},
		{"a lone failure is replaced at once", []*shoalpb.Task{failed(1, time.Second)}, 0},
		{"second recent failure waits the base", []*shoalpb.Task{failed(1, 2*time.Second), failed(1, time.Second)}, RestartBackoffBase},
		{"fifth recent failure waits 8x", []*shoalpb.Task{failed(1, 5*time.Second), failed(1, 4*time.Second), failed(1, 3*time.Second), failed(1, 2*time.Second), failed(1, time.Second)}, 8 * RestartBackoffBase},
		{"old failures do not count", []*shoalpb.Task{failed(1, 2*RestartBackoffWindow), failed(1, time.Second)}, 0},
		{"other slots do not count", []*shoalpb.Task{failed(2, 2*time.Second), failed(2, time.Second), failed(1, time.Second)}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &pass{now: now, tasks: tc.tasks}
			if got := p.restartDelay(1, ""); got != tc.want {
				t.Errorf("restartDelay = %s, want %s", got, tc.want)
			}
		})
	}
}
