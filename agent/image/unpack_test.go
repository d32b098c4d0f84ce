package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sys/unix"
)

// loadLayers loads one image made of the given layers and returns it.
func loadLayers(t *testing.T, s *Store, layers ...[]entry) (*Image, error) {
	t.Helper()
	var ls []v1.Layer
	for _, es := range layers {
		ls = append(ls, layerOf(t, types.DockerLayer, es...))
	}
	img := imageOf(t, false, v1.Config{}, ls...)
	out, err := s.Load(context.Background(), bytes.NewReader(dockerArchive(t, map[string]v1.Image{"unpack:test": img})))
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

func TestUnpackPreservesMetadata(t *testing.T) {
	s := newStore(t)
	owned := fileEnt("srv/owned", "mine", 0o640)
	owned.Uid, owned.Gid = 1234, 5678
	withXattr := fileEnt("srv/xattr", "x", 0o644)
	withXattr.PAXRecords = map[string]string{"SCHILY.xattr.user.shoal": "yes"}
	img, err := loadLayers(t, s, []entry{
		dirEnt("./", 0o755),
		dirEnt("srv/", 0o750),
		dirEnt("srv/ro/", 0o555),
		fileEnt("srv/ro/inside", "in a read-only dir", 0o444),
		fileEnt("srv/suid", "setuid", 0o4755),
		dirEnt("tmp/", 0o1777),
		owned,
		withXattr,
		symlinkEnt("srv/link", "suid"),
		symlinkEnt("srv/abs", "/etc/passwd"),
		hardlinkEnt("srv/hard", "srv/suid"),
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	l := img.Layers[0]
	// Unprivileged, the read-only directory would block TempDir's cleanup.
	t.Cleanup(func() { os.Chmod(filepath.Join(l, "srv/ro"), 0o755) })
	modes := []struct {
		path string
		want os.FileMode
	}{
		{"srv", os.ModeDir | 0o750},
		{"srv/ro", os.ModeDir | 0o555},
		{"srv/ro/inside", 0o444},
		{"srv/suid", os.ModeSetuid | 0o755},
		{"tmp", os.ModeDir | os.ModeSticky | 0o777},
		{"srv/owned", 0o640},
	}
	for _, m := range modes {
		fi, err := os.Lstat(filepath.Join(l, m.path))
		if err != nil {
			t.Errorf("%s: %v", m.path, err)
			continue
		}
		if fi.Mode() != m.want {
			t.Errorf("%s mode = %v, want %v", m.path, fi.Mode(), m.want)
		}
		if !fi.ModTime().Equal(testTime) {
			t.Errorf("%s mtime = %v, want %v", m.path, fi.ModTime(), testTime)
		}
	}
	for link, target := range map[string]string{"srv/link": "suid", "srv/abs": "/etc/passwd"} {
		if got, err := os.Readlink(filepath.Join(l, link)); err != nil || got != target {
			t.Errorf("readlink %s = %q, %v; want %q", link, got, err, target)
		}
	}
	var a, b unix.Stat_t
	if err := unix.Lstat(filepath.Join(l, "srv/hard"), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(l, "srv/suid"), &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino {
		t.Errorf("hardlink srv/hard has inode %d, srv/suid %d: want the same", a.Ino, b.Ino)
	}
	v := make([]byte, 16)
	n, err := unix.Getxattr(filepath.Join(l, "srv/xattr"), "user.shoal", v)
	if err != nil || string(v[:n]) != "yes" {
		t.Errorf("xattr user.shoal = %q, %v; want yes", v[:max(n, 0)], err)
	}
	if os.Geteuid() == 0 {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(l, "srv/owned"), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != 1234 || st.Gid != 5678 {
			t.Errorf("srv/owned owner = %d:%d, want 1234:5678", st.Uid, st.Gid)
		}
	}
}

func TestWhiteoutsBecomeOverlayMarkers(t *testing.T) {
	skipUnlessRoot(t)
	s := newStore(t)
	img, err := loadLayers(t, s,
		[]entry{
			fileEnt("gone", "deleted above", 0o644),
			fileEnt("kept", "still here", 0o644),
			dirEnt("d/", 0o755),
			fileEnt("d/old", "hidden by opaque dir", 0o644),
		},
		[]entry{
			fileEnt(".wh.gone", "", 0o644),
			dirEnt("d/", 0o755),
			fileEnt("d/.wh..wh..opq", "", 0o644),
			fileEnt("d/new", "fresh", 0o644),
			fileEnt(".wh..wh.plnk", "", 0o644), // aufs bookkeeping: ignored
		},
	)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	top := img.Layers[1]
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(top, "gone"), &st); err != nil {
		t.Fatalf("whiteout for gone: %v", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("gone: mode %o rdev %d, want a 0:0 character device", st.Mode, st.Rdev)
	}
	v := make([]byte, 8)
	n, err := unix.Getxattr(filepath.Join(top, "d"), opaqueXattr, v)
	if err != nil || string(v[:n]) != "y" {
		t.Errorf("d %s = %q, %v; want y", opaqueXattr, v[:max(n, 0)], err)
	}
	ents, _ := os.ReadDir(top)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), whiteoutPrefix) {
			t.Errorf("whiteout marker %s left in the layer", e.Name())
		}
	}

	// What a container sees: mount the layers with overlayfs.
	mnt := filepath.Join(t.TempDir(), "sht"+randHex(t)+"-merged")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := "lowerdir=" + img.Layers[1] + ":" + img.Layers[0]
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Skipf("cannot mount overlayfs here: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	for _, tt := range []struct {
		path   string
		exists bool
	}{
		{"gone", false}, {"kept", true}, {"d/old", false}, {"d/new", true},
	} {
		_, err := os.Lstat(filepath.Join(mnt, tt.path))
		if exists := err == nil; exists != tt.exists {
			t.Errorf("merged %s exists = %v, want %v (err %v)", tt.path, exists, tt.exists, err)
		}
	}
}

func TestWhiteoutsNeedRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("runs only unprivileged: checks whiteouts are refused, not silently dropped")
	}
	s := newStore(t)
	if _, err := loadLayers(t, s, []entry{fileEnt(".wh.gone", "", 0o644)}); !errors.Is(err, ErrUnsafeLayer) {
		t.Errorf("unprivileged whiteout = %v, want ErrUnsafeLayer", err)
	}
}

