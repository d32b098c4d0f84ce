package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// OCI whiteout markers (image-spec layer.md) and what overlayfs wants
// instead: a 0:0 character device for a deleted name, and an xattr on a
// directory whose lower contents are hidden.
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."               // aufs bookkeeping (.wh..wh.plnk etc.): ignored
	whiteoutOpaque = ".wh..wh..opq"           // the directory is opaque
	opaqueXattr    = "trusted.overlay.opaque" // set to "y" on opaque dirs
)

// paxXattrPrefix marks extended attributes in PAX records.
const paxXattrPrefix = "SCHILY.xattr."

// overlayXattrPrefix is refused from archives: redirect and metacopy
// attributes would let a layer point overlayfs at other files.
const overlayXattrPrefix = "trusted.overlay."

// extractor unpacks one layer tar into a directory. All path resolution
// goes through an os.Root, so no entry, and no symlink an entry's path
// crosses, can reach outside the directory.
type extractor struct {
	privileged bool // may chown, mknod, set trusted xattrs
	log        *slog.Logger

	root *os.Root
	dirs map[string]*tar.Header // directory metadata applied last
}

// extract unpacks the tar stream r into dir, which must exist and be empty.
func (x *extractor) extract(r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	x.root = root
	x.dirs = make(map[string]*tar.Header)
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %v: %w", err, ErrCorrupt)
		}
		if err := x.entry(hdr, tr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
	return x.finishDirs()
}

// cleanName turns a tar entry name into a path relative to the layer root
// ("." for the root itself), refusing names that climb out of it. A leading
// "/" is dropped, as tar does.
func cleanName(n string) (string, error) {
	if n == "" || strings.ContainsRune(n, 0) {
		return "", fmt.Errorf("invalid name: %w", ErrUnsafeLayer)
	}
	p := path.Clean(strings.TrimLeft(n, "/"))
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("path escapes the layer: %w", ErrUnsafeLayer)
	}
	return p, nil
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("layer root is not a directory: %w", ErrUnsafeLayer)
		}
		return x.dir(name, hdr)
	}
	parent, base := path.Dir(name), path.Base(name)
	if err := x.root.MkdirAll(parent, 0o755); err != nil {
		return unsafeIfEscape(fmt.Errorf("create parent: %w", err))
	}
	if strings.HasPrefix(base, whiteoutPrefix) {
		return x.whiteout(parent, base)
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return x.dir(name, hdr)
	case tar.TypeReg:
		return x.file(name, hdr, r)
	case tar.TypeSymlink:
		if _, err := x.clear(name, false); err != nil {
			return err
		}
		if err := x.root.Symlink(hdr.Linkname, name); err != nil {
			return unsafeIfEscape(err)
		}
		return x.meta(name, hdr, false)
	case tar.TypeLink:
		target, err := cleanName(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
		}
		if _, err := x.clear(name, false); err != nil {
			return err
		}
		return unsafeIfEscape(x.root.Link(target, name))
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return x.node(name, hdr)
	case tar.TypeXGlobalHeader:
		return nil
	default:
		x.log.Warn("skipping unsupported tar entry", "name", hdr.Name, "type", string(hdr.Typeflag))
		return nil
	}
}

// unsafeIfEscape marks os.Root's refusals (a path or symlink leading out
// of the root) as ErrUnsafeLayer. os.Root reports them as errors that are
// not system errnos, unlike every genuine I/O failure.
func unsafeIfEscape(err error) error {
	if err == nil {
		return nil
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return fmt.Errorf("%v: %w", err, ErrUnsafeLayer)
	}
	return err
}

// clear removes whatever name holds so a later tar entry can replace it,
// except a directory when keepDir (a directory entry repeated, or created
// earlier as a parent, keeps its contents).
func (x *extractor) clear(name string, keepDir bool) (kept bool, err error) {
	fi, err := x.root.Lstat(name)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, unsafeIfEscape(err)
	}
	if keepDir && fi.IsDir() {
		return true, nil
	}
	return false, x.root.RemoveAll(name)
}

