// Package netnsutil holds the network-namespace helpers the overlay
// packages share: running code inside a namespace on a locked OS thread
// (OnLockedThread, Enter, InNetNS), persistent namespace files pinned by a
// bind mount (CreateNetNS, IsNetNSFile, RemoveNetNSFile), and sysctls as a
// namespace sees them (SetSysctl, SetSysctls).
//
// Why the thread is locked: a network namespace belongs to an OS thread, not
// to a process or a goroutine. setns(2) moves only the calling thread, while
// the Go scheduler moves goroutines between threads at will. Code that enters
// a namespace must therefore hold its goroutine on one thread
// (runtime.LockOSThread) for as long as that thread is elsewhere, and move it
// back before unlocking it, or other goroutines would run in the wrong
// namespace. When moving back fails the thread stays locked, and the runtime
// discards it when the goroutine ends. Always discarding is not enough: the
// process's main thread is parked rather than terminated when a goroutine
// that locked it ends, so it would stay in the namespace for good. Sockets,
// TUN devices and netlink sockets created on the thread keep the namespace
// they were created in after the thread leaves it, and the files under
// /proc/sys/net belong to the namespace of the thread that opens them.
//
// Why ProcessNetNS is /proc/thread-self/ns/net and not /proc/self/ns/net:
// /proc/self names the main thread, and a goroutine locked to the main
// thread may be inside a container's or sandbox's namespace at that moment
// (or parked there, as above). The bridge and vxlan drivers used to open
// /proc/self/ns/net as the host's namespace and, under load, looked for and
// made their host-side links inside a container. Every thread that is not
// locked by a namespace switch is in the process's namespace, so the
// calling thread's own entry names it, provided it is opened from such a
// thread (not from inside fn of InNetNS or OnLockedThread).
//
// The package imports no other Shoal package; callers pass plain paths.
package netnsutil
