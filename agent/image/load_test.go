package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestLoadDockerArchive(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	base := layerOf(t, types.DockerLayer, dirEnt("bin/", 0o755), fileEnt("bin/hello", "#!/bin/sh\necho hi\n", 0o755))
	app := layerOf(t, types.DockerLayer, dirEnt("etc/", 0o755), fileEnt("etc/app.conf", "answer=42\n", 0o644))
	cfg := v1.Config{
		Env:        []string{"PATH=/bin", "MODE=test"},
		Entrypoint: []string{"/bin/hello"},
		Cmd:        []string{"--flag"},
		WorkingDir: "/srv",
		User:       "65534",
		StopSignal: "SIGTERM",
		Labels:     map[string]string{"team": "shoal"},
	}
	img := imageOf(t, false, cfg, base, app)
	archive := dockerArchive(t, map[string]v1.Image{"busybox:latest": img, "example.com/team/app:v1": img})

	loaded, err := s.Load(ctx, bytes.NewReader(archive))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(loaded) != 1 {
		t.Fatalf("Load returned %d images, want 1 (two tags of one image)", len(loaded))
	}
	got := loaded[0]
	wantRefs := []string{"docker.io/library/busybox:latest", "example.com/team/app:v1"}
	if !slices.Equal(got.Refs, wantRefs) {
		t.Errorf("Refs = %q, want %q", got.Refs, wantRefs)
	}
	if want := digestOfImage(t, img); got.Digest != want {
		t.Errorf("Digest = %s, want %s", got.Digest, want)
	}
	if got.Config.WorkingDir != "/srv" || got.Config.User != "65534" || got.Config.StopSignal != "SIGTERM" ||
		!slices.Equal(got.Config.Env, cfg.Env) || !slices.Equal(got.Config.Entrypoint, cfg.Entrypoint) ||
		!slices.Equal(got.Config.Cmd, cfg.Cmd) || got.Config.Labels["team"] != "shoal" {
		t.Errorf("Config = %+v, want it to mirror %+v", got.Config, cfg)
	}
	if !got.Created.Equal(testTime) {
		t.Errorf("Created = %v, want %v", got.Created, testTime)
	}
	var wantSize int64
	for _, l := range []v1.Layer{base, app} {
		n, _ := l.Size()
		wantSize += n
	}
	if got.Size != wantSize {
		t.Errorf("Size = %d, want %d", got.Size, wantSize)
	}
	if len(got.Layers) != 2 {
		t.Fatalf("Layers = %q, want 2", got.Layers)
	}
	// Lowest first: the first layer holds bin/hello, the second etc/app.conf.
	if b, err := os.ReadFile(filepath.Join(got.Layers[0], "bin/hello")); err != nil || string(b) != "#!/bin/sh\necho hi\n" {
		t.Errorf("lowest layer bin/hello = %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(got.Layers[1], "etc/app.conf")); err != nil || string(b) != "answer=42\n" {
		t.Errorf("top layer etc/app.conf = %q, %v", b, err)
	}
	for _, l := range got.Layers {
		if !filepath.IsAbs(l) {
			t.Errorf("layer path %q is not absolute", l)
		}
	}

	for _, tt := range []struct {
		name, ref string
		wantErr   error
	}{
		{name: "short name", ref: "busybox"},
		{name: "short name with tag", ref: "busybox:latest"},
		{name: "full name", ref: "docker.io/library/busybox:latest"},
		{name: "index alias", ref: "index.docker.io/library/busybox"},
		{name: "second tag", ref: "example.com/team/app:v1"},
		{name: "name at digest", ref: "busybox@" + got.Digest},
		{name: "other name at digest", ref: "example.com/x@" + got.Digest},
		{name: "bare digest", ref: got.Digest},
		{name: "other tag", ref: "busybox:1.36", wantErr: ErrNotFound},
		{name: "other repository", ref: "example.com/team/app", wantErr: ErrNotFound},
		{name: "unknown digest", ref: "busybox@sha256:" + string(bytes.Repeat([]byte("0"), 64)), wantErr: ErrNotFound},
		{name: "malformed", ref: "UPPER/Case", wantErr: ErrInvalidReference},
	} {
		t.Run("Get "+tt.name, func(t *testing.T) {
			img, err := s.Get(tt.ref)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Get(%q) = %v, %v; want %v", tt.ref, img, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Get(%q): %v", tt.ref, err)
			}
			if img.Digest != got.Digest || !slices.Equal(img.Layers, got.Layers) {
				t.Errorf("Get(%q) = %+v, want %+v", tt.ref, img, got)
			}
		})
	}

	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Digest != got.Digest {
		t.Errorf("List() = %+v, %v; want the one image", list, err)
	}

	// The index is durable: a new Store on the same directory knows the image.
	s2, err := Open(Config{Dir: s.dir})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if img, err := s2.Get("busybox"); err != nil || img.Digest != got.Digest {
		t.Errorf("after reopen Get(busybox) = %v, %v; want %s", img, err, got.Digest)
	}
}