func (x *extractor) dir(name string, hdr *tar.Header) error {
	if name != "." {
		kept, err := x.clear(name, true)
		if err != nil {
			return err
		}
		if !kept {
			// Owner-writable until finishDirs applies the real mode, so
			// entries inside can be created even when unprivileged.
			if err := x.root.Mkdir(name, 0o700); err != nil {
				return unsafeIfEscape(err)
			}
		}
	}
	if x.privileged {
		if err := x.root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	if err := x.xattrs(name, hdr); err != nil {
		return err
	}
	x.dirs[name] = hdr
	return nil
}

func (x *extractor) file(name string, hdr *tar.Header, r io.Reader) error {
	if _, err := x.clear(name, false); err != nil {
		return err
	}
	// O_EXCL: never write through a symlink that was at the name.
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return unsafeIfEscape(err)
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("write: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	// meta sets ownership before mode (chown clears setuid) and xattrs
	// after both (chown also clears security.capability).
	return x.meta(name, hdr, true)
}

func (x *extractor) node(name string, hdr *tar.Header) error {
	if _, err := x.clear(name, false); err != nil {
		return err
	}
	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeChar:
		mode |= unix.S_IFCHR
	case tar.TypeBlock:
		mode |= unix.S_IFBLK
	case tar.TypeFifo:
		mode |= unix.S_IFIFO
	}
	if !x.privileged && hdr.Typeflag != tar.TypeFifo {
		// Only root may create device nodes; unprivileged unpacking exists
		// for tests and tools, which can do without them.
		x.log.Warn("skipping device node: not root", "name", name)
		return nil
	}
	dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	if err := x.at(name, func(fd int, base string) error { return unix.Mknodat(fd, base, mode, int(dev)) }); err != nil {
		return fmt.Errorf("mknod: %w", err)
	}
	return x.meta(name, hdr, true)
}

// whiteout turns an OCI whiteout entry into its overlayfs form.
func (x *extractor) whiteout(parent, base string) error {
	switch {
	case base == whiteoutOpaque:
		if !x.privileged {
			return fmt.Errorf("opaque directory %q needs root (trusted xattr): %w", parent, ErrUnsafeLayer)
		}
		d, err := x.root.Open(parent)
		if err != nil {
			return unsafeIfEscape(err)
		}
		defer d.Close()
		if err := unix.Fsetxattr(int(d.Fd()), opaqueXattr, []byte("y"), 0); err != nil {
			return fmt.Errorf("mark %q opaque: %w", parent, err)
		}
		return nil
	case strings.HasPrefix(base, whiteoutMeta):
		return nil
	}
	target := strings.TrimPrefix(base, whiteoutPrefix)
	if target == "" || target == "." || target == ".." {
		return fmt.Errorf("malformed whiteout %q: %w", base, ErrUnsafeLayer)
	}
	if !x.privileged {
		return fmt.Errorf("whiteout of %q needs root (mknod): %w", target, ErrUnsafeLayer)
	}
	name := path.Join(parent, target)
	if _, err := x.clear(name, false); err != nil {
		return err
	}
	err := x.at(name, func(fd int, b string) error {
		return unix.Mknodat(fd, b, unix.S_IFCHR, int(unix.Mkdev(0, 0)))
	})
	if err != nil {
		return fmt.Errorf("whiteout %q: %w", name, err)
	}
	return nil
}

// at calls fn with a descriptor of name's parent, opened inside the root,
// and name's last element: the *at system calls then act on name itself
// without following it.
func (x *extractor) at(name string, fn func(dirfd int, base string) error) error {
	d, err := x.root.Open(path.Dir(name))
	if err != nil {
		return unsafeIfEscape(err)
	}
	defer d.Close()
	return fn(int(d.Fd()), path.Base(name))
}

// meta applies ownership, mode (unless a symlink: modeOK false), extended
// attributes and times to a just-created non-directory entry.
func (x *extractor) meta(name string, hdr *tar.Header, modeOK bool) error {
	return x.at(name, func(fd int, base string) error {
		if x.privileged {
			if err := unix.Fchownat(fd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("chown: %w", err)
			}
		}
		if modeOK {
			if err := unix.Fchmodat(fd, base, uint32(hdr.Mode&0o7777), 0); err != nil {
				return fmt.Errorf("chmod: %w", err)
			}
			if err := x.xattrs(name, hdr); err != nil {
				return err
			}
		}
		return setTimes(fd, base, hdr)
	})
}

func setTimes(dirfd int, base string, hdr *tar.Header) error {
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	ts := []unix.Timespec{timespec(atime), timespec(hdr.ModTime)}
	if err := unix.UtimesNanoAt(dirfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// timespec converts t without UnixNano's overflow outside 1678..2262; the
// zero time becomes the epoch.
func timespec(t time.Time) unix.Timespec {
	if t.IsZero() {
		return unix.Timespec{}
	}
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// xattrs applies the PAX-recorded extended attributes of a file or
// directory (file capabilities, SELinux labels). Attributes the filesystem
// or our privileges do not allow are skipped with a warning: the layer is
// still usable, as Docker's unpacker also treats them.
func (x *extractor) xattrs(name string, hdr *tar.Header) error {
	var keys []string
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, paxXattrPrefix) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(keys)
	f, err := x.root.Open(name)
	if err != nil {
		return unsafeIfEscape(err)
	}
	defer f.Close()
	for _, k := range keys {
		attr := strings.TrimPrefix(k, paxXattrPrefix)
		if strings.HasPrefix(attr, overlayXattrPrefix) {
			x.log.Warn("ignoring overlayfs xattr from layer", "name", name, "xattr", attr)
			continue
		}
		if err := unix.Fsetxattr(int(f.Fd()), attr, []byte(hdr.PAXRecords[k]), 0); err != nil {
			x.log.Warn("cannot set xattr", "name", name, "xattr", attr, "err", err)
		}
	}
	return nil
}

// finishDirs applies directory modes and times once every entry is in
// place, deepest first: creating entries would otherwise change a
// directory's mtime, and a read-only mode would block them.
func (x *extractor) finishDirs() error {
	names := make([]string, 0, len(x.dirs))
	for n := range x.dirs {
		names = append(names, n)
	}
	depth := func(n string) int {
		if n == "." {
			return -1
		}
		return strings.Count(n, "/")
	}
	slices.SortFunc(names, func(a, b string) int { return depth(b) - depth(a) })
	for _, n := range names {
		hdr := x.dirs[n]
		err := x.at(n, func(fd int, base string) error {
			if err := unix.Fchmodat(fd, base, uint32(hdr.Mode&0o7777), 0); err != nil {
				return fmt.Errorf("chmod: %w", err)
			}
			return setTimes(fd, base, hdr)
		})
		if err != nil {
			return fmt.Errorf("directory %q: %w", n, err)
		}
	}
	return nil
}
