package agent

import (
	"context"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Executor runs the containers of this host's tasks. It is the agent's seam
// to the OS: the runc-backed implementation lives in runc.go, tests use a
// fake. Every method is keyed by task id and must be idempotent, because a
// restarted daemon repeats whatever it was doing.
type Executor interface {
	// Prepare readies everything the task's container needs (image,
	// network endpoint, bundle) and returns the container's addresses.
	Prepare(ctx context.Context, t *shoalpb.Task) (addresses []string, err error)
	// Start starts the prepared container and publishes the task's
	// host-mode ports.
	Start(ctx context.Context, t *shoalpb.Task) error
	// Adopt takes over the running container of t that an earlier daemon
	// process started: it restores what only that process kept, such as
	// the task's published ports.
	Adopt(ctx context.Context, t *shoalpb.Task) error
	// Inspect reports what exists for the task on this host, including
	// containers started by an earlier daemon process.
	Inspect(ctx context.Context, taskID string) (ContainerStatus, error)
	// Wait blocks until the container exits, then withdraws the task's
	// published ports.
	Wait(ctx context.Context, taskID string) (ContainerStatus, error)
	// Stop withdraws the task's published ports and stops the container
	// gracefully: its stop signal, then SIGKILL after the grace period.
	Stop(ctx context.Context, t *shoalpb.Task) (ContainerStatus, error)
	// Remove deletes every trace of the task's container on this host,
	// its published ports included.
	Remove(ctx context.Context, taskID string) error
	// List returns the ids of the tasks that have containers on this host.
	List(ctx context.Context) ([]string, error)
}

// ContainerState is what the executor knows of a task's container.
type ContainerState int

const (
	// ContainerAbsent means nothing exists for the task on this host.
	ContainerAbsent ContainerState = iota
	// ContainerCreated means the container is prepared but not started.
	ContainerCreated
	// ContainerRunning means the container's process is alive.
	ContainerRunning
	// ContainerExited means the container ran and exited.
	ContainerExited
)

// ContainerStatus describes a task's container.
type ContainerStatus struct {
	State    ContainerState
	Pid      int
	ExitCode int
	Signal   string
	// OOMKilled means the kernel OOM killer killed a process of the exited
	// container (its init when Signal is SIGKILL). MemoryLimit is the
	// container's memory limit in bytes, 0 for none.
	OOMKilled   bool
	MemoryLimit int64
	StartedAt   time.Time
	FinishedAt  time.Time
	Addresses   []string
}
