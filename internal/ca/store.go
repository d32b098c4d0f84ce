package ca

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names inside a Store's directory.
const (
	CACertFile   = "ca.crt"
	NodeCertFile = "node.crt"
	NodeKeyFile  = "node.key"
)

// stagedSuffix marks a key and certificate written by Save but not yet
// moved into place.
const stagedSuffix = ".next"

// credentialsFileMode keeps the key and certificates private to the daemon's
// user; the certificates are not secret, but one mode keeps it simple.
const credentialsFileMode = 0o600

// Store keeps a node's Credentials as three files in Dir. Each file is
// replaced atomically (write temp, fsync, rename, fsync dir). The key and
// certificate must also change together: Save first stages both as
// node.key.next and node.crt.next, then renames them into place, and Load
// finishes (or discards) a Save that a crash interrupted, so a renewal never
// leaves a key that does not match its certificate.
//
// A Store does no locking: one daemon owns its directory.
type Store struct {
	Dir string
}

// Load reads the credentials, first finishing a Save that a crash
// interrupted. It returns an error wrapping ErrNotFound when none of the
// files exist (a node that has not joined yet).
func (s Store) Load() (Credentials, error) {
	if err := s.recover(); err != nil {
		return Credentials{}, fmt.Errorf("load node credentials from %s: %w", s.Dir, err)
	}
	var c Credentials
	files := []struct {
		name string
		dst  *[]byte
	}{
		{CACertFile, &c.CACertPEM},
		{NodeCertFile, &c.CertPEM},
		{NodeKeyFile, &c.KeyPEM},
	}
	missing := 0
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(s.Dir, f.name))
		if errors.Is(err, fs.ErrNotExist) {
			missing++
			continue
		}
		if err != nil {
			return Credentials{}, fmt.Errorf("load node credentials: %w", err)
		}
		*f.dst = b
	}
	switch missing {
	case 0:
	case len(files):
		return Credentials{}, fmt.Errorf("load node credentials from %s: %w", s.Dir, ErrNotFound)
	default:
		return Credentials{}, fmt.Errorf("load node credentials from %s: %w: some files are missing", s.Dir, ErrInvalidCertificate)
	}
	if _, err := c.TLSCertificate(); err != nil {
		return Credentials{}, fmt.Errorf("load node credentials from %s: %w", s.Dir, err)
	}
	return c, nil
}

// Save writes c, creating Dir (0700) if needed.
func (s Store) Save(c Credentials) error {
	if len(c.CACertPEM) == 0 || len(c.CertPEM) == 0 || len(c.KeyPEM) == 0 {
		return errors.New("save node credentials: empty field")
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("save node credentials: %w", err)
	}
	if err := writeFileAtomic(s.path(CACertFile), c.CACertPEM); err != nil {
		return fmt.Errorf("save node credentials: %w", err)
	}
	// Stage the pair; once both staged files are durable, a crash at any
	// later point is finished by recover.
	if err := writeFileAtomic(s.path(NodeKeyFile+stagedSuffix), c.KeyPEM); err != nil {
		return fmt.Errorf("save node credentials: %w", err)
	}
	if err := writeFileAtomic(s.path(NodeCertFile+stagedSuffix), c.CertPEM); err != nil {
		return fmt.Errorf("save node credentials: %w", err)
	}
	if err := s.recover(); err != nil {
		return fmt.Errorf("save node credentials: %w", err)
	}
	return nil
}

func (s Store) path(name string) string { return filepath.Join(s.Dir, name) }

// recover moves a staged key and certificate into place, or removes them if
// they were never completely staged. Order matters: the certificate is
// staged last and moved last, so a staged certificate means the staged key
// is (or, if already moved, node.key is) its complete, durable partner.
func (s Store) recover() error {
	_, err := os.Stat(s.path(NodeCertFile + stagedSuffix))
	if errors.Is(err, fs.ErrNotExist) {
		// Save crashed before the certificate was staged: a leftover
		// staged key is an orphan.
		if err := os.Remove(s.path(NodeKeyFile + stagedSuffix)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove staged key: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat staged certificate: %w", err)
	}
	if err := os.Rename(s.path(NodeKeyFile+stagedSuffix), s.path(NodeKeyFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("install staged key: %w", err)
	}
	if err := os.Rename(s.path(NodeCertFile+stagedSuffix), s.path(NodeCertFile)); err != nil {
		return fmt.Errorf("install staged certificate: %w", err)
	}
	return syncDir(s.Dir)
}

// writeFileAtomic replaces path with data so that readers see either the
// old or the new content, even across a crash.
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(credentialsFileMode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: sync: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: close: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(dir)
}

// syncDir makes renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}
