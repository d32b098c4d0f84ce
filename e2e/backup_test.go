package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/e2e/harness"
)

// TestBackupRestore backs a cluster up, wipes the host, and brings the same
// cluster back from the file.
func TestBackupRestore(t *testing.T) {
	c := harness.New(t, 1)
	h := c.Hosts[0]
	h.Start()
	h.MustShoal("cluster", "init")
	before := strings.TrimSpace(h.MustShoal("info", "--format", "json"))
	for _, name := range []string{"alpha", "beta"} {
		h.MustShoal("service", "create", "-d", "--name", name, "--replicas", "0", "--env", "SERVICE="+name, "shoal/testapp:latest")
	}
	file := filepath.Join(t.TempDir(), "cluster.bak")
	if out := h.MustShoal("cluster", "backup", file); !strings.Contains(out, file) {
		t.Errorf("backup said %q", out)
	}
	inspectBefore := h.MustShoal("service", "inspect", "alpha")

	// Wipe everything of the host and start a brand-new daemon.
	h.Stop()
	for _, dir := range []string{h.DataDir, h.RunDir} {
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}
	h.Start()

	// A damaged backup is refused and says so.
	bad := filepath.Join(t.TempDir(), "bad.bak")
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0xff
	if err := os.WriteFile(bad, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Shoal("cluster", "restore", bad); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("restore of a damaged backup: %v, want a refusal saying it is corrupt", err)
	}

	out := h.MustShoal("cluster", "restore", file)
	if !strings.Contains(out, "2 services") {
		t.Errorf("restore said %q", out)
	}
	if ls := h.MustShoal("service", "ls"); !strings.Contains(ls, "alpha") || !strings.Contains(ls, "beta") {
		t.Errorf("services after restore:\n%s", ls)
	}
	if got := h.MustShoal("service", "inspect", "alpha"); got != inspectBefore {
		t.Errorf("alpha after restore:\n%s\nbefore:\n%s", got, inspectBefore)
	}
	var clusterBefore, clusterAfter string
	for _, kv := range []struct {
		dst *string
		in  string
	}{{&clusterBefore, before}, {&clusterAfter, h.MustShoal("info", "--format", "json")}} {
		if i := strings.Index(kv.in, `"clusterId"`); i >= 0 {
			*kv.dst = strings.SplitN(kv.in[i:], ",", 2)[0]
		}
	}
	if clusterBefore == "" || clusterBefore != clusterAfter {
		t.Errorf("cluster id before %q, after restore %q", clusterBefore, clusterAfter)
	}
	// The restored cluster takes writes.
	h.MustShoal("service", "scale", "beta=0")
	h.MustShoal("service", "create", "-d", "--name", "gamma", "--replicas", "0", "shoal/testapp:latest")
	if _, err := h.Shoal("cluster", "restore", file); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("second restore: %v, want a refusal", err)
	}
}
