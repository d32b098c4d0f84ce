package main

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
)

// multiarch names the Debian multiarch directory of each ELF machine the
// images may be built for.
var multiarch = map[elf.Machine]string{
	elf.EM_X86_64:  "x86_64-linux-gnu",
	elf.EM_AARCH64: "aarch64-linux-gnu",
}

// libSearchPath is where a Debian glibc loader looks for a library that
// no ld.so.cache names, in its order, for an ELF object of bin's machine:
// the multiarch directories, then the plain ones. The images hold no
// ld.so.cache, so this is also where the loader inside a container looks,
// and where the images put libraries.
func libSearchPath(bin string) ([]string, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return nil, fmt.Errorf("%s: not an ELF binary: %w", bin, err)
	}
	m := f.Machine
	f.Close()
	triplet, ok := multiarch[m]
	if !ok {
		return nil, fmt.Errorf("%s: no library search path known for ELF machine %s", bin, m)
	}
	return []string{
		"/lib/" + triplet, "/usr/lib/" + triplet,
		"/lib", "/usr/lib",
	}, nil
}

// runtimeFiles returns what the dynamically linked binary bin needs at run
// time besides itself: its ELF interpreter (PT_INTERP, at that path) and,
// sorted, every shared object in the closure of DT_NEEDED, each at the
// first path of dirs holding a file of bin's class and machine, as the
// loader finds it. A static binary needs nothing: "" and nil.
//
// Host paths are opened as given (symlinks followed), so the returned
// paths are also where the files go in an image whose loader searches
// dirs. DT_RPATH and DT_RUNPATH are not followed: an object carrying one
// is refused rather than resolved differently from the real loader.
func runtimeFiles(bin string, dirs []string) (interp string, libs []string, err error) {
	f, err := elf.Open(bin)
	if err != nil {
		return "", nil, fmt.Errorf("%s: not an ELF binary: %w", bin, err)
	}
	class, machine := f.Class, f.Machine
	interp, err = interpreter(f)
	f.Close()
	if err != nil {
		return "", nil, fmt.Errorf("%s: %w", bin, err)
	}
	if interp == "" {
		return "", nil, nil
	}
	// The interpreter is already loaded when a library asks for it by its
	// soname (glibc's libc.so.6 does): it satisfies that.
	soname, err := dynStrings(interp, elf.DT_SONAME)
	if err != nil {
		return "", nil, fmt.Errorf("interpreter: %w", err)
	}
	satisfied := map[string]bool{path.Base(interp): true}
	for _, n := range soname {
		satisfied[n] = true
	}
	for queue := []string{bin}; len(queue) > 0; queue = queue[1:] {
		obj := queue[0]
		needed, err := dynStrings(obj, elf.DT_NEEDED)
		if err != nil {
			return "", nil, err
		}
		for _, name := range needed {
			if satisfied[name] {
				continue
			}
			p, err := findLibrary(name, dirs, class, machine)
			if err != nil {
				return "", nil, fmt.Errorf("%s needs %s: %w", obj, name, err)
			}
			satisfied[name] = true
			libs = append(libs, p)
			queue = append(queue, p)
		}
	}
	slices.Sort(libs)
	return interp, libs, nil
}

// dynStrings returns the dynamic section's strings for tag in the ELF
// object at p, refusing an object with a DT_RPATH or DT_RUNPATH.
func dynStrings(p string, tag elf.DynTag) ([]string, error) {
	f, err := elf.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	for _, t := range []elf.DynTag{elf.DT_RPATH, elf.DT_RUNPATH} {
		v, err := f.DynString(t)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", p, t, err)
		}
		if len(v) > 0 {
			return nil, fmt.Errorf("%s has %s %q: not supported (only the default search path is resolved)", p, t, v)
		}
	}
	v, err := f.DynString(tag)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", p, tag, err)
	}
	return v, nil
}

// interpreter returns f's PT_INTERP path, or "" for a static binary.
func interpreter(f *elf.File) (string, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", fmt.Errorf("read PT_INTERP: %w", err)
		}
		if n := slices.Index(b, 0); n >= 0 {
			b = b[:n]
		}
		if len(b) == 0 || b[0] != '/' {
			return "", fmt.Errorf("PT_INTERP %q is not an absolute path", b)
		}
		return string(b), nil
	}
	return "", nil
}

// findLibrary returns the first file called name in dirs that is an ELF
// object of the given class and machine (the loader skips others, such as
// 32-bit libraries in /usr/lib).
func findLibrary(name string, dirs []string, class elf.Class, machine elf.Machine) (string, error) {
	if path.Base(name) != name {
		return "", errors.New("a DT_NEEDED with a slash is not supported")
	}
	for _, d := range dirs {
		p := path.Join(d, name)
		lib, err := elf.Open(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			if _, statErr := os.Stat(p); statErr == nil {
				continue // not ELF (a linker script, say): the loader skips it
			}
			return "", err
		}
		ok := lib.Class == class && lib.Machine == machine
		lib.Close()
		if ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in %v", dirs)
}
