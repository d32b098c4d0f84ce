package image

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// startRegistry serves an in-memory registry on loopback and returns its
// "host:port".
func startRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

func push(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestPull(t *testing.T) {
	host := startRegistry(t)
	ctx := testCtx(t)
	base := layerOf(t, types.DockerLayer, dirEnt("bin/", 0o755), fileEnt("bin/tool", "tool", 0o755))
	app := imageOf(t, false, v1.Config{Entrypoint: []string{"/bin/tool"}}, base, layerOf(t, types.DockerLayer, fileEnt("app", "v1", 0o644)))
	other := imageOf(t, false, v1.Config{}, base, layerOf(t, types.DockerLayer, fileEnt("other", "o", 0o644)))
	push(t, host+"/shoal/app:v1", app)
	push(t, host+"/shoal/other:latest", other)

	s := newStore(t, host)
	var lines []string
	img, err := s.Pull(ctx, host+"/shoal/app:v1", func(msg string) { lines = append(lines, msg) })
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if want := digestOfImage(t, app); img.Digest != want {
		t.Errorf("Digest = %s, want %s", img.Digest, want)
	}
	if want := []string{host + "/shoal/app:v1"}; !slices.Equal(img.Refs, want) {
		t.Errorf("Refs = %q, want %q", img.Refs, want)
	}
	if b, err := os.ReadFile(filepath.Join(img.Layers[1], "app")); err != nil || string(b) != "v1" {
		t.Errorf("top layer app = %q, %v", b, err)
	}
	if !slices.Equal(img.Config.Entrypoint, []string{"/bin/tool"}) {
		t.Errorf("Entrypoint = %q", img.Config.Entrypoint)
	}
	if n := countContaining(lines, "fetching"); n != 2 {
		t.Errorf("progress %q: %d layers fetched, want 2", lines, n)
	}
	if got, err := s.Get(host + "/shoal/app:v1"); err != nil || got.Digest != img.Digest {
		t.Errorf("Get after pull = %v, %v", got, err)
	}

	// A second image sharing the base layer downloads only its own layer.
	lines = nil
	img2, err := s.Pull(ctx, host+"/shoal/other", func(msg string) { lines = append(lines, msg) })
	if err != nil {
		t.Fatalf("Pull other: %v", err)
	}
	if n := countContaining(lines, "fetching"); n != 1 {
		t.Errorf("progress %q: %d layers fetched, want only the one not present", lines, n)
	}
	if countContaining(lines, "already present") != 1 {
		t.Errorf("progress %q does not report the shared layer as present", lines)
	}
	if img2.Layers[0] != img.Layers[0] {
		t.Errorf("shared layer in two dirs: %s, %s", img2.Layers[0], img.Layers[0])
	}

	// A digest reference already present needs no registry at all.
	// (Nothing listens on loopback port 1.)
	unreachable := "127.0.0.1:1/shoal/app@" + img.Digest
	if _, err := newStore(t, "127.0.0.1:1").Pull(ctx, unreachable, nil); err == nil {
		t.Fatal("Pull from an unreachable registry into an empty store succeeded")
	}
	if got, err := s.Pull(ctx, unreachable, nil); err != nil || got.Digest != img.Digest {
		t.Errorf("Pull of a present digest = %v, %v; want it served locally", got, err)
	}
}

func TestPullIndexByDigest(t *testing.T) {
	host := startRegistry(t)
	ctx := testCtx(t)
	mine := imageOf(t, true, v1.Config{Cmd: []string{"mine"}}, layerOf(t, types.OCILayer, fileEnt("arch", runtime.GOARCH, 0o644)))
	foreign := imageOf(t, true, v1.Config{Cmd: []string{"foreign"}}, layerOf(t, types.OCILayer, fileEnt("arch", "s390x", 0o644)))
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: foreign, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}},
		mutate.IndexAddendum{Add: mine, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
	)
	r, err := name.ParseReference(host+"/shoal/multi:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatalf("push index: %v", err)
	}
	idxDigest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}

	s := newStore(t, host)
	pinned := host + "/shoal/multi@" + idxDigest.String()
	img, err := s.Pull(ctx, pinned, nil)
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if want := digestOfImage(t, mine); img.Digest != want {
		t.Errorf("pulled %s, want this platform's image %s", img.Digest, want)
	}
	if len(img.Refs) != 0 {
		t.Errorf("digest pull recorded refs %q, want none", img.Refs)
	}
	// The manager pins services to the index digest; the agent finds the
	// image again by it.
	for _, ref := range []string{pinned, idxDigest.String(), host + "/shoal/multi:1@" + idxDigest.String()} {
		if got, err := s.Get(ref); err != nil || got.Digest != img.Digest {
			t.Errorf("Get(%q) = %v, %v; want %s", ref, got, err, img.Digest)
		}
	}
}

func TestPullErrors(t *testing.T) {
	host := startRegistry(t)
	ctx := testCtx(t)
	s := newStore(t, host)
	tests := []struct {
		name    string
		ref     string
		wantErr error // nil: any error
	}{
		{name: "malformed", ref: "UPPER/Case", wantErr: ErrInvalidReference},
		{name: "unknown tag", ref: host + "/shoal/nothing:here"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Pull(ctx, tt.ref, nil)
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Errorf("Pull(%q) = %v, want error %v", tt.ref, err, tt.wantErr)
			}
			if list, _ := s.List(); len(list) != 0 {
				t.Errorf("failed pull left images %+v", list)
			}
		})
	}
}

func countContaining(lines []string, sub string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}
