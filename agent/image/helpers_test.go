package image

import (
	"archive/tar"
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// testTime is the mtime of test layer entries: fixed, so layers built from
// the same entries have the same digest.
var testTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// entry is one tar entry of a test layer; Body is a regular file's content.
type entry struct {
	tar.Header
	Body string
}

func dirEnt(n string, mode int64) entry {
	return entry{Header: tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: mode, ModTime: testTime}}
}

func fileEnt(n, body string, mode int64) entry {
	return entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: mode, ModTime: testTime}, Body: body}
}

func symlinkEnt(n, target string) entry {
	return entry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: n, Linkname: target, Mode: 0o777, ModTime: testTime}}
}

func hardlinkEnt(n, target string) entry {
	return entry{Header: tar.Header{Typeflag: tar.TypeLink, Name: n, Linkname: target, ModTime: testTime}}
}

// tarOf renders entries as a tar stream.
func tarOf(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Header
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if h.Format == tar.FormatUnknown && len(h.PAXRecords) > 0 {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %s: %v", h.Name, err)
		}
		if _, err := io.WriteString(tw, e.Body); err != nil {
			t.Fatalf("tar body %s: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerOf builds a gzip layer of the given media type from entries.
func layerOf(t *testing.T, mt types.MediaType, entries ...entry) v1.Layer {
	t.Helper()
	b := tarOf(t, entries...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(mt))
	if err != nil {
		t.Fatalf("layer: %v", err)
	}
	return l
}

// imageOf builds an image for this host's platform from layers, in the
// Docker or OCI media types.
func imageOf(t *testing.T, oci bool, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	base := empty.Image
	if oci {
		base = mutate.MediaType(base, types.OCIManifestSchema1)
		base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	}
	img, err := mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      v1.Time{Time: testTime},
		Config:       cfg,
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOfImage(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// dockerArchive writes a docker-save tarball naming the images by tag.
func dockerArchive(t *testing.T, tagged map[string]v1.Image) []byte {
	t.Helper()
	refs := make(map[name.Reference]v1.Image, len(tagged))
	for tag, img := range tagged {
		r, err := name.ParseReference(tag)
		if err != nil {
			t.Fatal(err)
		}
		refs[r] = img
	}
	var buf bytes.Buffer
	if err := tarball.MultiRefWrite(refs, &buf); err != nil {
		t.Fatalf("docker archive: %v", err)
	}
	return buf.Bytes()
}

// annotated is an image with the annotations of its index.json entry.
type annotated struct {
	img v1.Image
	ann map[string]string
}

// ociLayoutDir writes an OCI image layout directory holding the images.
func ociLayoutDir(t *testing.T, imgs ...annotated) string {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range imgs {
		if err := p.AppendImage(a.img, layout.WithAnnotations(a.ann)); err != nil {
			t.Fatalf("layout append: %v", err)
		}
	}
	return dir
}

// tarDir packs a directory as a tar stream with sorted entries.
func tarDir(t *testing.T, dir string) []byte {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(paths)
	var entries []entry
	for _, p := range paths {
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.IsDir() {
			entries = append(entries, dirEnt(rel+"/", 0o755))
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, fileEnt(rel, string(b), 0o644))
	}
	return tarOf(t, entries...)
}

func ociArchive(t *testing.T, imgs ...annotated) []byte {
	t.Helper()
	return tarDir(t, ociLayoutDir(t, imgs...))
}

// newStore opens a store in a fresh directory.
func newStore(t *testing.T, insecure ...string) *Store {
	t.Helper()
	s, err := Open(Config{Dir: filepath.Join(t.TempDir(), "images"), InsecureRegistries: insecure})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	return s
}

// layerDirs lists the complete layer directories of a store.
func layerDirs(t *testing.T, s *Store) []string {
	t.Helper()
	ents, err := os.ReadDir(s.layerDir())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func skipUnlessRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: whiteouts are device nodes and trusted xattrs")
	}
}
