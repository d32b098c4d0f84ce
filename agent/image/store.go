// Package image is the host's image store. It pulls images from OCI
// registries, loads docker-save and OCI-layout archives (for air-gapped
// clusters), keeps their blobs content-addressed on disk and unpacks every
// layer once into a directory that overlayfs can use as a lower layer.
//
// On-disk layout under Config.Dir:
//
//	blobs/sha256/<hex>    manifests, configs and compressed layers, each
//	                      verified against its digest before it gets its name
//	layers/<diffid-hex>/  unpacked layers; a layer directory has its final
//	                      name only once it is complete
//	index.json            image records and the references naming them
//	tmp/                  spool space for archives, emptied by Open
//
// Content is always written before the index refers to it, so a crash leaves
// at worst unreferenced blobs or layers, never an image with missing content.
// One Store owns a Dir: two processes must not open the same Dir at once.
package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Package errors, checked with errors.Is.
var (
	// ErrNotFound means no local image is named by the reference.
	ErrNotFound = errors.New("image not found")
	// ErrInvalidReference means a reference is malformed.
	ErrInvalidReference = errors.New("invalid image reference")
	// ErrCorrupt means content does not match the digest naming it, or an
	// archive or manifest is malformed.
	ErrCorrupt = errors.New("corrupt image content")
	// ErrUnsafeLayer means a layer tries to write outside its directory
	// (".." entries, symlinked parents leading out) or holds something the
	// store refuses to create.
	ErrUnsafeLayer = errors.New("unsafe layer content")
)

// indexVersion is the format of index.json; bump it when the format changes
// incompatibly.
const indexVersion = 1

// dirPerm keeps the store private to root: layers hold other users' files
// with their original ownership and setuid bits.
const dirPerm = 0o700

// tmpPrefix names every in-progress file or directory; Open removes them.
// Digest hex never starts with '.', so it cannot collide with content.
const tmpPrefix = ".tmp-"

// Config configures a Store.
type Config struct {
	Dir                string   // <data-dir>/images; created 0700
	InsecureRegistries []string // "host:port" registries reached over plain HTTP (name.Insecure)
	Logger             *slog.Logger
}

// Image describes a local image.
type Image struct {
	Refs    []string  // normalised references naming it, e.g. "docker.io/library/busybox:latest"
	Digest  string    // manifest digest "sha256:..."
	Config  RunConfig // from the image config
	Layers  []string  // absolute paths of unpacked layer dirs, LOWEST FIRST (for overlayfs lowerdir, the caller reverses)
	Size    int64     // compressed size of layers
	Created time.Time
}

// RunConfig is the part of an image config that says how to run it.
type RunConfig struct {
	Env, Entrypoint, Cmd         []string
	WorkingDir, User, StopSignal string
	Labels                       map[string]string
}

// Store is the host's image store. It is safe for concurrent use.
type Store struct {
	dir        string // absolute
	insecure   map[string]bool
	log        *slog.Logger
	privileged bool // euid 0: may chown, mknod whiteouts, set trusted xattrs

	layerMu   sync.Mutex               // guards following
	unpacking map[string]chan struct{} // diffID hex -> closed when its unpack ends

	mu  sync.Mutex // guards following; never held together with layerMu
	idx *index
}

// index is the content of index.json. It is replaced, never mutated, so a
// reader holding the old pointer sees a consistent snapshot.
type index struct {
	Version int                `json:"version"`
	Images  map[string]*record `json:"images"` // manifest digest -> record
	Refs    map[string]string  `json:"refs"`   // normalised reference -> manifest digest
}

// record is what the index keeps of one image.
type record struct {
	Config    string    `json:"config"`            // config blob digest
	DiffIDs   []string  `json:"diffIDs"`           // lowest layer first
	Aliases   []string  `json:"aliases,omitempty"` // index digests that resolved to this image
	Size      int64     `json:"size"`
	Created   time.Time `json:"created"`
	RunConfig RunConfig `json:"runConfig"`
}

// Open opens (creating if needed) the store in cfg.Dir and removes what an
// interrupted earlier process left half-written.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("open image store: no directory configured")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("open image store %s: %w", cfg.Dir, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		dir:        dir,
		insecure:   make(map[string]bool),
		log:        log,
		privileged: os.Geteuid() == 0,
		unpacking:  make(map[string]chan struct{}),
	}
	for _, r := range cfg.InsecureRegistries {
		s.insecure[normaliseRegistry(r)] = true
	}
	for _, d := range []string{dir, s.blobDir(), s.layerDir(), s.tmpDir()} {
		if err := os.MkdirAll(d, dirPerm); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	}
	if err := s.removeLeftovers(); err != nil {
		return nil, fmt.Errorf("open image store %s: %w", dir, err)
	}
	idx, err := readIndex(s.indexPath())
	if err != nil {
		return nil, fmt.Errorf("open image store %s: %w", dir, err)
	}
	s.idx = idx
	return s, nil
}

func (s *Store) blobDir() string   { return filepath.Join(s.dir, "blobs", "sha256") }
func (s *Store) layerDir() string  { return filepath.Join(s.dir, "layers") }
func (s *Store) tmpDir() string    { return filepath.Join(s.dir, "tmp") }
func (s *Store) indexPath() string { return filepath.Join(s.dir, "index.json") }

// layerPath is where the layer with the given diffID hex is unpacked.
func (s *Store) layerPath(diffHex string) string { return filepath.Join(s.layerDir(), diffHex) }

