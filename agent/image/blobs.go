package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// checkHash refuses digests the store cannot name files by: only sha256,
// with exactly 64 lowercase hex digits (so the hex is safe as a file name).
func checkHash(h v1.Hash) error {
	if h.Algorithm != "sha256" || !digestRE.MatchString(h.String()) {
		return fmt.Errorf("unsupported digest %q: %w", h.String(), ErrCorrupt)
	}
	return nil
}

func (s *Store) blobPath(h v1.Hash) string { return filepath.Join(s.blobDir(), h.Hex) }

func (s *Store) hasBlob(h v1.Hash) bool {
	fi, err := os.Stat(s.blobPath(h))
	return err == nil && fi.Mode().IsRegular()
}

// putBlob stores r's content under h. The content is written to a temporary
// file and only renamed to its digest once its sha256 (and size, when size
// >= 0) match, so a blob file's name always proves its content. A blob
// already present is left alone: it was verified when written.
func (s *Store) putBlob(ctx context.Context, h v1.Hash, size int64, r io.Reader) error {
	if err := checkHash(h); err != nil {
		return err
	}
	if s.hasBlob(h) {
		return nil
	}
	f, err := os.CreateTemp(s.blobDir(), tmpPrefix+h.Hex[:12]+"-")
	if err != nil {
		return fmt.Errorf("store blob %s: %w", h, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op once renamed
	hasher := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, hasher), ctxReader{ctx, r})
	if err != nil {
		f.Close()
		return fmt.Errorf("store blob %s: %w", h, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("store blob %s: %w", h, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("store blob %s: %w", h, err)
	}
	if got := hex.EncodeToString(hasher.Sum(nil)); got != h.Hex {
		return fmt.Errorf("store blob %s: content has digest sha256:%s: %w", h, got, ErrCorrupt)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("store blob %s: %d bytes, descriptor says %d: %w", h, n, size, ErrCorrupt)
	}
	if err := os.Rename(tmp, s.blobPath(h)); err != nil {
		return fmt.Errorf("store blob %s: %w", h, err)
	}
	return syncDir(s.blobDir())
}

// putBlobBytes stores b under h (see putBlob).
func (s *Store) putBlobBytes(ctx context.Context, h v1.Hash, b []byte) error {
	return s.putBlob(ctx, h, int64(len(b)), bytes.NewReader(b))
}

// sha256Of returns the digest of b.
func sha256Of(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}
