// Package container is the runc executor of Shoal's agent: it prepares OCI
// bundles, runs each container under a small per-container shim, stores the
// container's output as timestamped lines, stops containers gracefully and
// finds them again after the daemon restarts.
//
// # Why a shim
//
// Containers must outlive the daemon: an upgrade or a crash of shoald must
// not take every workload on the host down with it. So the daemon never is
// the parent of a container. [Runtime.Start] runs the shim command
// ([Config.ShimCommand], which ends up in [ShimMain]) and the shim forks
// itself once more, detached in its own session and process group with
// /dev/null as stdio, and records its pid in StateDir/ID/shim.pid. The
// process the daemon waited for exits at once, so the daemon has no child to
// reap and `kill -9` of the daemon leaves shim and container running
// (the containerd-shim model).
//
// The shim runs `runc run` in the foreground rather than `runc run -d`:
// runc then stays the container's subreaper and hands the container the
// shim's pipes as stdout and stderr. The shim reads them line by line and
// appends each line as a JSON object
//
//	{"t":"<RFC3339Nano>","s":"stdout|stderr","l":"<text>"}
//
// to StateDir/ID/log.jsonl, splitting lines longer than 16 KiB.
// Reading the pipes is what keeps the container from blocking on a full
// pipe, which is why a dead shim is a broken container and the shim does as
// little as possible. It runs `runc run --keep`, so that runc leaves the
// exited container and its cgroups in place: the shim reads the memory
// cgroup's OOM counters (see below) and then removes both with `runc delete
// --force`. Only then is the exit status (128+N when the container was
// killed by signal N, the shell convention runc follows) written atomically
// to StateDir/ID/exit.json, and the shim exits. exit.json is the only record
// of an exited container and the source of truth for [Runtime.Status].
//
// # Files
//
// Everything about container ID lives in StateDir/ID, and is all the state
// there is: a restarted daemon calls [Runtime.List] and [Runtime.Status] and
// carries on.
//
//	config.json   OCI runtime config; written last, so it marks a complete bundle
//	rootfs/       overlayfs of the image layers, upper/ and work/ beside it
//	hosts, resolv.conf  bind-mounted read-only into the container when given
//	shim.pid      pid of the shim
//	init.pid      host pid of the container's init (runc --pid-file, written once it runs)
//	log.jsonl     the container's output
//	exit.json     exit status and OOM kill, written once by the shim after runc returns
//	runc.log      runc's own log (JSON), the reason when runc could not start the container
//	shim.log      the shim's own diagnostics
//
// # Hardening
//
// The OCI config follows Docker's defaults: Docker's capability set (and no
// effective or permitted capabilities for a non-root user), no-new-privileges,
// Docker's masked and read-only /proc and /sys paths, a device cgroup that
// denies everything but runc's standard devices, and fresh pid, ipc, uts,
// mount and network namespaces. Docker's default seccomp profile is not
// applied yet: containers run without a seccomp filter. The container log
// grows without bound; rotation is not done yet either.
//
// # Resource limits and OOM kills
//
// [Spec.Resources] become runc's cgroup settings (cgroupfs driver, cgroup
// CgroupParent/ID in every hierarchy): a memory limit, with memory plus
// swap capped at the same value where the kernel accounts swap per cgroup
// (memory.memsw.* on v1, memory.swap.max on v2; without it the limit holds
// for memory only and [New] logs a warning); a CPU limit as a CFS quota per
// 100ms period; a pids limit. Create refuses a limit whose controller the
// host does not mount, since runc would silently skip it.
//
// A container whose memory cgroup saw the kernel OOM killer has
// [Status.OOMKilled] set, with [Status.MemoryLimit]; a killed init reads as
// SIGKILL, exit code 137. The shim reads the counters after runc returns
// and before `runc delete` removes the cgroup, which is why runc runs with
// --keep: on cgroup v1 the oom_kill count in memory.oom_control (Linux 4.13
// and later), on older kernels an init killed by SIGKILL after
// memory.failcnt counted a refused charge with memory.max_usage_in_bytes at
// the limit; on cgroup v2 the oom_kill count in memory.events. An OOM kill
// in a container without a limit of its own means the host or a parent
// cgroup ran out of memory.
package container
