package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// importImage stores img's manifest, config and layers, unpacks layers not
// yet present, and then records the image under refs (normalised) and
// aliases (index digests that resolved to it). Every piece of content is
// verified against the digest that names it. Importing an image already
// present only updates its references.
func (s *Store) importImage(ctx context.Context, img v1.Image, refs, aliases []string, progress func(string)) (*Image, error) {
	if progress == nil {
		progress = func(string) {}
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	digest := sha256Of(rawManifest)
	if want, err := img.Digest(); err != nil {
		return nil, fmt.Errorf("read manifest digest: %w", err)
	} else if want != digest {
		return nil, fmt.Errorf("manifest %s has digest %s: %w", want, digest, ErrCorrupt)
	}
	m, err := v1.ParseManifest(bytes.NewReader(rawManifest))
	if err != nil {
		return nil, fmt.Errorf("parse manifest %s: %v: %w", digest, err, ErrCorrupt)
	}
	mt := m.MediaType
	if mt == "" {
		// OCI manifests may omit mediaType; the descriptor that led here knows it.
		if mt, err = img.MediaType(); err != nil {
			return nil, fmt.Errorf("manifest %s media type: %w", digest, err)
		}
	}
	if !mt.IsImage() {
		return nil, fmt.Errorf("manifest %s: unsupported media type %q: %w", digest, mt, ErrCorrupt)
	}
	if err := checkHash(m.Config.Digest); err != nil {
		return nil, fmt.Errorf("manifest %s config: %w", digest, err)
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read config of %s: %w", digest, err)
	}
	if got := sha256Of(rawConfig); got != m.Config.Digest {
		return nil, fmt.Errorf("config %s has digest %s: %w", m.Config.Digest, got, ErrCorrupt)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(rawConfig))
	if err != nil {
		return nil, fmt.Errorf("parse config %s: %v: %w", m.Config.Digest, err, ErrCorrupt)
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("image %s: %d layers but %d diff ids: %w", digest, len(m.Layers), len(cfg.RootFS.DiffIDs), ErrCorrupt)
	}

	rec := &record{
		Config:    m.Config.Digest.String(),
		DiffIDs:   make([]string, len(m.Layers)),
		Aliases:   slices.Clone(aliases),
		Created:   cfg.Created.Time,
		RunConfig: runConfigOf(cfg),
	}
	for i, l := range m.Layers {
		if err := checkHash(l.Digest); err != nil {
			return nil, fmt.Errorf("image %s layer %d: %w", digest, i, err)
		}
		if err := checkHash(cfg.RootFS.DiffIDs[i]); err != nil {
			return nil, fmt.Errorf("image %s layer %d diff id: %w", digest, i, err)
		}
		if l.MediaType == types.DockerForeignLayer {
			return nil, fmt.Errorf("image %s layer %d: foreign layers (%s) are not supported: %w", digest, i, l.MediaType, ErrCorrupt)
		}
		rec.DiffIDs[i] = cfg.RootFS.DiffIDs[i].String()
		rec.Size += l.Size
	}

	if err := s.putBlobBytes(ctx, digest, rawManifest); err != nil {
		return nil, err
	}
	if err := s.putBlobBytes(ctx, m.Config.Digest, rawConfig); err != nil {
		return nil, err
	}
	var layers []v1.Layer // listed lazily: only when some blob is missing
	for i, desc := range m.Layers {
		diffID := cfg.RootFS.DiffIDs[i]
		release, exists, err := s.claimLayer(ctx, diffID.Hex)
		if err != nil {
			return nil, fmt.Errorf("image %s layer %s: %w", digest, diffID, err)
		}
		if exists {
			progress(fmt.Sprintf("layer %s: already present", short(desc.Digest)))
			continue
		}
		err = func() error {
			defer release()
			if !s.hasBlob(desc.Digest) {
				if layers == nil {
					ls, err := img.Layers()
					if err != nil {
						return fmt.Errorf("list layers: %w", err)
					}
					if len(ls) != len(m.Layers) {
						return fmt.Errorf("%d layers but manifest lists %d: %w", len(ls), len(m.Layers), ErrCorrupt)
					}
					layers = ls
				}
				progress(fmt.Sprintf("layer %s: fetching %s", short(desc.Digest), humanSize(desc.Size)))
				if err := s.fetchBlob(ctx, layers[i], desc); err != nil {
					return err
				}
			}
			progress(fmt.Sprintf("layer %s: unpacking", short(desc.Digest)))
			return s.unpackLayer(ctx, desc.Digest, diffID)
		}()
		if err != nil {
			return nil, fmt.Errorf("image %s layer %s: %w", digest, desc.Digest, err)
		}
	}
	out, err := s.commit(digest.String(), rec, refs)
	if err != nil {
		return nil, fmt.Errorf("record image %s: %w", digest, err)
	}
	return out, nil
}

// fetchBlob stores a layer's compressed blob, verified against desc.
func (s *Store) fetchBlob(ctx context.Context, l v1.Layer, desc v1.Descriptor) error {
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("open layer: %w", err)
	}
	defer rc.Close()
	return s.putBlob(ctx, desc.Digest, desc.Size, rc)
}