func TestLoadOCILayout(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	l := func(n string) v1.Layer { return layerOf(t, types.OCILayer, fileEnt(n, n, 0o644)) }
	full := imageOf(t, true, v1.Config{Cmd: []string{"sh"}}, l("full"))
	containerd := imageOf(t, true, v1.Config{Cmd: []string{"sh"}}, l("containerd"))
	bareTag := imageOf(t, true, v1.Config{Cmd: []string{"sh"}}, l("bare"))
	archive := ociArchive(t,
		annotated{full, map[string]string{annotationRefName: "docker.io/shoal/busybox:latest"}},
		annotated{containerd, map[string]string{annotationContainerdName: "registry.example.com/ns/app:2", annotationRefName: "2"}},
		annotated{bareTag, map[string]string{annotationRefName: "latest"}},
	)

	// Compressed archives (docker save | gzip) load the same way.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(archive)
	zw.Close()

	loaded, err := s.Load(ctx, &gz)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	tests := []struct {
		name     string
		img      v1.Image
		wantRefs []string
		get      string
	}{
		{name: "ref.name full name", img: full, wantRefs: []string{"docker.io/shoal/busybox:latest"}, get: "shoal/busybox"},
		{name: "containerd name wins over tag", img: containerd, wantRefs: []string{"registry.example.com/ns/app:2"}, get: "registry.example.com/ns/app:2"},
		{name: "bare tag names nothing", img: bareTag, wantRefs: nil, get: digestOfImage(t, bareTag)},
	}
	if len(loaded) != len(tests) {
		t.Fatalf("Load returned %d images, want %d", len(loaded), len(tests))
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := digestOfImage(t, tt.img)
			if loaded[i].Digest != want {
				t.Errorf("image %d digest %s, want %s (archive order)", i, loaded[i].Digest, want)
			}
			if !slices.Equal(loaded[i].Refs, tt.wantRefs) {
				t.Errorf("Refs = %q, want %q", loaded[i].Refs, tt.wantRefs)
			}
			got, err := s.Get(tt.get)
			if err != nil || got.Digest != want {
				t.Fatalf("Get(%q) = %v, %v; want %s", tt.get, got, err, want)
			}
			if got.Config.Cmd[0] != "sh" || len(got.Layers) != 1 {
				t.Errorf("Get(%q) = %+v, want Cmd [sh] and one layer", tt.get, got)
			}
		})
	}
}

