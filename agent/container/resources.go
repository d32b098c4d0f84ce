package container

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	// cpuPeriodMicros is the CFS period a CPU limit is expressed in: the
	// kernel's default of 100ms, which Docker uses too. NanoCPUs becomes
	// the quota of CPU time per period.
	cpuPeriodMicros = 100_000
	// minNanoCPUs is 0.01 CPU, a quota of 1000µs per period: the kernel
	// refuses smaller quotas, and Docker refuses smaller limits.
	minNanoCPUs = 10_000_000
	// minMemoryBytes is Docker's minimum memory limit: below it runc's own
	// init, which is charged to the container's cgroup, cannot start.
	minMemoryBytes = 6 << 20
)

// Resources are the cgroup limits of a container. A zero field sets no
// limit.
type Resources struct {
	// MemoryBytes caps the container's memory; the kernel OOM killer ends
	// a container that needs more (reported as [Status.OOMKilled]). Where
	// the kernel accounts swap per cgroup, memory plus swap is capped at
	// the same value, so the container cannot swap past its limit either.
	MemoryBytes int64
	// NanoCPUs caps CPU time in billionths of a CPU (1.5e9 is one and a
	// half CPUs), enforced as a CFS quota per 100ms period.
	NanoCPUs int64
	// PidsLimit caps the container's processes and threads together.
	PidsLimit int64
}

// validate reports limits the kernel would refuse or the container could
// not start with, wrapping ErrInvalidSpec.
func (r Resources) validate() error {
	switch {
	case r.MemoryBytes < 0 || r.NanoCPUs < 0 || r.PidsLimit < 0:
		return fmt.Errorf("%w: negative resource limit (memory %d, nano CPUs %d, pids %d)",
			ErrInvalidSpec, r.MemoryBytes, r.NanoCPUs, r.PidsLimit)
	case r.MemoryBytes > 0 && r.MemoryBytes < minMemoryBytes:
		return fmt.Errorf("%w: memory limit %d bytes is below the minimum of %d", ErrInvalidSpec, r.MemoryBytes, minMemoryBytes)
	case r.NanoCPUs > 0 && r.NanoCPUs < minNanoCPUs:
		return fmt.Errorf("%w: CPU limit %d nano CPUs is below the minimum of 0.01 CPU", ErrInvalidSpec, r.NanoCPUs)
	}
	return nil
}

// linuxResources translates res into runc's cgroup settings, with the
// device rule every container gets. swapLimit says whether the kernel can
// cap a cgroup's swap (see [cgroupHost]); runc fails to start a container
// whose swap limit the kernel cannot set, so without it swap is left
// alone.
func linuxResources(res Resources, swapLimit bool) *specs.LinuxResources {
	out := &specs.LinuxResources{
		// Deny every device; runc adds its standard ones (null, zero,
		// full, tty, random, urandom, pts, ptmx).
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}
	if res.MemoryBytes > 0 {
		limit := res.MemoryBytes
		out.Memory = &specs.LinuxMemory{Limit: &limit}
		if swapLimit {
			// Swap is memory plus swap in the OCI spec (cgroup v1's
			// memsw); runc turns equal values into memory.swap.max=0 on
			// cgroup v2.
			swap := res.MemoryBytes
			out.Memory.Swap = &swap
		}
	}
	if res.NanoCPUs > 0 {
		period := uint64(cpuPeriodMicros)
		// nano CPUs × period / 1e9, without overflowing for absurd limits.
		quota := res.NanoCPUs / 1e9 * cpuPeriodMicros
		quota += res.NanoCPUs % 1e9 * cpuPeriodMicros / 1e9
		out.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if res.PidsLimit > 0 {
		limit := res.PidsLimit
		out.Pids = &specs.LinuxPids{Limit: &limit}
	}
	return out
}