// removeLeftovers deletes temporary files of an interrupted process.
func (s *Store) removeLeftovers() error {
	ents, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(s.tmpDir(), e.Name())); err != nil {
			return err
		}
	}
	for _, d := range []string{s.blobDir(), s.layerDir(), s.dir} {
		ents, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), tmpPrefix) {
				if err := os.RemoveAll(filepath.Join(d, e.Name())); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func readIndex(path string) (*index, error) {
	idx := &index{Version: indexVersion, Images: map[string]*record{}, Refs: map[string]string{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return idx, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	if err := json.Unmarshal(b, idx); err != nil {
		return nil, fmt.Errorf("read index %s: %w", path, err)
	}
	if idx.Version != indexVersion {
		return nil, fmt.Errorf("read index %s: unsupported version %d", path, idx.Version)
	}
	if idx.Images == nil {
		idx.Images = map[string]*record{}
	}
	if idx.Refs == nil {
		idx.Refs = map[string]string{}
	}
	return idx, nil
}

// commit records the image and points refs at it, durably. The image's
// content must already be in place.
func (s *Store) commit(digest string, rec *record, refs []string) (*Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Records are never mutated once indexed, so a shallow copy suffices.
	next := &index{Version: indexVersion, Images: maps.Clone(s.idx.Images), Refs: maps.Clone(s.idx.Refs)}
	if old, ok := next.Images[digest]; ok {
		// Keep aliases learnt from earlier pulls of the same image.
		merged := *rec
		merged.Aliases = mergeSorted(old.Aliases, rec.Aliases)
		rec = &merged
	}
	next.Images[digest] = rec
	for _, r := range refs {
		if prev, ok := next.Refs[r]; ok && prev != digest {
			s.log.Info("image reference moved", "ref", r, "from", prev, "to", digest)
		}
		next.Refs[r] = digest
	}
	if err := writeIndex(s.indexPath(), next); err != nil {
		return nil, err
	}
	s.idx = next
	return s.imageLocked(digest), nil
}

func mergeSorted(a, b []string) []string {
	out := slices.Concat(a, b)
	slices.Sort(out)
	return slices.Compact(out)
}

// writeIndex replaces the index file atomically and durably.
func writeIndex(path string, idx *index) error {
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return fmt.Errorf("encode index: %w", err)
	}
	return writeFileAtomic(path, b)
}

// writeFileAtomic writes b to a temporary file, fsyncs it, renames it over
// path and fsyncs the directory, so path holds either the old or the new
// content after a crash.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, tmpPrefix+filepath.Base(path)+"-")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op once renamed
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// imageLocked builds the Image for a recorded digest. s.mu must be held.
func (s *Store) imageLocked(digest string) *Image {
	rec, ok := s.idx.Images[digest]
	if !ok {
		return nil
	}
	img := &Image{
		Digest:  digest,
		Config:  rec.RunConfig.clone(),
		Layers:  make([]string, len(rec.DiffIDs)),
		Size:    rec.Size,
		Created: rec.Created,
	}
	for i, d := range rec.DiffIDs {
		img.Layers[i] = s.layerPath(strings.TrimPrefix(d, "sha256:"))
	}
	for r, d := range s.idx.Refs {
		if d == digest {
			img.Refs = append(img.Refs, r)
		}
	}
	slices.Sort(img.Refs)
	return img
}

func (c RunConfig) clone() RunConfig {
	return RunConfig{
		Env:        slices.Clone(c.Env),
		Entrypoint: slices.Clone(c.Entrypoint),
		Cmd:        slices.Clone(c.Cmd),
		WorkingDir: c.WorkingDir,
		User:       c.User,
		StopSignal: c.StopSignal,
		Labels:     maps.Clone(c.Labels),
	}
}

// Get returns the local image named by ref (normalised: "busybox" ==
// "busybox:latest" == "docker.io/library/busybox:latest"; a
// "name@sha256:..." digest ref, or a bare "sha256:..." image digest, also
// works). It returns ErrNotFound when absent and ErrInvalidReference when
// ref is malformed.
func (s *Store) Get(ref string) (*Image, error) {
	if isDigest(ref) {
		return s.getDigest(ref)
	}
	r, err := s.parse(ref)
	if err != nil {
		return nil, fmt.Errorf("get image: %w", err)
	}
	if d, ok := digestOf(r); ok {
		return s.getDigest(d)
	}
	norm := normalise(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.idx.Refs[norm]
	if !ok {
		return nil, fmt.Errorf("get image %s: %w", norm, ErrNotFound)
	}
	img := s.imageLocked(d)
	if img == nil {
		return nil, fmt.Errorf("get image %s: index names missing image %s: %w", norm, d, ErrNotFound)
	}
	return img, nil
}

// getDigest finds an image by its manifest digest or by the digest of an
// index it was pulled through.
func (s *Store) getDigest(d string) (*Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if img := s.imageLocked(d); img != nil {
		return img, nil
	}
	for md, rec := range s.idx.Images {
		if slices.Contains(rec.Aliases, d) {
			return s.imageLocked(md), nil
		}
	}
	return nil, fmt.Errorf("get image %s: %w", d, ErrNotFound)
}

// List returns every local image, named ones sorted by their first
// reference, then unnamed ones by digest.
func (s *Store) List() ([]*Image, error) {
	s.mu.Lock()
	out := make([]*Image, 0, len(s.idx.Images))
	for d := range s.idx.Images {
		out = append(out, s.imageLocked(d))
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b *Image) int {
		switch {
		case len(a.Refs) > 0 && len(b.Refs) > 0:
			return strings.Compare(a.Refs[0], b.Refs[0])
		case len(a.Refs) > 0:
			return -1
		case len(b.Refs) > 0:
			return 1
		}
		return strings.Compare(a.Digest, b.Digest)
	})
	return out, nil
}

// ctxReader fails reads once ctx is done, so long copies stop promptly.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
