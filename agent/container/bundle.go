package container

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

const (
	// defaultPath is Docker's PATH for images that set none: runc looks
	// the executable up in the container's PATH.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// maxMountData is what mount(2) accepts as options: one page. Longer
	// overlay layer lists go through the new mount API instead.
	maxMountData = 4096 - 1
	// filePerm is for files in a container's state directory.
	filePerm = 0o600
	// sharedFilePerm is for files bind-mounted into the container, which
	// any user in the container must be able to read.
	sharedFilePerm = 0o644
)

// defaultCapabilities is Docker's default set.
var defaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// maskedPaths and readonlyPaths are Docker's: kernel interfaces that leak
// host information or let a container reconfigure the host.
var (
	maskedPaths = []string{
		"/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore",
		"/proc/keys", "/proc/latency_stats", "/proc/timer_list",
		"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap",
	}
	readonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

// Spec describes a container to create.
type Spec struct {
	ID       string
	Hostname string
	// Layers are image layer directories, lowest first. The rootfs is an
	// overlayfs of them with a per-container upper directory.
	Layers []string
	// Args is the full argv: entrypoint and command already resolved.
	Args []string
	// Env is KEY=VALUE pairs. PATH defaults to Docker's and HOME to the
	// user's home directory (from the image's /etc/passwd) when absent.
	Env []string
	// Cwd is the working directory; default "/".
	Cwd string
	// User is "uid[:gid]" numeric or names resolved from the image's
	// /etc/passwd and /etc/group; default root.
	User string
	// NetNSPath is a network namespace to join; "" gives the container a
	// fresh, empty one.
	NetNSPath string
	// Labels are recorded as OCI annotations.
	Labels map[string]string
	// Hosts and ResolvConf are bind-mounted read-only at /etc/hosts and
	// /etc/resolv.conf; nil mounts nothing (an empty non-nil slice mounts
	// an empty file).
	Hosts      []byte
	ResolvConf []byte
	// Resources are the container's cgroup limits.
	Resources Resources
}

// Create prepares the container's bundle in StateDir/ID: the overlayfs
// rootfs, the files to bind-mount and config.json. It is idempotent: a
// complete bundle (config.json present, rootfs mounted) is kept as it is,
// a partial one is completed.
func (r *Runtime) Create(ctx context.Context, spec Spec) (err error) {
	if err := checkID(spec.ID); err != nil {
		return err
	}
	if len(spec.Layers) == 0 {
		return fmt.Errorf("create container %s: %w: no image layers", spec.ID, ErrInvalidSpec)
	}
	if len(spec.Args) == 0 {
		return fmt.Errorf("create container %s: %w: no command", spec.ID, ErrInvalidSpec)
	}
	if err := spec.Resources.validate(); err != nil {
		return fmt.Errorf("create container %s: %w", spec.ID, err)
	}
	if err := r.cg.check(spec.Resources); err != nil {
		return fmt.Errorf("create container %s: %w", spec.ID, err)
	}
	unlock, err := r.locks.lock(ctx, spec.ID)
	if err != nil {
		return fmt.Errorf("create container %s: %w", spec.ID, err)
	}
	defer unlock()

	dir := r.dir(spec.ID)
	rootfs := filepath.Join(dir, rootfsDir)
	mounted, err := isMountPoint(rootfs)
	if err != nil {
		return fmt.Errorf("create container %s: %w", spec.ID, err)
	}
	if _, err := os.Stat(filepath.Join(dir, configFile)); err == nil && mounted {
		return nil
	}
	// An incomplete bundle is taken down again, so that a rejected spec
	// leaves no mount and no directory behind.
	defer func() {
		if err == nil {
			return
		}
		if _, serr := os.Stat(filepath.Join(dir, configFile)); serr == nil {
			return
		}
		if uerr := unmountAll(ctx, rootfs); uerr != nil {
			r.log.Warn("undo partial bundle", "id", spec.ID, "err", uerr)
			return
		}
		_ = os.RemoveAll(dir)
	}()
	for _, d := range []string{dir, rootfs, filepath.Join(dir, upperDir), filepath.Join(dir, workDir)} {
		if err := os.MkdirAll(d, dirPerm); err != nil {
			return fmt.Errorf("create container %s: %w", spec.ID, err)
		}
	}
	// The upper directory becomes the container's "/": let every user in
	// the container traverse it, as in an image's root.
	if err := os.Chmod(filepath.Join(dir, upperDir), 0o755); err != nil {
		return fmt.Errorf("create container %s: %w", spec.ID, err)
	}
	if !mounted {
		if err := mountOverlay(rootfs, spec.Layers, filepath.Join(dir, upperDir), filepath.Join(dir, workDir)); err != nil {
			return fmt.Errorf("create container %s: %w", spec.ID, err)
		}
	}
	user, err := resolveUser(rootfs, spec.User)
	if err != nil {
		return fmt.Errorf("create container %s: %w", spec.ID, err)
	}
	for name, data := range map[string][]byte{hostsFile: spec.Hosts, resolvConfFile: spec.ResolvConf} {
		if data == nil {
			continue
		}
		if err := writeFileAtomic(filepath.Join(dir, name), data, sharedFilePerm); err != nil {
			return fmt.Errorf("create container %s: %w", spec.ID, err)
		}
	}
	cfg, err := json.MarshalIndent(r.ociSpec(spec, dir, user), "", "\t")
	if err != nil {
		return fmt.Errorf("create container %s: encode config: %w", spec.ID, err)
	}
	if err := writeFileAtomic(filepath.Join(dir, configFile), cfg, filePerm); err != nil {
		return fmt.Errorf("create container %s: %w", spec.ID, err)
	}
	r.log.Debug("bundle created", "id", spec.ID, "dir", dir)
	return nil
}

// ociSpec builds the hardened runtime config (see the package doc).
func (r *Runtime) ociSpec(spec Spec, dir string, user execUser) *specs.Spec {
	cwd := spec.Cwd
	if cwd == "" {
		cwd = "/"
	}
	env := append([]string{}, spec.Env...)
	if !hasEnv(env, "PATH") {
		env = append(env, "PATH="+defaultPath)
	}
	if !hasEnv(env, "HOME") {
		env = append(env, "HOME="+user.Home)
	}
	caps := &specs.LinuxCapabilities{
		Bounding:  append([]string{}, defaultCapabilities...),
		Effective: append([]string{}, defaultCapabilities...),
		Permitted: append([]string{}, defaultCapabilities...),
	}
	if user.UID != 0 {
		// As Docker does: a non-root user gets no capabilities beyond
		// what it could gain from a setuid binary, which
		// no-new-privileges disables anyway.
		caps.Effective, caps.Permitted = []string{}, []string{}
	}
	netns := specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: spec.NetNSPath}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
	if spec.Hosts != nil {
		mounts = append(mounts, roBind(filepath.Join(dir, hostsFile), "/etc/hosts"))
	}
	if spec.ResolvConf != nil {
		mounts = append(mounts, roBind(filepath.Join(dir, resolvConfFile), "/etc/resolv.conf"))
	}
	var annotations map[string]string
	if len(spec.Labels) > 0 {
		annotations = make(map[string]string, len(spec.Labels))
		for k, v := range spec.Labels {
			annotations[k] = v
		}
	}
	return &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User: specs.User{UID: user.UID, GID: user.GID, AdditionalGids: user.AdditionalGids},
			Args: append([]string{}, spec.Args...),
			Env:  env,
			Cwd:  cwd,
			// Capabilities and no-new-privileges: Docker's defaults.
			Capabilities:    caps,
			NoNewPrivileges: true,
		},
		Root:        &specs.Root{Path: rootfsDir},
		Hostname:    spec.Hostname,
		Mounts:      mounts,
		Annotations: annotations,
		Linux: &specs.Linux{
			CgroupsPath: r.cgroupPath(spec.ID),
			Resources:   linuxResources(spec.Resources, r.cg.swapLimit),
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
				netns,
			},
			MaskedPaths:   append([]string{}, maskedPaths...),
			ReadonlyPaths: append([]string{}, readonlyPaths...),
		},
	}
}