func TestLayersSharedAcrossImages(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	base := []entry{dirEnt("bin/", 0o755), fileEnt("bin/tool", "shared", 0o755)}
	// The same layer content arrives once as a Docker and once as an OCI
	// layer: different media types, same diffID.
	one := imageOf(t, false, v1.Config{}, layerOf(t, types.DockerLayer, base...), layerOf(t, types.DockerLayer, fileEnt("one", "1", 0o644)))
	two := imageOf(t, true, v1.Config{}, layerOf(t, types.OCILayer, base...), layerOf(t, types.OCILayer, fileEnt("two", "2", 0o644)))

	a, err := s.Load(ctx, bytes.NewReader(dockerArchive(t, map[string]v1.Image{"one:latest": one})))
	if err != nil {
		t.Fatalf("Load one: %v", err)
	}
	// Mark the shared layer so a second unpack (which would replace the
	// directory) is detected.
	marker := filepath.Join(a[0].Layers[0], "marker")
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := s.Load(ctx, bytes.NewReader(ociArchive(t, annotated{two, map[string]string{annotationRefName: "two:latest"}})))
	if err != nil {
		t.Fatalf("Load two: %v", err)
	}
	if a[0].Layers[0] != b[0].Layers[0] {
		t.Errorf("shared layer unpacked twice: %s and %s", a[0].Layers[0], b[0].Layers[0])
	}
	if a[0].Layers[1] == b[0].Layers[1] {
		t.Errorf("distinct top layers share a directory %s", a[0].Layers[1])
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("shared layer directory was replaced: %v", err)
	}
	if dirs := layerDirs(t, s); len(dirs) != 3 {
		t.Errorf("layer dirs = %q, want 3 (one shared + two own)", dirs)
	}
}

func TestReloadAndMovedRef(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	v1img := imageOf(t, false, v1.Config{Cmd: []string{"v1"}}, layerOf(t, types.DockerLayer, fileEnt("version", "1", 0o644)))
	v2img := imageOf(t, false, v1.Config{Cmd: []string{"v2"}}, layerOf(t, types.DockerLayer, fileEnt("version", "2", 0o644)))
	load := func(tags map[string]v1.Image) []*Image {
		t.Helper()
		out, err := s.Load(ctx, bytes.NewReader(dockerArchive(t, tags)))
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		return out
	}

	first := load(map[string]v1.Image{"app:stable": v1img})
	layersBefore := layerDirs(t, s)
	again := load(map[string]v1.Image{"app:stable": v1img, "app:old": v1img})
	if again[0].Digest != first[0].Digest || !slices.Equal(layerDirs(t, s), layersBefore) {
		t.Errorf("re-load changed content: %+v, layers %q -> %q", again[0], layersBefore, layerDirs(t, s))
	}
	if want := []string{"docker.io/library/app:old", "docker.io/library/app:stable"}; !slices.Equal(again[0].Refs, want) {
		t.Errorf("re-load refs = %q, want %q", again[0].Refs, want)
	}

	load(map[string]v1.Image{"app:stable": v2img})
	got, err := s.Get("app:stable")
	if err != nil || got.Digest != digestOfImage(t, v2img) {
		t.Fatalf("Get(app:stable) = %v, %v; want the new image", got, err)
	}
	old, err := s.Get(first[0].Digest)
	if err != nil {
		t.Fatalf("old image gone after its ref moved: %v", err)
	}
	if !slices.Equal(old.Refs, []string{"docker.io/library/app:old"}) {
		t.Errorf("old image refs = %q, want only app:old", old.Refs)
	}
	if list, _ := s.List(); len(list) != 2 {
		t.Errorf("List() has %d images, want 2", len(list))
	}
}

func TestCorruptContentRefused(t *testing.T) {
	img := imageOf(t, true, v1.Config{}, layerOf(t, types.OCILayer, fileEnt("data", "payload", 0o644)))
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	manifestDigest, _ := img.Digest()
	tests := []struct {
		name string
		blob v1.Hash
	}{
		{name: "layer", blob: m.Layers[0].Digest},
		{name: "config", blob: m.Config.Digest},
		{name: "manifest", blob: manifestDigest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			dir := ociLayoutDir(t, annotated{img, map[string]string{annotationRefName: "docker.io/x/corrupt:latest"}})
			p := filepath.Join(dir, "blobs", "sha256", tt.blob.Hex)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0xff
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = s.Load(context.Background(), bytes.NewReader(tarDir(t, dir)))
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load of archive with corrupt %s = %v, want ErrCorrupt", tt.name, err)
			}
			if _, err := s.Get("x/corrupt"); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get after refused load = %v, want ErrNotFound", err)
			}
			if _, err := os.Stat(s.blobPath(tt.blob)); err == nil {
				t.Errorf("corrupt blob stored under %s", tt.blob)
			}
			if dirs := layerDirs(t, s); len(dirs) != 0 {
				t.Errorf("layer dirs after refused load: %q", dirs)
			}
		})
	}
}

