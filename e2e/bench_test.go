package e2e

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/shoal-project/shoal/e2e/harness"
)

// benchReplicas is the service size the README's convergence figure uses.
const benchReplicas = 20

// BenchmarkServiceCreate20 measures `shoal service create --replicas 20`
// until every task is RUNNING, on one simulated host.
func BenchmarkServiceCreate20(b *testing.B) {
	c := harness.New(b, 1)
	images := harness.Images(b)
	h := c.Hosts[0]
	h.Start()
	h.MustShoal("cluster", "init")
	h.MustShoal("image", "load", "-i", filepath.Join(images, "testapp.tar"))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("bench%d", i)
		start := time.Now()
		h.MustShoal("service", "create", "--name", name, "--replicas", fmt.Sprint(benchReplicas), "shoal/testapp:latest")
		b.ReportMetric(time.Since(start).Seconds(), "s/create-20")
		b.StopTimer()
		h.MustShoal("service", "rm", name)
		c.Eventually(waitConverge, "bench service removed", func() error {
			ids, err := runningContainers(h)
			if err != nil || len(ids) > 0 {
				return fmt.Errorf("%d containers left (%v)", len(ids), err)
			}
			return nil
		})
		b.StartTimer()
	}
}

// BenchmarkRuncRun20 is the baseline: 20 × a bare `runc run -d` of the same
// image's root filesystem (shared, read-only), no network, no Shoal.
func BenchmarkRuncRun20(b *testing.B) {
	harness.Requirements(b)
	images := harness.Images(b)
	dir := b.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	if err := extractImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest", rootfs); err != nil {
		b.Fatal(err)
	}
	bundle := dir
	if out, err := exec.Command("runc", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		b.Fatalf("runc spec: %v: %s", err, out)
	}
	if err := editSpec(filepath.Join(bundle, "config.json")); err != nil {
		b.Fatal(err)
	}
	root := filepath.Join(dir, "runc")
	prefix := fmt.Sprintf("shb%d", os.Getpid())
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	cleanup := func() {
		for j := 0; j < benchReplicas; j++ {
			_ = exec.Command("runc", "--root", root, "delete", "-f", fmt.Sprintf("%s-%d", prefix, j)).Run()
		}
	}
	b.Cleanup(cleanup)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		for j := 0; j < benchReplicas; j++ {
			cmd := exec.Command("runc", "--root", root, "run", "-d", "--bundle", bundle, fmt.Sprintf("%s-%d", prefix, j))
			cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
			if err := cmd.Run(); err != nil {
				b.Fatalf("runc run: %v", err)
			}
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/run-20")
		b.StopTimer()
		cleanup()
		b.StartTimer()
	}
}

// editSpec makes runc's default spec run the test app detached, read-only,
// in a fresh network namespace.
func editSpec(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		return err
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"/usr/local/bin/testapp"}
	spec["root"] = map[string]any{"path": "rootfs", "readonly": true}
	out, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}

// extractImage flattens an image from a docker-save archive into dir.
func extractImage(archive, ref, dir string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	img, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		return fmt.Errorf("read %s: %w", archive, err)
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.Clean("/"+hdr.Name))
		if !strings.HasPrefix(target, dir) {
			return fmt.Errorf("entry %s escapes the rootfs", hdr.Name)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, os.FileMode(hdr.Mode)&os.ModePerm); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(hdr.Mode)&os.ModePerm)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, tr); err != nil {
				f.Close()
				return err
			}
			f.Close()
		case tar.TypeSymlink:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			_ = os.Symlink(hdr.Linkname, target)
		}
	}
}
