package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Annotations naming an image in an OCI layout's index.json. containerd
// (and docker save since 25.0) put the full name in the first and only the
// tag in the second; other tools put a full name in the second.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// maxIndexDepth bounds nested indexes in an OCI layout (an index of
// platform indexes is the deepest seen in practice).
const maxIndexDepth = 4

// source is one image found in an archive, with the references naming it.
type source struct {
	img  v1.Image
	refs []string // normalised
}

// Load imports every image from an archive stream: a docker-save tarball
// (manifest.json with RepoTags) or an OCI image layout tar (index.json;
// refs from the "io.containerd.image.name" annotation, or from
// "org.opencontainers.image.ref.name" when it holds a full name rather than
// a bare tag). The format is detected by content; the stream may be
// gzip-compressed. It returns the images loaded, in archive order. On error,
// images imported before the failing one stay in the store.
func (s *Store) Load(ctx context.Context, r io.Reader) ([]*Image, error) {
	spool, err := s.spool(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("load archive: %w", err)
	}
	defer os.Remove(spool)

	hasDocker, hasOCI, err := archiveKind(spool)
	if err != nil {
		return nil, fmt.Errorf("load archive: %w", err)
	}
	var srcs []source
	switch {
	case hasDocker:
		// docker save since 25.0 writes both; manifest.json's RepoTags
		// always carry full names.
		srcs, err = dockerSources(spool)
	case hasOCI:
		dir, derr := s.extractLayout(ctx, spool)
		if derr != nil {
			return nil, fmt.Errorf("load archive: %w", derr)
		}
		defer os.RemoveAll(dir)
		srcs, err = layoutSources(dir)
	default:
		return nil, fmt.Errorf("load archive: neither manifest.json (docker save) nor index.json (OCI layout) found: %w", ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("load archive: %w", err)
	}

	var order []string
	seen := make(map[string]bool)
	for _, src := range srcs {
		img, err := s.importImage(ctx, src.img, src.refs, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("load archive: %w", err)
		}
		s.log.Info("image loaded", "digest", img.Digest, "refs", src.refs)
		if !seen[img.Digest] {
			seen[img.Digest] = true
			order = append(order, img.Digest)
		}
	}
	// Built after every import, so an image listed twice shows all its refs.
	out := make([]*Image, 0, len(order))
	for _, d := range order {
		img, err := s.getDigest(d)
		if err != nil {
			return nil, fmt.Errorf("load archive: %w", err)
		}
		out = append(out, img)
	}
	return out, nil
}

// spool copies the archive stream to a file in tmp/ (the docker-save reader
// needs to reopen it), decompressing a gzip-compressed stream.
func (s *Store) spool(ctx context.Context, r io.Reader) (string, error) {
	br := bufio.NewReader(r)
	head, err := br.Peek(len(gzipMagic))
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read archive: %w", err)
	}
	if len(head) == 0 {
		return "", fmt.Errorf("empty archive: %w", ErrCorrupt)
	}
	var src io.Reader = br
	if bytes.Equal(head, gzipMagic) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return "", fmt.Errorf("read archive: %v: %w", err, ErrCorrupt)
		}
		defer zr.Close()
		src = zr
	}
	f, err := os.CreateTemp(s.tmpDir(), "load-*.tar")
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(f, ctxReader{ctx, src}); err != nil {
		f.Close()
		os.Remove(f.Name())
		return "", fmt.Errorf("read archive: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// archiveKind scans the archive's entry names for the files that identify
// each format.
func archiveKind(file string) (docker, oci bool, err error) {
	f, err := os.Open(file)
	if err != nil {
		return false, false, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return docker, oci, nil
		}
		if err != nil {
			return false, false, fmt.Errorf("read archive: %v: %w", err, ErrCorrupt)
		}
		switch path.Clean(hdr.Name) {
		case "manifest.json":
			docker = true
		case "index.json":
			oci = true
		}
	}
}

// dockerSources lists the images of a docker-save archive.
func dockerSources(file string) ([]source, error) {
	opener := func() (io.ReadCloser, error) { return os.Open(file) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("read manifest.json: %v: %w", err, ErrCorrupt)
	}
	var srcs []source
	for i, d := range m {
		var refs []string
		for _, t := range d.RepoTags {
			n, err := ParseReference(t)
			if err != nil {
				return nil, fmt.Errorf("manifest.json image %d: %w", i, err)
			}
			refs = append(refs, n)
		}
		var tag *name.Tag
		switch {
		case len(d.RepoTags) > 0:
			t, err := name.NewTag(d.RepoTags[0])
			if err != nil {
				return nil, fmt.Errorf("manifest.json image %d: %w: %v", i, ErrInvalidReference, err)
			}
			tag = &t
		case len(m) > 1:
			// The docker-save reader can only pick an image out of several
			// by one of its tags.
			return nil, fmt.Errorf("manifest.json image %d has no RepoTags in a multi-image archive: unsupported", i)
		}
		img, err := tarball.Image(opener, tag)
		if err != nil {
			return nil, fmt.Errorf("manifest.json image %d: %v: %w", i, err, ErrCorrupt)
		}
		srcs = append(srcs, source{img: img, refs: refs})
	}
	return srcs, nil
}

// extractLayout unpacks an OCI layout tar into a directory in tmp/. Only
// directories and regular files are taken; the layout needs nothing else.
func (s *Store) extractLayout(ctx context.Context, file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	dir, err := os.MkdirTemp(s.tmpDir(), "oci-")
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(dir)
		}
	}()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", err
	}
	defer root.Close()
	tr := tar.NewReader(ctxReader{ctx, f})
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("read archive: %v: %w", err, ErrCorrupt)
		}
		n, err := cleanName(hdr.Name)
		if err != nil {
			return "", fmt.Errorf("archive entry %q: %w", hdr.Name, err)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = root.MkdirAll(n, 0o700)
		case tar.TypeReg:
			err = copyToRoot(root, n, tr)
		default:
			s.log.Debug("ignoring OCI layout entry", "name", hdr.Name, "type", string(hdr.Typeflag))
		}
		if err != nil {
			return "", fmt.Errorf("archive entry %q: %w", hdr.Name, unsafeIfEscape(err))
		}
	}
	ok = true
	return dir, nil
}