func TestLoadRefusesNonArchives(t *testing.T) {
	tests := []struct {
		name  string
		input []byte
	}{
		{name: "empty", input: nil},
		{name: "not a tar", input: []byte("hello, this is not an archive at all, just text that goes on for a while........................................................................................................................................................................................................................................................................................................................................................................................................................................................")},
		{name: "tar without manifests", input: tarOf(t, fileEnt("README", "hi", 0o644))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			if _, err := s.Load(context.Background(), bytes.NewReader(tt.input)); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Load = %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestConcurrentLoadsShareLayers(t *testing.T) {
	s := newStore(t)
	shared := layerOf(t, types.DockerLayer, fileEnt("shared", "s", 0o644))
	const n = 4
	archives := make([][]byte, n)
	for i := range archives {
		img := imageOf(t, false, v1.Config{}, shared, layerOf(t, types.DockerLayer, fileEnt("own", string(rune('a'+i)), 0o644)))
		archives[i] = dockerArchive(t, map[string]v1.Image{"c:" + string(rune('a'+i)): img})
	}
	errs := make(chan error, n)
	for _, a := range archives {
		go func() {
			_, err := s.Load(context.Background(), bytes.NewReader(a))
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("concurrent Load: %v", err)
		}
	}
	if dirs := layerDirs(t, s); len(dirs) != n+1 {
		t.Errorf("layer dirs = %q, want %d (shared once)", dirs, n+1)
	}
	if list, _ := s.List(); len(list) != n {
		t.Errorf("List() has %d images, want %d", len(list), n)
	}
}

// TestLoadClassicDockerSave loads an archive laid out as `docker save`
// writes it: uncompressed layer.tar files in per-layer directories and a
// config named by its hex digest.
func TestLoadClassicDockerSave(t *testing.T) {
	layerTar := tarOf(t, dirEnt("etc/", 0o755), fileEnt("etc/motd", "classic\n", 0o644))
	diffID := sha256Of(layerTar)
	cfg, err := json.Marshal(v1.ConfigFile{
		Architecture: "amd64",
		OS:           "linux",
		Config:       v1.Config{Cmd: []string{"cat", "/etc/motd"}},
		RootFS:       v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{diffID}},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgName := sha256Of(cfg).Hex + ".json"
	manifest := `[{"Config":"` + cfgName + `","RepoTags":["classic:1.0"],"Layers":["abc123/layer.tar"]}]`
	archive := tarOf(t,
		dirEnt("abc123/", 0o755),
		fileEnt("abc123/VERSION", "1.0", 0o644),
		fileEnt("abc123/layer.tar", string(layerTar), 0o644),
		fileEnt(cfgName, string(cfg), 0o644),
		fileEnt("manifest.json", manifest, 0o644),
		fileEnt("repositories", `{"classic":{"1.0":"abc123"}}`, 0o644),
	)
	s := newStore(t)
	imgs, err := s.Load(context.Background(), bytes.NewReader(archive))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(imgs) != 1 || !slices.Equal(imgs[0].Refs, []string{"docker.io/library/classic:1.0"}) {
		t.Fatalf("Load = %+v, want classic:1.0", imgs)
	}
	if b, err := os.ReadFile(filepath.Join(imgs[0].Layers[0], "etc/motd")); err != nil || string(b) != "classic\n" {
		t.Errorf("etc/motd = %q, %v", b, err)
	}
	if !slices.Equal(imgs[0].Config.Cmd, []string{"cat", "/etc/motd"}) {
		t.Errorf("Cmd = %q", imgs[0].Config.Cmd)
	}
}
