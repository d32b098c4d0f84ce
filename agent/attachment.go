package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// DefaultAttachmentPoll is how often a running attachment's namespace is
// checked for still being there: `ip netns del` and the exit of the process
// behind /proc/PID/ns/net send no event to watch, and a second's delay in
// reporting the attachment finished costs nothing.
const DefaultAttachmentPoll = time.Second

// nsfsMagic is the filesystem type of network namespace files (NSFS_MAGIC
// in linux/magic.h).
const nsfsMagic = 0x6e736673

// AttachmentExecutor runs network attachments (shoal network connect): a
// namespace that no Shoal service runs, plugged into attachable overlay
// networks. There is no container: the attachment runs while its
// namespace exists and finishes (COMPLETE) once it is gone, after
// `ip netns del` or the exit of the process behind /proc/PID/ns/net.
//
// What it plugged in is recorded in Dir, a file per task, so that a
// restarted daemon adopts its attachments and unplugs those disconnected
// while it was down; the namespace itself is the user's and never removed.
type AttachmentExecutor struct {
	Overlay *Overlay
	Dir     string
	Logger  *slog.Logger
	// Poll is how often Wait checks the namespace; DefaultAttachmentPoll
	// when zero.
	Poll time.Duration
}

// attachmentRecord is what Dir keeps of an attachment.
type attachmentRecord struct {
	Netns    string   `json:"netns"`
	Networks []string `json:"networks"`
	// Dev and Ino identify the namespace the path named when it was
	// plugged in: a namespace deleted and made again under the same name
	// is another one.
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// namespaceID returns the device and inode of the network namespace at
// path, refusing anything else.
func namespaceID(path string) (dev, ino uint64, err error) {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, 0, fmt.Errorf("network namespace %s does not exist on this node: %w", path, fs.ErrNotExist)
		}
		return 0, 0, fmt.Errorf("check network namespace %s: %w", path, err)
	}
	if sfs.Type != nsfsMagic {
		return 0, 0, fmt.Errorf("%s is not a namespace file (make one with `ip netns add NAME`, or give /proc/PID/ns/net)", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, fmt.Errorf("check network namespace %s: %w", path, err)
	}
	return st.Dev, st.Ino, nil
}

func (e *AttachmentExecutor) recordPath(id string) string {
	return filepath.Join(e.Dir, id+".json")
}

func (e *AttachmentExecutor) readRecord(id string) (*attachmentRecord, error) {
	b, err := os.ReadFile(e.recordPath(id))
	if err != nil {
		return nil, err
	}
	var r attachmentRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read attachment record %s: %w", e.recordPath(id), err)
	}
	return &r, nil
}

// writeRecord writes the record atomically: a crash leaves the old one or
// the new one.
func (e *AttachmentExecutor) writeRecord(id string, r *attachmentRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(e.Dir, 0o700); err != nil {
		return fmt.Errorf("make %s: %w", e.Dir, err)
	}
	tmp := e.recordPath(id) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write attachment record: %w", err)
	}
	if err := os.Rename(tmp, e.recordPath(id)); err != nil {
		return fmt.Errorf("write attachment record: %w", err)
	}
	return nil
}

// Has reports whether the task is an attachment this host recorded.
func (e *AttachmentExecutor) Has(id string) bool {
	_, err := os.Stat(e.recordPath(id))
	return err == nil
}

// Prepare plugs the namespace into the task's networks. A namespace that
// is missing, or a name its interfaces would take that is in use there,
// refuses the task; nothing half plugged is left behind.
func (e *AttachmentExecutor) Prepare(ctx context.Context, t *shoalpb.Task) ([]string, error) {
	if e.Overlay == nil {
		return nil, errors.New("this host cannot attach namespaces to overlay networks (shoald runs without the overlay driver)")
	}
	netns := t.GetAttachment().GetNetns()
	dev, ino, err := namespaceID(netns)
	if err != nil {
		return nil, err
	}
	r := &attachmentRecord{Netns: netns, Dev: dev, Ino: ino}
	var addrs []string
	for _, a := range t.GetNetworks() {
		r.Networks = append(r.Networks, a.GetNetworkId())
		addrs = append(addrs, a.GetAddresses()...)
	}
	// Recorded first: a crash while plugging in leaves what Remove needs.
	if err := e.writeRecord(t.GetId(), r); err != nil {
		return nil, err
	}
	if err := e.Overlay.Attach(ctx, t, netns); err != nil {
		if rerr := e.Remove(context.WithoutCancel(ctx), t.GetId()); rerr != nil {
			e.Logger.Warn("undo a failed attachment", "task", t.GetId(), "err", rerr)
		}
		return nil, err
	}
	return addrs, nil
}

// Start marks the attachment's endpoints ready.
func (e *AttachmentExecutor) Start(_ context.Context, t *shoalpb.Task) error {
	e.Overlay.SetReady(t.GetId(), true)
	return nil
}

// Adopt plugs in again what an earlier daemon process attached (the
// interfaces are kept, the DNS resolver is started anew).
func (e *AttachmentExecutor) Adopt(ctx context.Context, t *shoalpb.Task) error {
	if e.Overlay == nil {
		return errors.New("this host has no overlay driver any more")
	}
	if err := e.Overlay.Attach(ctx, t, t.GetAttachment().GetNetns()); err != nil {
		return err
	}
	e.Overlay.SetReady(t.GetId(), true)
	return nil
}

