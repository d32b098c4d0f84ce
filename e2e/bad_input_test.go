package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/harness"
)

// TestBadInput checks that bad input is refused with an error that says
// what was wrong, and that a damaged Raft log stops the daemon instead of
// silently losing state.
func TestBadInput(t *testing.T) {
	c := harness.New(t, 1)
	h := c.Hosts[0]
	h.Start()

	if _, err := h.Shoal("service", "ls"); err == nil || !strings.Contains(err.Error(), "cluster init") {
		t.Errorf("service ls before init: %v, want a hint to run cluster init", err)
	}
	h.MustShoal("cluster", "init")
	if _, err := h.Shoal("cluster", "init"); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("second cluster init: %v, want 'already part of a cluster'", err)
	}

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"negative replicas", []string{"service", "create", "--replicas", "-1", "shoal/testapp"}, "--replicas"},
		{"malformed reference", []string{"service", "create", "-d", "--name", "bad", "Not A/Ref"}, "not a valid reference"},
		{"bad env", []string{"service", "create", "-d", "--env", "NOEQUALS", "shoal/testapp"}, "KEY=VALUE"},
		{"bad name", []string{"service", "create", "-d", "--name", "-x", "shoal/testapp"}, "name"},
		{"scale syntax", []string{"service", "scale", "web"}, "SERVICE=REPLICAS"},
		{"bad constraint", []string{"service", "create", "-d", "--constraint", "zone=a", "shoal/testapp"}, "expected KEY==VALUE or KEY!=VALUE"},
		{"unknown service", []string{"service", "ps", "nosuch"}, "no such service"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := h.Shoal(tc.args...)
			if err == nil {
				t.Fatalf("shoal %s succeeded (%q), want an error", strings.Join(tc.args, " "), out)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("shoal %s: %v, want it to mention %q", strings.Join(tc.args, " "), err, tc.want)
			}
		})
	}

	// An image that is neither loaded nor pullable: the task is rejected and
	// says why. The registry address is this test host's own, where nothing
	// listens, so the pull fails at once and no traffic leaves the test.
	ref := fmt.Sprintf("%s:5999/shoal/nope:latest", h.Addr)
	h.MustShoal("service", "create", "-d", "--name", "ghost", ref)
	c.Eventually(waitConverge, "task of unknown image rejected with a reason", func() error {
		ts, err := tasks(h, "ghost")
		if err != nil {
			return err
		}
		for _, x := range ts {
			if x.Status.State == "TASK_STATE_REJECTED" && strings.Contains(x.Status.Err, "shoal/nope") {
				return nil
			}
		}
		return fmt.Errorf("no rejected task yet: %s", summarize(ts))
	})

	// Node availability and labels; a manager cannot be removed.
	h.MustShoal("node", "update", "--availability", "pause", "--label-add", "zone=a", "self")
	if ls := h.MustShoal("node", "ls"); !strings.Contains(ls, "Pause") {
		t.Errorf("node ls after pause:\n%s", ls)
	}
	if out := h.MustShoal("node", "inspect", "self"); !strings.Contains(out, `"zone": "a"`) {
		t.Errorf("node inspect has no zone label:\n%s", out)
	}
	h.MustShoal("node", "update", "--availability", "active", "--label-rm", "zone", "self")
	if out := h.MustShoal("node", "inspect", "self"); strings.Contains(out, `"zone"`) {
		t.Errorf("label still there after --label-rm:\n%s", out)
	}
	if _, err := h.Shoal("node", "rm", "--force", "self"); err == nil || !strings.Contains(err.Error(), "demote") {
		t.Errorf("node rm of the manager: %v, want a refusal saying to demote it", err)
	}

	// A corrupt Raft log: the daemon refuses to start and says where.
	h.Stop()
	wal := findFile(t, h.DataDir, "wal-")
	corruptMiddle(t, wal)
	out := h.StartExpectFailure(30 * time.Second)
	if !strings.Contains(out, "corrupt") || !strings.Contains(out, filepath.Base(wal)) {
		t.Errorf("shoald on a corrupt log said:\n%s\nwant it to say the log is corrupt and name %s", out, filepath.Base(wal))
	}
}

// findFile returns the first file under dir whose name starts with prefix.
func findFile(t *testing.T, dir, prefix string) string {
	t.Helper()
	var found string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasPrefix(d.Name(), prefix) && found == "" {
			found = p
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no %s* file under %s", prefix, dir)
	}
	return found
}

// corruptMiddle flips a byte in the middle of a file.
func corruptMiddle(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 64 {
		t.Fatalf("%s is only %d bytes: nothing to corrupt", path, len(b))
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
