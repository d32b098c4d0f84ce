package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shoal-project/shoal/agent/container"
	"github.com/shoal-project/shoal/agent/image"
	"github.com/shoal-project/shoal/overlay/bridge"
	"github.com/shoal-project/shoal/overlay/dns"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// defaultStopGracePeriod is Docker's and Swarm's: long enough for most
// servers to finish in-flight requests after SIGTERM.
const defaultStopGracePeriod = 10 * time.Second

// overlayDrainDelay is how long a task on an overlay network keeps
// running after it is withdrawn from the load balancers and before its
// stop signal: gossip carries the withdrawal to every host in a few
// 100 ms rounds, so a second covers a small cluster with margin.
const overlayDrainDelay = time.Second

// hostnameLen is how much of the task id a container's default hostname
// takes, like Docker's short container ids.
const hostnameLen = 12

// RuncExecutor runs tasks as runc containers with images from the host's
// image store, each in its own network namespace on the node-local bridge
// and in cgroups that enforce the task's resource limits. A task's
// host-mode ports are published (Network's port table) while its container
// runs: from just before it starts, or from its adoption by a restarted
// daemon, until it stops or exits.
type RuncExecutor struct {
	Images  *image.Store
	Runtime *container.Runtime
	Network *bridge.Driver
	// Overlay attaches containers to overlay networks; nil on a host
	// without overlay support, where tasks on overlays are refused.
	Overlay *Overlay
	NodeID  string
	Logger  *slog.Logger

	portsOnce sync.Once
	ports     *portPublisher // made on first use from Network.Ports()
}

var _ Executor = (*RuncExecutor)(nil)

