package container

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// execUser is the identity a container's process runs as.
type execUser struct {
	UID, GID       uint32
	AdditionalGids []uint32
	Home           string
}

// passwdEntry and groupEntry are the fields of /etc/passwd and /etc/group
// a container needs.
type passwdEntry struct {
	name     string
	uid, gid uint32
	home     string
}

type groupEntry struct {
	name    string
	gid     uint32
	members []string
}

// resolveUser turns a Spec.User ("", "uid", "uid:gid", "name", "name:group"
// in any mix) into ids, as Docker does: a user's primary group comes from
// /etc/passwd unless a group is given, its supplementary groups from
// /etc/group. Numeric ids need no entry; names must exist.
func resolveUser(rootfs, user string) (execUser, error) {
	passwd, err := readRootfsFile(rootfs, "etc/passwd")
	if err != nil {
		return execUser{}, err
	}
	group, err := readRootfsFile(rootfs, "etc/group")
	if err != nil {
		return execUser{}, err
	}
	users := parsePasswd(passwd)
	groups := parseGroup(group)

	userPart, groupPart, hasGroup := strings.Cut(user, ":")
	if userPart == "" {
		userPart = "0"
	}
	out := execUser{Home: "/"}
	var entry *passwdEntry
	if uid, err := parseID(userPart); err == nil {
		out.UID = uid
		for i := range users {
			if users[i].uid == uid {
				entry = &users[i]
				break
			}
		}
	} else {
		for i := range users {
			if users[i].name == userPart {
				entry = &users[i]
				break
			}
		}
		if entry == nil {
			return execUser{}, fmt.Errorf("%w: user %q not found in the image's /etc/passwd", ErrInvalidSpec, userPart)
		}
		out.UID = entry.uid
	}
	if entry != nil {
		out.GID = entry.gid
		if entry.home != "" {
			out.Home = entry.home
		}
	}
	if hasGroup && groupPart != "" {
		if gid, err := parseID(groupPart); err == nil {
			out.GID = gid
		} else {
			found := false
			for _, g := range groups {
				if g.name == groupPart {
					out.GID, found = g.gid, true
					break
				}
			}
			if !found {
				return execUser{}, fmt.Errorf("%w: group %q not found in the image's /etc/group", ErrInvalidSpec, groupPart)
			}
		}
	}
	if entry != nil {
		seen := map[uint32]bool{out.GID: true}
		for _, g := range groups {
			for _, m := range g.members {
				if m == entry.name && !seen[g.gid] {
					seen[g.gid] = true
					out.AdditionalGids = append(out.AdditionalGids, g.gid)
				}
			}
		}
	}
	return out, nil
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err
}

// readRootfsFile reads name (relative to rootfs) with symlinks resolved
// inside rootfs, so an image cannot point /etc/passwd at a host file. A
// missing file reads as empty.
func readRootfsFile(rootfs, name string) ([]byte, error) {
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open rootfs %s: %w", rootfs, err)
	}
	defer unix.Close(root)
	fd, err := unix.Openat2(root, name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open /%s in the rootfs: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	// The files are small; the limit keeps a hostile image from making
	// the daemon read a huge one.
	b, err := io.ReadAll(io.LimitReader(f, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read /%s in the rootfs: %w", name, err)
	}
	return b, nil
}

// parsePasswd reads name:password:uid:gid:gecos:home:shell lines, skipping
// malformed ones as libc does.
func parsePasswd(b []byte) []passwdEntry {
	var out []passwdEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(f) < 4 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		e := passwdEntry{name: f[0], uid: uid, gid: gid}
		if len(f) > 5 {
			e.home = f[5]
		}
		out = append(out, e)
	}
	return out
}

// parseGroup reads name:password:gid:member,member lines.
func parseGroup(b []byte) []groupEntry {
	var out []groupEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(f) < 3 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		gid, err := parseID(f[2])
		if err != nil {
			continue
		}
		e := groupEntry{name: f[0], gid: gid}
		if len(f) > 3 && f[3] != "" {
			e.members = strings.Split(f[3], ",")
		}
		out = append(out, e)
	}
	return out
}