func TestPathTraversalRefused(t *testing.T) {
	outside := t.TempDir() // where an escape would land
	tag := "sht" + randHex(t)
	tests := []struct {
		name    string
		entries []entry
	}{
		{name: "dot dot", entries: []entry{fileEnt("../"+tag, "x", 0o644)}},
		{name: "dot dot inside path", entries: []entry{dirEnt("a/", 0o755), fileEnt("a/../../"+tag, "x", 0o644)}},
		{name: "absolute symlink parent", entries: []entry{symlinkEnt("link", outside), fileEnt("link/"+tag, "x", 0o644)}},
		{name: "relative symlink parent", entries: []entry{symlinkEnt("up", "../../../../../../../.."+outside), fileEnt("up/"+tag, "x", 0o644)}},
		{name: "symlink parent of a dir", entries: []entry{symlinkEnt("link", outside), dirEnt("link/"+tag+"/", 0o755)}},
		{name: "hardlink target outside", entries: []entry{hardlinkEnt("h", "../../../../etc/passwd")}},
		{name: "hardlink through symlink", entries: []entry{symlinkEnt("etc", "/etc"), hardlinkEnt("h", "etc/passwd")}},
		{name: "whiteout through symlink", entries: []entry{symlinkEnt("link", outside), fileEnt("link/.wh."+tag, "", 0o644)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			_, err := loadLayers(t, s, tt.entries)
			if !errors.Is(err, ErrUnsafeLayer) {
				t.Errorf("Load = %v, want ErrUnsafeLayer", err)
			}
			for _, p := range []string{filepath.Join(outside, tag), filepath.Join(s.dir, tag), filepath.Join(s.layerDir(), tag), filepath.Join(filepath.Dir(s.dir), tag)} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("entry escaped to %s", p)
				}
			}
			if dirs := layerDirs(t, s); len(dirs) != 0 {
				t.Errorf("refused layer left directories %q", dirs)
			}
			if _, err := s.Get("unpack:test"); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get after refused load = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestLaterEntriesReplaceEarlier(t *testing.T) {
	s := newStore(t)
	img, err := loadLayers(t, s, []entry{
		symlinkEnt("f", "/etc/passwd"),
		fileEnt("f", "replaced the symlink", 0o644), // must not write through it
		fileEnt("g", "first", 0o644),
		fileEnt("g", "second", 0o644),
		dirEnt("d/", 0o755),
		fileEnt("d/keep", "kept", 0o644),
		dirEnt("d/", 0o700), // a repeated dir keeps its contents
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	l := img.Layers[0]
	for p, want := range map[string]string{"f": "replaced the symlink", "g": "second", "d/keep": "kept"} {
		if b, err := os.ReadFile(filepath.Join(l, p)); err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", p, b, err, want)
		}
	}
	if fi, err := os.Lstat(filepath.Join(l, "f")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("f = %v, %v; want a regular file", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(l, "d")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("d = %v, %v; want the last entry's mode 0700", fi, err)
	}
}

func TestUnpackRejectsWrongDiffID(t *testing.T) {
	// A docker-save archive whose layer file does not match the diffID in
	// the config: the layer is refused after unpacking into a temp dir.
	s := newStore(t)
	good := imageOf(t, false, v1.Config{}, layerOf(t, types.DockerLayer, fileEnt("a", "good", 0o644)))
	archive := dockerArchive(t, map[string]v1.Image{"bad:latest": good})
	l, _ := good.Layers()
	lh, _ := l[0].Digest()
	tampered := rewriteTarEntry(t, archive, lh.Hex+".tar.gz", func(b []byte) []byte {
		return gzipBytes(t, tarOf(t, fileEnt("a", "evil", 0o644)))
	})
	if _, err := s.Load(context.Background(), bytes.NewReader(tampered)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Load = %v, want ErrCorrupt", err)
	}
	if dirs := layerDirs(t, s); len(dirs) != 0 {
		t.Errorf("refused layer left directories %q", dirs)
	}
}

// rewriteTarEntry returns archive with the named entry's content replaced.
func rewriteTarEntry(t *testing.T, archive []byte, name string, fn func([]byte) []byte) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(archive))
	var entries []entry
	found := false
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		var body bytes.Buffer
		body.ReadFrom(tr)
		b := body.Bytes()
		if hdr.Name == name {
			b, found = fn(b), true
		}
		entries = append(entries, entry{Header: *hdr, Body: string(b)})
	}
	if !found {
		t.Fatalf("no entry %s in archive", name)
	}
	return tarOf(t, entries...)
}

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func randHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
