package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/e2e/harness"
)

// TestServiceFromRegistry runs a service whose image is not on the host:
// the agent pulls it from the test's registry, which the daemon was told
// to reach over plain HTTP.
func TestServiceFromRegistry(t *testing.T) {
	c := harness.New(t, 1)
	images := harness.Images(t)
	h := c.Hosts[0]
	reg := c.StartRegistry()
	ref := c.PushImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest")
	h.Start("--insecure-registry", reg)
	h.MustShoal("cluster", "init")

	if out := h.MustShoal("image", "ls", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("host already has images: %s", out)
	}
	h.MustShoal("service", "create", "--name", "pulled", "--replicas", "2", ref)
	ts := waitRunning(c, h, "pulled", 2)
	checkServes(t, h, ts)
	if out := h.MustShoal("image", "ls"); !strings.Contains(out, reg+"/shoal/testapp") {
		t.Errorf("image ls after the pull does not show %s:\n%s", ref, out)
	}

	// `shoal image pull` reports progress and the digest.
	out, err := h.Shoal("image", "pull", ref)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "sha256:") {
		t.Errorf("image pull said %q, want the digest", out)
	}

	// A registry that is not marked insecure is reached over HTTPS only:
	// the plain-HTTP test registry refuses, and the error says so.
	h.Stop()
	h.Start()
	_, err = h.Shoal("image", "pull", fmt.Sprintf("%s/shoal/testapp:latest", reg))
	if err == nil || !strings.Contains(err.Error(), "--insecure-registry") {
		t.Errorf("pull from a plain-HTTP registry not marked insecure: %v, want a refusal naming --insecure-registry", err)
	}
}
