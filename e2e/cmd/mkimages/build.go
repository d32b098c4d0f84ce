package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// defaultBusybox is where Debian's busybox-static installs its binary.
	defaultBusybox = "/bin/busybox"
	// defaultTestappPkg is built with `go build`, which resolves it from
	// anywhere inside the module.
	defaultTestappPkg = "github.com/shoal-project/shoal/e2e/testapp"
	// defaultIperf3 is where Debian's iperf3 installs its binary.
	defaultIperf3 = "/usr/bin/iperf3"

	testappRef = "shoal/testapp:latest"
	busyboxRef = "docker.io/shoal/busybox:latest"
	iperf3Ref  = "shoal/iperf3:latest"

	testappFile = "testapp.tar"
	busyboxFile = "busybox.oci.tar"
	iperf3File  = "iperf3.tar"

	// iperf3Path is where the iperf3 image holds the binary (on PATH).
	iperf3Path = "usr/bin/iperf3"

	// annotationRefName names an image in an OCI layout's index.json.
	annotationRefName = "org.opencontainers.image.ref.name"

	// pathEnv is the usual Linux PATH; every busybox applet is in /bin.
	pathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// epoch is the timestamp of every file, layer and image config: fixed so
// rebuilding gives the same digests.
var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

type options struct {
	out     string    // output directory
	busybox string    // static busybox binary
	testapp string    // Go package of the test app
	iperf3  string    // iperf3 binary, dynamically linked against the host's libraries
	log     io.Writer // progress lines; nil discards
}

// build writes the image archives into o.out.
func build(ctx context.Context, o options) error {
	if o.log == nil {
		o.log = io.Discard
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return fmt.Errorf("create output dir: %w", err)
	}
	bb, err := os.ReadFile(o.busybox)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is missing: install busybox-static: make deps", o.busybox)
	}
	if err != nil {
		return fmt.Errorf("read busybox: %w", err)
	}
	if err := checkStatic(o.busybox); err != nil {
		return fmt.Errorf("%s: %w: install busybox-static: make deps", o.busybox, err)
	}
	// iperf3 is checked before the slow steps, so that a missing one fails
	// at once.
	if _, err := os.Stat(o.iperf3); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s is missing: install iperf3: make deps", o.iperf3)
	}
	perfEntries, err := iperf3Entries(o.iperf3)
	if err != nil {
		return fmt.Errorf("iperf3 image: %w", err)
	}
	perfTar, err := tarOf(perfEntries)
	if err != nil {
		return fmt.Errorf("iperf3 layer: %w", err)
	}
	applets, err := busyboxApplets(ctx, o.busybox)
	if err != nil {
		return err
	}
	bbTar, err := tarOf(busyboxEntries(bb, applets))
	if err != nil {
		return fmt.Errorf("busybox layer: %w", err)
	}

	bbLayer := layerSpec{bbTar, fmt.Sprintf("busybox with %d applets in /bin", len(applets))}

	tmp, err := os.MkdirTemp(o.out, ".mkimages-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	app, err := buildTestapp(ctx, o.testapp, tmp)
	if err != nil {
		return err
	}
	appTar, err := tarOf(testappEntries(app))
	if err != nil {
		return fmt.Errorf("testapp layer: %w", err)
	}

	testapp, err := newImage(false, v1.Config{
		Entrypoint:   []string{"/usr/local/bin/testapp"},
		Env:          []string{pathEnv},
		ExposedPorts: map[string]struct{}{"8080/tcp": {}},
		StopSignal:   "SIGTERM",
		Labels:       map[string]string{"org.opencontainers.image.title": "shoal testapp"},
	}, bbLayer, layerSpec{appTar, "testapp at /usr/local/bin/testapp"})
	if err != nil {
		return fmt.Errorf("testapp image: %w", err)
	}
	if err := writeDockerArchive(filepath.Join(o.out, testappFile), testappRef, testapp); err != nil {
		return err
	}
	report(o.log, filepath.Join(o.out, testappFile), testappRef, testapp)

	busybox, err := newImage(true, v1.Config{
		Cmd: []string{"sh"},
		Env: []string{pathEnv},
	}, bbLayer)
	if err != nil {
		return fmt.Errorf("busybox image: %w", err)
	}
	if err := writeOCIArchive(filepath.Join(o.out, busyboxFile), busyboxRef, busybox, tmp); err != nil {
		return err
	}
	report(o.log, filepath.Join(o.out, busyboxFile), busyboxRef, busybox)

	iperf3, err := newImage(false, v1.Config{
		Cmd:          []string{"iperf3", "-s"},
		Env:          []string{pathEnv},
		ExposedPorts: map[string]struct{}{"5201/tcp": {}},
		Labels:       map[string]string{"org.opencontainers.image.title": "shoal iperf3"},
	}, bbLayer, layerSpec{perfTar, fmt.Sprintf("the host's iperf3 at /%s with its %d runtime files", iperf3Path, len(perfEntries)-1)})
	if err != nil {
		return fmt.Errorf("iperf3 image: %w", err)
	}
	if err := writeDockerArchive(filepath.Join(o.out, iperf3File), iperf3Ref, iperf3); err != nil {
		return err
	}
	report(o.log, filepath.Join(o.out, iperf3File), iperf3Ref, iperf3)
	return nil
}