// Inspect reports an attachment running while its namespace is the one it
// plugged into, exited once that namespace is gone.
func (e *AttachmentExecutor) Inspect(ctx context.Context, id string) (ContainerStatus, error) {
	r, err := e.readRecord(id)
	if errors.Is(err, fs.ErrNotExist) {
		return ContainerStatus{State: ContainerAbsent}, nil
	}
	if err != nil {
		return ContainerStatus{}, err
	}
	if !r.present() {
		// Gone while the daemon was down: the interfaces went with it
		// unless something still holds it; unplug what may be left.
		if err := e.unplug(ctx, id); err != nil {
			e.Logger.Warn("unplug an attachment whose namespace is gone", "task", id, "err", err)
		}
		return ContainerStatus{State: ContainerExited}, nil
	}
	return ContainerStatus{State: ContainerRunning}, nil
}

// present reports whether the recorded namespace is still at its path.
func (r *attachmentRecord) present() bool {
	dev, ino, err := namespaceID(r.Netns)
	return err == nil && dev == r.Dev && ino == r.Ino
}

// Wait returns once the attachment's namespace is gone, its endpoints
// withdrawn.
func (e *AttachmentExecutor) Wait(ctx context.Context, id string) (ContainerStatus, error) {
	r, err := e.readRecord(id)
	if err != nil {
		return ContainerStatus{}, err
	}
	poll := e.Poll
	if poll <= 0 {
		poll = DefaultAttachmentPoll
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for r.present() {
		select {
		case <-ctx.Done():
			return ContainerStatus{}, ctx.Err()
		case <-tick.C:
		}
	}
	e.Logger.Info("attached namespace is gone", "task", id, "netns", r.Netns)
	// Unplug now: the finished attachment's addresses go back to the pool
	// while the task stays in the node's history.
	if err := e.unplug(ctx, id); err != nil {
		return ContainerStatus{}, err
	}
	return ContainerStatus{State: ContainerExited, FinishedAt: time.Now()}, nil
}

// Stop unplugs the namespace; it stays, without its overlay interfaces.
func (e *AttachmentExecutor) Stop(ctx context.Context, t *shoalpb.Task) (ContainerStatus, error) {
	if err := e.unplug(ctx, t.GetId()); err != nil {
		return ContainerStatus{}, err
	}
	return ContainerStatus{State: ContainerExited, FinishedAt: time.Now()}, nil
}

// Remove unplugs the namespace and forgets the attachment.
func (e *AttachmentExecutor) Remove(ctx context.Context, id string) error {
	if err := e.unplug(ctx, id); err != nil {
		return err
	}
	if err := os.Remove(e.recordPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("forget attachment %s: %w", id, err)
	}
	return nil
}

func (e *AttachmentExecutor) unplug(ctx context.Context, id string) error {
	r, err := e.readRecord(id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if e.Overlay == nil {
		return nil
	}
	if err := e.Overlay.DetachNamespace(ctx, id, r.Netns, r.Networks); err != nil {
		return fmt.Errorf("unplug %s: %w", r.Netns, err)
	}
	return nil
}

// List returns the recorded attachments.
func (e *AttachmentExecutor) List(context.Context) ([]string, error) {
	entries, err := os.ReadDir(e.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list attachments: %w", err)
	}
	var ids []string
	for _, en := range entries {
		if id, ok := strings.CutSuffix(en.Name(), ".json"); ok && id != "" {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// WithAttachments returns an Executor that runs network attachments with
// a and every other task with containers.
func WithAttachments(containers Executor, a *AttachmentExecutor) Executor {
	return &splitExecutor{containers: containers, attachments: a}
}

// splitExecutor sends each task to the executor of its kind: by the task
// where the call has it, else by the attachments' records.
type splitExecutor struct {
	containers  Executor
	attachments *AttachmentExecutor
}

func (s *splitExecutor) of(t *shoalpb.Task) Executor {
	if t.GetAttachment() != nil {
		return s.attachments
	}
	return s.containers
}

func (s *splitExecutor) byID(id string) Executor {
	if s.attachments.Has(id) {
		return s.attachments
	}
	return s.containers
}

func (s *splitExecutor) Prepare(ctx context.Context, t *shoalpb.Task) ([]string, error) {
	return s.of(t).Prepare(ctx, t)
}

func (s *splitExecutor) Start(ctx context.Context, t *shoalpb.Task) error {
	return s.of(t).Start(ctx, t)
}

func (s *splitExecutor) Adopt(ctx context.Context, t *shoalpb.Task) error {
	return s.of(t).Adopt(ctx, t)
}

func (s *splitExecutor) Inspect(ctx context.Context, id string) (ContainerStatus, error) {
	return s.byID(id).Inspect(ctx, id)
}

func (s *splitExecutor) Wait(ctx context.Context, id string) (ContainerStatus, error) {
	return s.byID(id).Wait(ctx, id)
}

func (s *splitExecutor) Stop(ctx context.Context, t *shoalpb.Task) (ContainerStatus, error) {
	return s.of(t).Stop(ctx, t)
}

func (s *splitExecutor) Remove(ctx context.Context, id string) error {
	return s.byID(id).Remove(ctx, id)
}

func (s *splitExecutor) List(ctx context.Context) ([]string, error) {
	ids, err := s.containers.List(ctx)
	if err != nil {
		return nil, err
	}
	more, err := s.attachments.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, id := range more {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}