func (r *Runtime) cgroupPath(id string) string {
	return r.cfg.CgroupParent + "/" + id
}

func roBind(src, dst string) specs.Mount {
	return specs.Mount{Destination: dst, Type: "bind", Source: src, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}}
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			return true
		}
	}
	return false
}

// mountOverlay mounts an overlayfs of layers (lowest first) at target.
// Overlayfs lists lower directories topmost first. Layer lists too long for
// mount(2)'s one-page option string are passed one by one through fsconfig
// ("lowerdir+", Linux 6.8+).
func mountOverlay(target string, layers []string, upper, work string) error {
	lower := make([]string, 0, len(layers))
	for i := len(layers) - 1; i >= 0; i-- {
		if strings.ContainsAny(layers[i], ":,") {
			return fmt.Errorf("%w: layer path %q contains ':' or ','", ErrInvalidSpec, layers[i])
		}
		if fi, err := os.Stat(layers[i]); err != nil || !fi.IsDir() {
			return fmt.Errorf("%w: layer %q is not a directory", ErrInvalidSpec, layers[i])
		}
		lower = append(lower, layers[i])
	}
	data := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", strings.Join(lower, ":"), upper, work)
	if len(data) <= maxMountData {
		if err := unix.Mount("overlay", target, "overlay", 0, data); err != nil {
			return fmt.Errorf("mount overlay rootfs at %s: %w", target, err)
		}
		return nil
	}
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("mount overlay rootfs at %s: fsopen: %w", target, err)
	}
	defer unix.Close(fsfd)
	set := func(key, value string) error {
		if err := unix.FsconfigSetString(fsfd, key, value); err != nil {
			return fmt.Errorf("mount overlay rootfs at %s: set %s=%s: %w", target, key, value, err)
		}
		return nil
	}
	if err := set("source", "overlay"); err != nil {
		return err
	}
	for _, l := range lower {
		if err := set("lowerdir+", l); err != nil {
			return err
		}
	}
	if err := set("upperdir", upper); err != nil {
		return err
	}
	if err := set("workdir", work); err != nil {
		return err
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("mount overlay rootfs at %s: create: %w", target, err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("mount overlay rootfs at %s: fsmount: %w", target, err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount overlay rootfs at %s: move mount: %w", target, err)
	}
	return nil
}