func report(w io.Writer, file, ref string, img v1.Image) {
	d, err := img.Digest()
	if err != nil {
		fmt.Fprintf(w, "wrote %s (%s)\n", file, ref)
		return
	}
	fmt.Fprintf(w, "wrote %s (%s %s)\n", file, ref, d)
}

// checkStatic refuses a dynamically linked binary: the images hold no
// libc for it.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("not an ELF binary: %v", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked, need a static busybox")
		}
	}
	return nil
}

// busyboxApplets lists the binary's applets, sorted.
func busyboxApplets(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, bin, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", bin, err)
	}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.ContainsAny(a, "/.") {
			applets = append(applets, a)
		}
	}
	slices.Sort(applets)
	applets = slices.Compact(applets)
	if !slices.Contains(applets, "sh") {
		return nil, fmt.Errorf("%s has no sh applet", bin)
	}
	return applets, nil
}

// buildTestapp builds the test app statically into dir and returns the
// binary. -trimpath and an empty build id keep the bytes reproducible.
func buildTestapp(ctx context.Context, pkg, dir string) ([]byte, error) {
	bin := filepath.Join(dir, "testapp")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return os.ReadFile(bin)
}

// entry is one file of a layer; Body is a regular file's content.
type entry struct {
	hdr  tar.Header
	body []byte
}

func dir(name string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}}
}

func file(name string, mode int64, body []byte) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body))}, body: body}
}

