package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestStateSince(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		state string
		ago   time.Duration
		zero  bool
		want  string
	}{
		{name: "just now", state: "Running", ago: 300 * time.Millisecond, want: "Running less than a second ago"},
		{name: "one second", state: "Running", ago: time.Second, want: "Running 1 second ago"},
		{name: "seconds", state: "Running", ago: 12 * time.Second, want: "Running 12 seconds ago"},
		{name: "about a minute", state: "Preparing", ago: 80 * time.Second, want: "Preparing about a minute ago"},
		{name: "minutes", state: "Failed", ago: 45 * time.Minute, want: "Failed 45 minutes ago"},
		{name: "about an hour", state: "Running", ago: 70 * time.Minute, want: "Running about an hour ago"},
		{name: "hours", state: "Running", ago: 5 * time.Hour, want: "Running 5 hours ago"},
		{name: "days", state: "Shutdown", ago: 72 * time.Hour, want: "Shutdown 3 days ago"},
		{name: "weeks", state: "Complete", ago: 21 * 24 * time.Hour, want: "Complete 3 weeks ago"},
		{name: "future clock skew counts as now", state: "Running", ago: -5 * time.Second, want: "Running less than a second ago"},
		{name: "no timestamp", state: "Pending", zero: true, want: "Pending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := now.Add(-tt.ago)
			if tt.zero {
				at = time.Time{}
			}
			if got := stateSince(tt.state, at, now); got != tt.want {
				t.Errorf("stateSince(%q, now-%s) = %q, want %q", tt.state, tt.ago, got, tt.want)
			}
		})
	}
}

func TestAgo(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		at   time.Time
		want string
	}{
		{name: "seconds", at: now.Add(-30 * time.Second), want: "30 seconds ago"},
		{name: "capitalised phrase", at: now.Add(-61 * time.Second), want: "About a minute ago"},
		{name: "months", at: now.Add(-90 * 24 * time.Hour), want: "3 months ago"},
		{name: "years", at: now.Add(-3 * 365 * 24 * time.Hour), want: "3 years ago"},
		{name: "unknown", at: time.Time{}, want: "N/A"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ago(tt.at, now); got != tt.want {
				t.Errorf("ago() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestHumanSize(t *testing.T) {
	tests := []struct {
		name string
		in   int64
		want string
	}{
		{name: "zero", in: 0, want: "0B"},
		{name: "bytes", in: 999, want: "999B"},
		{name: "one kB", in: 1000, want: "1kB"},
		{name: "fractional kB", in: 1500, want: "1.5kB"},
		{name: "three significant digits", in: 4_861_234, want: "4.86MB"},
		{name: "tens of MB", in: 12_345_678, want: "12.3MB"},
		{name: "hundreds of MB", in: 123_456_789, want: "123MB"},
		{name: "rounds up into the next unit", in: 999_999, want: "1MB"},
		{name: "GB", in: 2_500_000_000, want: "2.5GB"},
		{name: "negative is unknown", in: -1, want: "N/A"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := humanSize(tt.in); got != tt.want {
				t.Errorf("humanSize(%d) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestEnumWords(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{name: "task state", got: taskStateWord(shoalpb.TaskState_TASK_STATE_RUNNING), want: "Running"},
		{name: "desired remove", got: taskStateWord(shoalpb.TaskState_TASK_STATE_REMOVE), want: "Remove"},
		{name: "node ready", got: nodeStatus(&shoalpb.Node{Status: &shoalpb.NodeStatus{State: shoalpb.NodeState_NODE_STATE_READY}}), want: "Ready"},
		{name: "node drain", got: nodeAvailability(&shoalpb.Node{Spec: &shoalpb.NodeSpec{Availability: shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN}}), want: "Drain"},
		{name: "leader", got: managerStatus(&shoalpb.Node{ManagerStatus: &shoalpb.ManagerStatus{Leader: true, Reachability: "reachable"}}), want: "Leader"},
		{name: "unreachable manager", got: managerStatus(&shoalpb.Node{ManagerStatus: &shoalpb.ManagerStatus{Reachability: "unreachable"}}), want: "Unreachable"},
		{name: "worker", got: managerStatus(&shoalpb.Node{}), want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestWriteJSONArray(t *testing.T) {
	tests := []struct {
		name string
		svcs []*shoalpb.Service
		want string
	}{
		{name: "empty is an empty array", want: "[]\n"},
		{
			name: "indented, unpopulated fields left out",
			svcs: []*shoalpb.Service{{Id: "s1", Spec: &shoalpb.ServiceSpec{Name: "web"}}},
			want: "[\n    {\n        \"id\": \"s1\",\n        \"spec\": {\n            \"name\": \"web\"\n        }\n    }\n]\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeJSONArray(&b, tt.svcs); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got\n%s\nwant\n%s", b.String(), tt.want)
			}
		})
	}
}

func TestImageTable(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	imgs := []*shoalpb.ImageSummary{
		{Refs: []string{"shoal/web:latest", "shoal/web:1.0"}, Digest: "sha256:0123456789abcdef0123", Size: 4_861_234, CreatedAt: timestamppb.New(now.Add(-72 * time.Hour))},
		{Digest: "sha256:fedcba9876543210fedc", Size: 1000},
	}
	var b bytes.Buffer
	if err := writeImageTable(&b, imgs, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := [][]string{
		{"REPOSITORY:TAG", "DIGEST", "SIZE", "CREATED"},
		{"<none>", "fedcba987654", "1kB", "N/A"},
		{"shoal/web:1.0", "0123456789ab", "4.86MB", "3 days ago"},
		{"shoal/web:latest", "0123456789ab", "4.86MB", "3 days ago"},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d:\n%s", len(lines), len(want), b.String())
	}
	for i, w := range want {
		if got := splitCells(lines[i]); strings.Join(got, "|") != strings.Join(w, "|") {
			t.Errorf("line %d = %q, want cells %q", i, lines[i], w)
		}
	}
}

// splitCells splits a table line on runs of 2+ spaces (cells themselves
// hold single spaces, like "3 days ago").
func splitCells(line string) []string {
	var cells []string
	for _, c := range strings.Split(line, "  ") {
		if c = strings.TrimSpace(c); c != "" {
			cells = append(cells, c)
		}
	}
	return cells
}
