package ca

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestStoreSaveLoad(t *testing.T) {
	root := newTestRoot(t, "c")
	creds := issueTestNode(t, root, "n1", RoleWorker)
	s := Store{Dir: filepath.Join(t.TempDir(), "certs")}

	if _, err := s.Load(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load before Save: err = %v, want ErrNotFound", err)
	}
	if err := s.Save(creds); err != nil {
		t.Fatalf("Save: %v", err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !bytes.Equal(got.CACertPEM, creds.CACertPEM) || !bytes.Equal(got.CertPEM, creds.CertPEM) || !bytes.Equal(got.KeyPEM, creds.KeyPEM) {
		t.Fatal("loaded credentials differ from saved")
	}
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Fatalf("dir has %d entries, want 3 (no temp files left)", len(entries))
	}
	for _, name := range []string{CACertFile, NodeCertFile, NodeKeyFile} {
		fi, err := os.Stat(filepath.Join(s.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", name, fi.Mode().Perm())
		}
	}

	// Renewal replaces the files.
	renewed := issueTestNode(t, root, "n1", RoleWorker)
	if err := s.Save(renewed); err != nil {
		t.Fatalf("Save renewed: %v", err)
	}
	got, err = s.Load()
	if err != nil || !bytes.Equal(got.CertPEM, renewed.CertPEM) {
		t.Fatalf("Load after renewal: err=%v, same cert=%v", err, bytes.Equal(got.CertPEM, renewed.CertPEM))
	}
}

func TestStoreLoadBroken(t *testing.T) {
	root := newTestRoot(t, "c")
	a := issueTestNode(t, root, "n1", RoleWorker)
	b := issueTestNode(t, root, "n1", RoleWorker)
	tests := []struct {
		name  string
		write map[string][]byte
	}{
		{"key of another certificate", map[string][]byte{CACertFile: a.CACertPEM, NodeCertFile: a.CertPEM, NodeKeyFile: b.KeyPEM}},
		{"missing key", map[string][]byte{CACertFile: a.CACertPEM, NodeCertFile: a.CertPEM}},
		{"garbage CA", map[string][]byte{CACertFile: []byte("x"), NodeCertFile: a.CertPEM, NodeKeyFile: a.KeyPEM}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, data := range tt.write {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Store{Dir: dir}.Load()
			if err == nil || errors.Is(err, ErrNotFound) {
				t.Fatalf("Load err = %v, want a non-ErrNotFound error", err)
			}
		})
	}
}

func TestStoreRecoversInterruptedSave(t *testing.T) {
	root := newTestRoot(t, "c")
	old := issueTestNode(t, root, "n1", RoleWorker)
	next := issueTestNode(t, root, "n1", RoleWorker)
	// Each case leaves the directory as a crash at some point of
	// Save(next) would, on top of a completed Save(old).
	tests := []struct {
		name    string
		crash   func(dir string) error
		wantNew bool
	}{
		{"crash while staging key", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, NodeKeyFile+stagedSuffix), next.KeyPEM[:10], 0o600)
		}, false},
		{"crash after staging key", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, NodeKeyFile+stagedSuffix), next.KeyPEM, 0o600)
		}, false},
		{"crash after staging both", func(dir string) error {
			if err := os.WriteFile(filepath.Join(dir, NodeKeyFile+stagedSuffix), next.KeyPEM, 0o600); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, NodeCertFile+stagedSuffix), next.CertPEM, 0o600)
		}, true},
		{"crash after installing key", func(dir string) error {
			if err := os.WriteFile(filepath.Join(dir, NodeKeyFile), next.KeyPEM, 0o600); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, NodeCertFile+stagedSuffix), next.CertPEM, 0o600)
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Store{Dir: t.TempDir()}
			if err := s.Save(old); err != nil {
				t.Fatal(err)
			}
			if err := tt.crash(s.Dir); err != nil {
				t.Fatal(err)
			}
			got, err := s.Load()
			if err != nil {
				t.Fatalf("Load after crash: %v", err)
			}
			want := old
			if tt.wantNew {
				want = next
			}
			if !bytes.Equal(got.CertPEM, want.CertPEM) || !bytes.Equal(got.KeyPEM, want.KeyPEM) {
				t.Fatalf("loaded the %s credentials, want new=%v", map[bool]string{true: "new", false: "old"}[bytes.Equal(got.CertPEM, next.CertPEM)], tt.wantNew)
			}
			entries, err := os.ReadDir(s.Dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 3 {
				t.Fatalf("dir has %d entries after recovery, want 3", len(entries))
			}
		})
	}
}