func symlink(name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

const passwd = `root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
`

const group = `root:x:0:
nobody:x:65534:
`

func busyboxEntries(bb []byte, applets []string) []entry {
	es := []entry{
		dir("bin", 0o755),
		file("bin/busybox", 0o755, bb),
		dir("etc", 0o755),
		file("etc/group", 0o644, []byte(group)),
		file("etc/passwd", 0o644, []byte(passwd)),
		dir("root", 0o700),
		dir("tmp", 0o1777),
	}
	for _, a := range applets {
		es = append(es, symlink("bin/"+a, "busybox"))
	}
	return es
}

func testappEntries(app []byte) []entry {
	return []entry{
		dir("usr", 0o755),
		dir("usr/local", 0o755),
		dir("usr/local/bin", 0o755),
		file("usr/local/bin/testapp", 0o755, app),
	}
}

// iperf3Entries is the iperf3 image's own layer: the binary at iperf3Path,
// its ELF interpreter and the shared objects it loads, each where the
// interpreter looks for it (see runtimeFiles), and their parent
// directories. Libraries are copied as regular files under the name the
// loader asks for, whatever symlinks lead to them on the host.
func iperf3Entries(bin string) ([]entry, error) {
	body, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	dirs, err := libSearchPath(bin)
	if err != nil {
		return nil, err
	}
	interp, libs, err := runtimeFiles(bin, dirs)
	if err != nil {
		return nil, err
	}
	es := []entry{file(iperf3Path, 0o755, body)}
	for _, p := range append([]string{interp}, libs...) {
		if p == "" {
			continue // a static iperf3
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		mode := int64(0o644)
		if p == interp {
			mode = 0o755 // the kernel execs it
		}
		es = append(es, file(strings.TrimPrefix(p, "/"), mode, b))
	}
	return withParents(es), nil
}

// withParents adds a directory entry (mode 0755) for every parent of an
// entry that has none.
func withParents(es []entry) []entry {
	have := map[string]bool{}
	for _, e := range es {
		have[strings.TrimSuffix(e.hdr.Name, "/")] = true
	}
	out := slices.Clone(es)
	for _, e := range es {
		for d := path.Dir(strings.TrimSuffix(e.hdr.Name, "/")); d != "." && !have[d]; d = path.Dir(d) {
			have[d] = true
			out = append(out, dir(d, 0o755))
		}
	}
	return out
}

// tarOf renders entries, sorted by name, owned by root, stamped epoch.
func tarOf(entries []entry) ([]byte, error) {
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.hdr.Name, b.hdr.Name) })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		h.ModTime, h.Uid, h.Gid, h.Uname, h.Gname = epoch, 0, 0, "root", "root"
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("%s: %w", h.Name, err)
		}
		if _, err := tw.Write(e.body); err != nil {
			return nil, fmt.Errorf("%s: %w", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// layerSpec is an uncompressed layer and the history line describing it.
type layerSpec struct {
	tar       []byte
	createdBy string
}

// newImage assembles an image for linux/GOARCH in Docker or OCI media
// types. Layers are gzip-compressed by go-containerregistry, which is
// deterministic for the same input.
func newImage(oci bool, cfg v1.Config, layers ...layerSpec) (v1.Image, error) {
	base, layerType := empty.Image, types.DockerLayer
	if oci {
		base = mutate.MediaType(base, types.OCIManifestSchema1)
		base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
		layerType = types.OCILayer
	}
	img, err := mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      v1.Time{Time: epoch},
		Config:       cfg,
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	for _, ls := range layers {
		b := ls.tar
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}, tarball.WithMediaType(layerType), tarball.WithCompressedCaching)
		if err != nil {
			return nil, err
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:   l,
			History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "mkimages: " + ls.createdBy},
		})
		if err != nil {
			return nil, err
		}
	}
	return img, nil
}

// writeDockerArchive writes a docker-save tarball atomically: the file
// appears only complete.
func writeDockerArchive(path, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return writeAtomic(path, func(w io.Writer) error { return tarball.Write(tag, img, w) })
}

// writeOCIArchive writes an OCI image layout holding img, annotated with
// ref, as a tar, using scratch (a directory) for the layout itself.
func writeOCIArchive(path, ref string, img v1.Image, scratch string) error {
	dir := filepath.Join(scratch, "oci-layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{annotationRefName: ref})); err != nil {
		return fmt.Errorf("oci layout: %w", err)
	}
	return writeAtomic(path, func(w io.Writer) error { return tarDir(w, dir) })
}

// tarDir writes root's tree as a tar with sorted entries and normalised
// metadata.
func tarDir(w io.Writer, root string) error {
	var entries []entry
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			entries = append(entries, dir(rel, 0o755))
			return nil
		}
		if !d.Type().IsRegular() {
			return fmt.Errorf("%s: unexpected file type in OCI layout", p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		entries = append(entries, file(rel, 0o644, b))
		return nil
	})
	if err != nil {
		return err
	}
	b, err := tarOf(entries)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// writeAtomic writes path through a temporary file renamed into place.
func writeAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // no-op once renamed
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