func runConfigOf(cfg *v1.ConfigFile) RunConfig {
	c := cfg.Config
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

// claimLayer makes the caller the only one unpacking the layer diffHex. It
// waits while another import unpacks it, then returns exists=true if the
// layer is now present; otherwise the caller must call release when done.
func (s *Store) claimLayer(ctx context.Context, diffHex string) (release func(), exists bool, err error) {
	for {
		s.layerMu.Lock()
		busy, ok := s.unpacking[diffHex]
		if !ok {
			if fi, err := os.Stat(s.layerPath(diffHex)); err == nil && fi.IsDir() {
				s.layerMu.Unlock()
				return nil, true, nil
			}
			done := make(chan struct{})
			s.unpacking[diffHex] = done
			s.layerMu.Unlock()
			return func() {
				s.layerMu.Lock()
				delete(s.unpacking, diffHex)
				s.layerMu.Unlock()
				close(done)
			}, false, nil
		}
		s.layerMu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// unpackLayer unpacks the stored blob into layers/<diffID hex>, verifying
// that the uncompressed stream hashes to diffID. It unpacks into a
// temporary directory, syncs it and renames it, so the layer's name appears
// only with complete, durable content.
func (s *Store) unpackLayer(ctx context.Context, blob, diffID v1.Hash) error {
	f, err := os.Open(s.blobPath(blob))
	if err != nil {
		return fmt.Errorf("unpack layer: %w", err)
	}
	defer f.Close()
	rd, err := decompress(f)
	if err != nil {
		return fmt.Errorf("unpack layer: %v: %w", err, ErrCorrupt)
	}
	defer rd.Close()
	hasher := sha256.New()
	tr := io.TeeReader(ctxReader{ctx, rd}, hasher)

	tmp, err := os.MkdirTemp(s.layerDir(), tmpPrefix+diffID.Hex[:12]+"-")
	if err != nil {
		return fmt.Errorf("unpack layer: %w", err)
	}
	renamed := false
	defer func() {
		if !renamed {
			os.RemoveAll(tmp)
		}
	}()
	// overlayfs shows a lower layer's root directory as the container's "/"
	// when the layer has no "./" entry of its own.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("unpack layer: %w", err)
	}
	x := &extractor{privileged: s.privileged, log: s.log.With("layer", diffID.String())}
	if err := x.extract(tr, tmp); err != nil {
		return fmt.Errorf("unpack layer: %w", err)
	}
	// The tar's end-of-archive padding is part of the diffID.
	if _, err := io.Copy(io.Discard, tr); err != nil {
		return fmt.Errorf("unpack layer: %v: %w", err, ErrCorrupt)
	}
	if got := hex.EncodeToString(hasher.Sum(nil)); got != diffID.Hex {
		return fmt.Errorf("unpack layer: uncompressed content has digest sha256:%s, config says %s: %w", got, diffID, ErrCorrupt)
	}
	if err := syncFS(tmp); err != nil {
		return fmt.Errorf("unpack layer: %w", err)
	}
	final := s.layerPath(diffID.Hex)
	if err := os.Rename(tmp, final); err != nil {
		if fi, statErr := os.Stat(final); statErr == nil && fi.IsDir() {
			return nil // another process unpacked it meanwhile; ours is removed
		}
		return fmt.Errorf("unpack layer: %w", err)
	}
	renamed = true
	return syncDir(s.layerDir())
}

// syncFS flushes the filesystem holding dir: cheaper than fsyncing every
// file of a layer, and enough to make the coming rename durable with it.
func syncFS(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}

// Magic numbers of the layer compressions the OCI spec allows.
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// decompress returns r's content decompressed, detecting gzip or zstd by
// their magic number; anything else is taken as an uncompressed tar.
func decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(4)
	if err != nil && err != io.EOF {
		return nil, err
	}
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		return gzip.NewReader(br)
	case bytes.HasPrefix(head, zstdMagic):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// short abbreviates a digest for progress lines.
func short(h v1.Hash) string {
	if len(h.Hex) < 12 {
		return h.String()
	}
	return h.Algorithm + ":" + h.Hex[:12]
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