// Prepare implements Executor: image (pulled when absent), network
// endpoint, bundle.
func (e *RuncExecutor) Prepare(ctx context.Context, t *shoalpb.Task) ([]string, error) {
	cs := t.GetSpec().GetContainer()
	img, err := e.Images.Get(cs.GetImage())
	if errors.Is(err, image.ErrNotFound) {
		img, err = e.Images.Pull(ctx, cs.GetImage(), func(msg string) {
			e.Logger.Info("pull", "task", t.GetId(), "image", cs.GetImage(), "progress", msg)
		})
		if err != nil {
			return nil, fmt.Errorf("image %s is not on this host and pulling it failed: %w", cs.GetImage(), err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("look up image %s: %w", cs.GetImage(), err)
	}

	args := resolveArgs(img.Config, cs)
	if len(args) == 0 {
		return nil, fmt.Errorf("image %s has no entrypoint or cmd and the service sets no command", cs.GetImage())
	}
	if len(t.GetNetworks()) > 0 && e.Overlay == nil {
		return nil, errors.New("this host cannot attach containers to overlay networks (shoald runs without the overlay driver)")
	}
	ep, err := e.Network.Attach(ctx, t.GetId())
	if err != nil {
		return nil, fmt.Errorf("attach to the local network: %w", err)
	}
	resolv := hostResolvConf()
	addrs := []string{ep.Address.String()}
	if len(t.GetNetworks()) > 0 {
		if err := e.Overlay.Attach(ctx, t, ep.NetNSPath); err != nil {
			return nil, err
		}
		// The embedded resolver answers service names and forwards the
		// rest to the host's resolvers.
		if resolv, err = dns.ContainerResolvConf("/etc/resolv.conf"); err != nil {
			return nil, fmt.Errorf("resolv.conf: %w", err)
		}
		for _, a := range t.GetNetworks() {
			addrs = append(addrs, a.GetAddresses()...)
		}
	}
	hostname := cs.GetHostname()
	if hostname == "" {
		hostname = t.GetId()[:min(hostnameLen, len(t.GetId()))]
	}
	env := append([]string{}, img.Config.Env...)
	env = append(env,
		"SHOAL_TASK_ID="+t.GetId(),
		"SHOAL_TASK_SLOT="+strconv.FormatUint(t.GetSlot(), 10),
		"SHOAL_SERVICE_ID="+t.GetServiceId(),
		"SHOAL_SERVICE_NAME="+t.GetServiceName(),
		"SHOAL_NODE_ID="+e.NodeID,
	)
	env = mergeEnv(env, cs.GetEnv())
	cwd := cs.GetDir()
	if cwd == "" {
		cwd = img.Config.WorkingDir
	}
	user := cs.GetUser()
	if user == "" {
		user = img.Config.User
	}
	spec := container.Spec{
		ID:         t.GetId(),
		Hostname:   hostname,
		Layers:     img.Layers,
		Args:       args,
		Env:        env,
		Cwd:        cwd,
		User:       user,
		NetNSPath:  ep.NetNSPath,
		Labels:     cs.GetLabels(),
		Hosts:      []byte(fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n%s\t%s\n", ep.Address.Addr(), hostname)),
		ResolvConf: resolv,
		Resources:  containerResources(cs.GetResources()),
	}
	if err := e.Runtime.Create(ctx, spec); err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	return addrs, nil
}

// Start implements Executor: the task's ports are published first, so the
// container's first answer can already go through them, and withdrawn
// again if the container does not start. A host port some process of the
// host is bound to fails the start rather than shadow that process.
func (e *RuncExecutor) Start(ctx context.Context, t *shoalpb.Task) error {
	if err := e.publishPorts(ctx, t, true); err != nil {
		return err
	}
	if err := e.Runtime.Start(ctx, t.GetId()); err != nil {
		if perr := e.publisher().unpublish(ctx, t.GetId()); perr != nil {
			e.Logger.Warn("withdraw published ports", "task", t.GetId(), "err", perr)
		}
		return err
	}
	if e.Overlay != nil {
		e.Overlay.SetReady(t.GetId(), true)
	}
	return nil
}

// Adopt implements Executor: it publishes the task's ports again, which
// only the daemon process that started the container knew of.
func (e *RuncExecutor) Adopt(ctx context.Context, t *shoalpb.Task) error {
	if len(t.GetNetworks()) > 0 && e.Overlay != nil {
		ep, err := e.Network.Lookup(t.GetId())
		if err != nil {
			return fmt.Errorf("adopt: %w", err)
		}
		if err := e.Overlay.Attach(ctx, t, ep.NetNSPath); err != nil {
			return fmt.Errorf("adopt: %w", err)
		}
		e.Overlay.SetReady(t.GetId(), true)
	}
	return e.publishPorts(ctx, t, false)
}

func (e *RuncExecutor) publisher() *portPublisher {
	e.portsOnce.Do(func() { e.ports = newPortPublisher(e.Network.Ports(), e.Logger) })
	return e.ports
}

// publishPorts publishes t's host-mode ports on its container's address,
// after checking that no socket of the host holds them when checkFree.
func (e *RuncExecutor) publishPorts(ctx context.Context, t *shoalpb.Task, checkFree bool) error {
	if len(t.GetSpec().GetEndpoint().GetPorts()) == 0 {
		return nil
	}
	ep, err := e.Network.Lookup(t.GetId())
	if err != nil {
		return fmt.Errorf("publish ports: %w", err)
	}
	ms, skipped := hostMappings(t, ep.Address.Addr())
	for _, pc := range skipped {
		e.Logger.Warn("port not published: only host mode with a published port is supported so far",
			"task", t.GetId(), "port", portString(pc))
	}
	if checkFree {
		if err := e.Network.Ports().CheckFree(ctx, ms); err != nil {
			return fmt.Errorf("publish ports: %w", err)
		}
	}
	if err := e.publisher().publish(ctx, t.GetId(), ms); err != nil {
		return fmt.Errorf("publish ports: %w", err)
	}
	if len(ms) > 0 {
		e.Logger.Info("published ports", "task", t.GetId(), "mappings", ms)
	}
	return nil
}

// unpublishPorts withdraws the task's ports. A failure is logged, not
// returned: the container stopped either way, and the next write of the
// port table (Remove's at the latest) retries.
func (e *RuncExecutor) unpublishPorts(ctx context.Context, id string) {
	if err := e.publisher().unpublish(ctx, id); err != nil && ctx.Err() == nil {
		e.Logger.Warn("withdraw published ports", "task", id, "err", err)
	}
}

// Inspect implements Executor.
func (e *RuncExecutor) Inspect(ctx context.Context, id string) (ContainerStatus, error) {
	st, err := e.Runtime.Status(ctx, id)
	if err != nil {
		return ContainerStatus{}, err
	}
	return convertStatus(st), nil
}

// Wait implements Executor.
func (e *RuncExecutor) Wait(ctx context.Context, id string) (ContainerStatus, error) {
	st, err := e.Runtime.Wait(ctx, id)
	if err != nil {
		return ContainerStatus{}, err
	}
	e.unpublishPorts(ctx, id)
	if e.Overlay != nil {
		e.Overlay.SetReady(id, false)
	}
	return convertStatus(st), nil
}

// Stop implements Executor: the task's stop signal (else the image's, else
// SIGTERM), then SIGKILL after the grace period.
func (e *RuncExecutor) Stop(ctx context.Context, t *shoalpb.Task) (ContainerStatus, error) {
	cs := t.GetSpec().GetContainer()
	sigName := cs.GetStopSignal()
	if sigName == "" {
		if img, err := e.Images.Get(cs.GetImage()); err == nil {
			sigName = img.Config.StopSignal
		}
	}
	sig := syscall.SIGTERM
	if sigName != "" {
		s, err := container.ParseSignal(sigName)
		if err != nil {
			return ContainerStatus{}, fmt.Errorf("stop signal: %w", err)
		}
		sig = s
	}
	grace := defaultStopGracePeriod
	if g := cs.GetStopGracePeriod(); g != nil {
		grace = g.AsDuration()
	}
	// New connections stop first; established ones keep their conntrack
	// entry and finish during the grace period.
	e.unpublishPorts(ctx, t.GetId())
	if e.Overlay != nil && len(t.GetNetworks()) > 0 {
		// Withdraw from every host's DNS answers and VIP tables, and give
		// the withdrawal time to get there before the task stops taking
		// connections.
		e.Overlay.SetReady(t.GetId(), false)
		select {
		case <-time.After(overlayDrainDelay):
		case <-ctx.Done():
		}
	}
	st, err := e.Runtime.Stop(ctx, t.GetId(), sig, grace)
	if err != nil {
		return ContainerStatus{}, err
	}
	return convertStatus(st), nil
}

// Remove implements Executor: published ports, container, rootfs and
// network endpoint. The ports go first and must go: a mapping must never
// outlive its address, which the bridge hands to a later container.
func (e *RuncExecutor) Remove(ctx context.Context, id string) error {
	if err := e.publisher().unpublish(ctx, id); err != nil {
		return fmt.Errorf("withdraw published ports of %s: %w", id, err)
	}
	if err := e.Runtime.Remove(ctx, id); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	if e.Overlay != nil {
		if err := e.Overlay.Detach(ctx, id); err != nil {
			return fmt.Errorf("detach %s from its overlay networks: %w", id, err)
		}
	}
	if err := e.Network.Detach(ctx, id); err != nil {
		return fmt.Errorf("detach %s from the local network: %w", id, err)
	}
	return nil
}

// List implements Executor: containers and network endpoints left on disk.
func (e *RuncExecutor) List(ctx context.Context) ([]string, error) {
	ids, err := e.Runtime.List(ctx)
	if err != nil {
		return nil, err
	}
	eps, err := e.Network.Endpoints()
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		seen[id] = true
	}
	for _, id := range eps {
		if !seen[id] {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

func convertStatus(st container.Status) ContainerStatus {
	out := ContainerStatus{
		Pid:         st.Pid,
		ExitCode:    st.ExitCode,
		Signal:      st.Signal,
		OOMKilled:   st.OOMKilled,
		MemoryLimit: st.MemoryLimit,
		StartedAt:   st.StartedAt,
		FinishedAt:  st.FinishedAt,
	}
	switch st.State {
	case container.StateCreated:
		out.State = ContainerCreated
	case container.StateRunning:
		out.State = ContainerRunning
	case container.StateExited:
		out.State = ContainerExited
	default:
		out.State = ContainerAbsent
	}
	return out
}

// containerResources is the part of a task's resources its cgroup
// enforces: the limits. Reservations are the scheduler's business only, as
// in Swarm.
func containerResources(rr *shoalpb.ResourceRequirements) container.Resources {
	return container.Resources{
		MemoryBytes: rr.GetLimits().GetMemoryBytes(),
		NanoCPUs:    rr.GetLimits().GetNanoCpus(),
		PidsLimit:   rr.GetPidsLimit(),
	}
}

// resolveArgs combines entrypoint and cmd the way Docker does: the
// service's command replaces the entrypoint (and drops the image's cmd), its
// args replace the cmd.
func resolveArgs(img image.RunConfig, cs *shoalpb.ContainerSpec) []string {
	entry, cmd := img.Entrypoint, img.Cmd
	if len(cs.GetCommand()) > 0 {
		entry, cmd = cs.GetCommand(), nil
	}
	if len(cs.GetArgs()) > 0 {
		cmd = cs.GetArgs()
	}
	return append(append([]string{}, entry...), cmd...)
}

// mergeEnv overrides base KEY=VALUE pairs with extra ones, keeping order.
func mergeEnv(base, extra []string) []string {
	idx := make(map[string]int, len(base))
	out := append([]string{}, base...)
	for i, kv := range out {
		k, _, _ := strings.Cut(kv, "=")
		idx[k] = i
	}
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// hostResolvConf is the host's resolv.conf without loopback nameservers,
// which mean nothing inside a container's own network namespace.
func hostResolvConf() []byte {
	b, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" && (strings.HasPrefix(f[1], "127.") || f[1] == "::1") {
			continue
		}
		out = append(out, line)
	}
	return []byte(strings.Join(out, "\n"))
}