func copyToRoot(root *os.Root, n string, r io.Reader) error {
	if err := root.MkdirAll(path.Dir(n), 0o700); err != nil {
		return err
	}
	w, err := root.OpenFile(n, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// layoutSources lists the images of an OCI layout directory. An index
// entry pointing at a nested index (a multi-platform image) resolves to the
// image for this host's platform.
func layoutSources(dir string) ([]source, error) {
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("read index.json: %v: %w", err, ErrCorrupt)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read index.json: %v: %w", err, ErrCorrupt)
	}
	var srcs []source
	for _, desc := range im.Manifests {
		img, err := resolveImage(idx, desc, 0)
		if err != nil {
			return nil, fmt.Errorf("index.json entry %s: %w", desc.Digest, err)
		}
		refs, err := layoutRefs(desc.Annotations)
		if err != nil {
			return nil, fmt.Errorf("index.json entry %s: %w", desc.Digest, err)
		}
		srcs = append(srcs, source{img: img, refs: refs})
	}
	return srcs, nil
}

// hostPlatform is the platform images are chosen for out of an index.
func hostPlatform() v1.Platform {
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

func resolveImage(idx v1.ImageIndex, desc v1.Descriptor, depth int) (v1.Image, error) {
	switch {
	case desc.MediaType.IsImage():
		return idx.Image(desc.Digest)
	case !desc.MediaType.IsIndex():
		return nil, fmt.Errorf("unsupported media type %q: %w", desc.MediaType, ErrCorrupt)
	case depth >= maxIndexDepth:
		return nil, fmt.Errorf("indexes nested deeper than %d: %w", maxIndexDepth, ErrCorrupt)
	}
	child, err := idx.ImageIndex(desc.Digest)
	if err != nil {
		return nil, err
	}
	cm, err := child.IndexManifest()
	if err != nil {
		return nil, err
	}
	want := hostPlatform()
	for _, d := range cm.Manifests {
		if d.Platform != nil && d.Platform.Satisfies(want) {
			return resolveImage(child, d, depth+1)
		}
	}
	if len(cm.Manifests) == 1 && cm.Manifests[0].Platform == nil {
		return resolveImage(child, cm.Manifests[0], depth+1)
	}
	return nil, fmt.Errorf("no image for platform %s in index %s", want, desc.Digest)
}

// layoutRefs returns the normalised references an index.json entry's
// annotations give. A ref.name without '/' or ':' is a bare tag (as OCI
// allows) and names no repository, so it is ignored.
func layoutRefs(ann map[string]string) ([]string, error) {
	n := ann[annotationContainerdName]
	if n == "" {
		if rn := ann[annotationRefName]; strings.ContainsAny(rn, "/:@") {
			n = rn
		}
	}
	if n == "" {
		return nil, nil
	}
	norm, err := ParseReference(n)
	if err != nil {
		return nil, err
	}
	return []string{norm}, nil
}
