package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
)

func TestNamespaceID(t *testing.T) {
	regular := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path     string
		wantErr  string // "" for a namespace
		notExist bool
	}{
		{path: "/proc/self/ns/net"},
		{path: regular, wantErr: "is not a namespace file"},
		{path: "/run/netns/shoal-test-missing-" + fmt.Sprint(os.Getpid()), wantErr: "does not exist on this node", notExist: true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			_, ino, err := namespaceID(tt.path)
			switch {
			case tt.wantErr == "" && (err != nil || ino == 0):
				t.Fatalf("namespaceID = ino %d, %v; want the namespace", ino, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("namespaceID error = %v, want one saying %q", err, tt.wantErr)
			case tt.notExist && !errors.Is(err, fs.ErrNotExist):
				t.Errorf("error %v is not fs.ErrNotExist", err)
			}
		})
	}
}

// An attachment runs while the namespace it plugged into is at its path:
// here the one of a child process, gone when the child exits.
func TestAttachmentLifecycleFollowsTheNamespace(t *testing.T) {
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatalf("start a child: %v", err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	netns := fmt.Sprintf("/proc/%d/ns/net", child.Process.Pid)
	dev, ino, err := namespaceID(netns)
	if err != nil {
		t.Fatal(err)
	}
	e := &AttachmentExecutor{Dir: t.TempDir(), Logger: slog.New(slog.DiscardHandler), Poll: 10 * time.Millisecond}
	ctx := context.Background()
	for _, r := range []struct {
		id  string
		rec attachmentRecord
	}{
		{"live", attachmentRecord{Netns: netns, Dev: dev, Ino: ino}},
		{"replaced", attachmentRecord{Netns: netns, Dev: dev, Ino: ino + 1}}, // deleted and made again
	} {
		if err := e.writeRecord(r.id, &r.rec); err != nil {
			t.Fatal(err)
		}
	}
	for id, want := range map[string]ContainerState{"live": ContainerRunning, "replaced": ContainerExited, "unknown": ContainerAbsent} {
		if cs, err := e.Inspect(ctx, id); err != nil || cs.State != want {
			t.Errorf("Inspect(%s) = %v, %v; want state %v", id, cs.State, err, want)
		}
	}

	// Tasks are routed by kind: by the task where the call has one, by
	// the records otherwise; List is the union.
	containers := &listOnly{ids: []string{"c1", "live"}}
	split := WithAttachments(containers, e)
	ids, err := split.List(ctx)
	slices.Sort(ids)
	if err != nil || !slices.Equal(ids, []string{"c1", "live", "replaced"}) {
		t.Errorf("List = %v, %v; want c1, live, replaced", ids, err)
	}
	if cs, err := split.Inspect(ctx, "live"); err != nil || cs.State != ContainerRunning {
		t.Errorf("split Inspect(live) = %v, %v; want the attachment running", cs.State, err)
	}
	if _, err := split.Inspect(ctx, "c1"); !errors.Is(err, errContainerCalled) {
		t.Errorf("split Inspect(c1) = %v, want the container executor asked", err)
	}

	waited := make(chan error, 1)
	go func() {
		cs, err := e.Wait(ctx, "live")
		if err == nil && cs.State != ContainerExited {
			err = fmt.Errorf("state %v, want exited", cs.State)
		}
		waited <- err
	}()
	select {
	case err := <-waited:
		t.Fatalf("Wait returned while the namespace is there: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	_ = child.Process.Kill()
	_ = child.Wait()
	if err := <-waited; err != nil {
		t.Fatalf("Wait after the namespace went: %v", err)
	}
	if err := split.Remove(ctx, "live"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if e.Has("live") {
		t.Errorf("record kept after Remove")
	}
}

var errContainerCalled = errors.New("container executor called")

// listOnly is a container executor that lists ids and fails every other
// call, so routing mistakes show.
type listOnly struct{ ids []string }

func (l *listOnly) Prepare(context.Context, *shoalpb.Task) ([]string, error) {
	return nil, errContainerCalled
}
func (l *listOnly) Start(context.Context, *shoalpb.Task) error { return errContainerCalled }
func (l *listOnly) Adopt(context.Context, *shoalpb.Task) error { return errContainerCalled }
func (l *listOnly) Inspect(context.Context, string) (ContainerStatus, error) {
	return ContainerStatus{}, errContainerCalled
}
func (l *listOnly) Wait(context.Context, string) (ContainerStatus, error) {
	return ContainerStatus{}, errContainerCalled
}
func (l *listOnly) Stop(context.Context, *shoalpb.Task) (ContainerStatus, error) {
	return ContainerStatus{}, errContainerCalled
}
func (l *listOnly) Remove(context.Context, string) error   { return errContainerCalled }
func (l *listOnly) List(context.Context) ([]string, error) { return l.ids, nil }
