package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Service modes, as --mode spells them.
const (
	modeReplicated = "replicated"
	modeGlobal     = "global"
)

const (
	// defaultReplicas is a replicated service's size when --replicas is not
	// given: one, as Docker.
	defaultReplicas = 1
	// defaultConvergeTimeout bounds how long `service create` waits for its
	// tasks to run: long enough to pull an image of a few hundred MB,
	// short enough that a stuck rollout does not hang a script.
	defaultConvergeTimeout = 2 * time.Minute
	// convergePoll is how often `service create` looks at the tasks. Task
	// states change in tens of milliseconds here (runc starts in ~55 ms);
	// 200ms keeps the display live at five small calls a second.
	convergePoll = 200 * time.Millisecond
)

// createOptions are the flags of `service create`.
type createOptions struct {
	name            string
	replicas        int64 // signed, to report a negative value rather than fail parsing it
	mode            string
	env             []string
	labels          []string
	constraints     []string
	placementPrefs  []string
	networks        []string
	endpointMode    string
	maxPerNode      uint64
	reserveCPU      string
	reserveMemory   string
	limitCPU        string
	limitMemory     string
	limitPids       int64
	restartCond     string
	restartDelay    time.Duration
	restartDelaySet bool // --restart-delay was given (0 is a valid delay)
	restartAttempts uint64
	restartWindow   time.Duration
	entrypoint      string
	workdir         string
	user            string
	hostname        string
	stopSignal      string
	stopGracePeriod time.Duration
	publish         []string
	detach          bool
	timeout         time.Duration
}

func newServiceCreateCmd(a *app) *cobra.Command {
	var o createOptions
	c := &cobra.Command{
		Use:   "create [flags] IMAGE [ARG...]",
		Short: "Create a service",
		Long: `Create a service running IMAGE. ARGs after IMAGE replace the image's CMD
(as 'docker run' does); --entrypoint replaces its ENTRYPOINT and is split on
whitespace. Options must come before IMAGE: everything after it belongs to
the container's command.

--publish makes a container port reachable on a port of the host running
the task, on every address of that host (mode=host; the routing mesh,
mode=ingress, does not exist yet). Two tasks publishing the same host port
cannot share a node, so a replicated service publishing a port runs at
most one task per node: use --mode global, or no more replicas than nodes.
A task fails to start if a process of its host is bound to the port (shoald's
own cluster port included); a process that binds the port later does not
get its traffic: the published port takes precedence.

Unless --detach is given, the command waits until every task runs, showing
progress, and fails if a task fails or is rejected, or if the service has
not converged within --timeout. The service ID is printed last, on stdout.`,
		Example: `  shoal service create --name web --replicas 3 shoal/web:latest
  shoal service create --name worker --env QUEUE=jobs --env WORKERS=4 shoal/worker
  shoal service create --name agent --mode global --constraint node.labels.gpu==true busybox sleep 3600
  shoal service create --name api --replicas 4 --placement-pref spread=node.labels.zone \
      --reserve-memory 128M --limit-memory 256M --limit-cpu 0.5 shoal/api
  shoal service create --name job --restart-condition on-failure --restart-max-attempts 3 shoal/job
  shoal service create --name edge --mode global --publish 80:8080 --publish published=5353,target=53,protocol=udp,mode=host shoal/edge
  shoal service create -d --name batch --entrypoint "/bin/sh -c" busybox 'echo hi; sleep 60'`,
		Args: minArgs(1, "IMAGE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.restartDelaySet = cmd.Flags().Changed("restart-delay")
			spec, err := o.spec(args[0], args[1:], cmd.Flags().Changed("replicas"))
			if err != nil {
				return err
			}
			if o.timeout <= 0 {
				return usageErrorf("--timeout must be positive, got %s", o.timeout)
			}
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			resp, err := d.control.CreateService(ctx, &shoalpb.CreateServiceRequest{Spec: spec})
			if err != nil {
				return fmt.Errorf("create service: %w", err)
			}
			svc := resp.GetService()
			if !o.detach {
				err = waitConverged(ctx, d, svc, o.timeout, a.stderr, isTerminal(a.stderr))
			}
			// The service exists even when it failed to converge: print its
			// ID so that the caller can inspect or remove it.
			fmt.Fprintln(a.stdout, svc.GetId())
			return err
		},
	}
	f := c.Flags()
	f.SetInterspersed(false)
	f.StringVar(&o.name, "name", "", "service name (default: chosen by the manager)")
	f.Int64Var(&o.replicas, "replicas", defaultReplicas, "number of tasks of a replicated service")
	f.StringVar(&o.mode, "mode", modeReplicated, "replicated (--replicas tasks) or global (one task per node)")
	f.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringArrayVarP(&o.labels, "label", "l", nil, "service label KEY=VALUE (repeatable)")
	f.StringArrayVar(&o.constraints, "constraint", nil, "placement constraint, e.g. node.role==worker or node.labels.zone!=b (repeatable; all must hold)")
	f.StringArrayVar(&o.networks, "network", nil, "attach the tasks to an overlay network: NAME or name=NAME,alias=ALIAS (repeatable)")
	f.StringVar(&o.endpointMode, "endpoint-mode", "vip", "vip (one virtual IP per network, balanced to ready tasks) or dnsrr (the name resolves to the tasks' IPs)")
	f.StringArrayVar(&o.placementPrefs, "placement-pref", nil, "spread tasks over a node label's values, e.g. spread=node.labels.zone (repeatable, nested in order)")
	f.Uint64Var(&o.maxPerNode, "replicas-max-per-node", 0, "at most this many tasks of the service on one node (0: no limit)")
	f.StringVar(&o.reserveCPU, "reserve-cpu", "", "CPUs set aside for each task on its node, e.g. 0.5")
	f.StringVar(&o.reserveMemory, "reserve-memory", "", "memory set aside for each task on its node, e.g. 256M")
	f.StringVar(&o.limitCPU, "limit-cpu", "", "CPU limit of each container, e.g. 1.5 (enforced by CFS quota)")
	f.StringVar(&o.limitMemory, "limit-memory", "", "memory limit of each container, e.g. 512M; a container above it is OOM-killed")
	f.Int64Var(&o.limitPids, "limit-pids", 0, "process and thread limit of each container (0: none)")
	f.StringVar(&o.restartCond, "restart-condition", "", "restart a finished task: any (default), on-failure or none")
	f.DurationVar(&o.restartDelay, "restart-delay", 0, "wait between a task ending and its restart (default: at once, backing off while failures repeat)")
	f.Uint64Var(&o.restartAttempts, "restart-max-attempts", 0, "give up restarting a slot after this many restarts within --restart-window (0: never give up)")
	f.DurationVar(&o.restartWindow, "restart-window", 0, "window in which --restart-max-attempts counts (default: forever)")
	f.StringVar(&o.entrypoint, "entrypoint", "", "replace the image's ENTRYPOINT (split on whitespace)")
	f.StringVarP(&o.workdir, "workdir", "w", "", "working directory in the container")
	f.StringVarP(&o.user, "user", "u", "", "user[:group] the container runs as")
	f.StringVar(&o.hostname, "hostname", "", "container hostname")
	f.StringVar(&o.stopSignal, "stop-signal", "", "signal that stops the container (default SIGTERM)")
	f.DurationVar(&o.stopGracePeriod, "stop-grace-period", 0, "time between the stop signal and SIGKILL (default 10s)")
	f.StringArrayVarP(&o.publish, "publish", "p", nil, "publish a container port on the host running each task: PUBLISHED:TARGET[/udp] or published=PORT,target=PORT[,protocol=tcp|udp][,mode=host] (repeatable; the short form means mode=host, the only mode supported so far)")
	f.BoolVarP(&o.detach, "detach", "d", false, "return once the service is created, without waiting for its tasks")
	f.DurationVar(&o.timeout, "timeout", defaultConvergeTimeout, "how long to wait for every task to run")
	return c
}

// spec validates the options and builds the service spec. replicasSet says
// whether --replicas was given (it conflicts with --mode global).
func (o *createOptions) spec(image string, args []string, replicasSet bool) (*shoalpb.ServiceSpec, error) {
	if image == "" {
		return nil, usageErrorf("IMAGE must not be empty")
	}
	spec := &shoalpb.ServiceSpec{
		Name: o.name,
		Container: &shoalpb.ContainerSpec{
			Image:    image,
			Args:     args,
			Command:  strings.Fields(o.entrypoint),
			Dir:      o.workdir,
			User:     o.user,
			Hostname: o.hostname,
		},
	}
	switch o.mode {
	case modeReplicated:
		if err := validateReplicas(o.replicas); err != nil {
			return nil, err
		}
		spec.Mode = &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: uint64(o.replicas)}}
	case modeGlobal:
		if replicasSet {
			return nil, usageErrorf("--replicas cannot be used with --mode global (a global service runs one task per node)")
		}
		spec.Mode = &shoalpb.ServiceSpec_Global{Global: &shoalpb.GlobalService{}}
	default:
		return nil, usageErrorf("--mode must be %s or %s, got %q", modeReplicated, modeGlobal, o.mode)
	}
	env, err := parseEnv(o.env)
	if err != nil {
		return nil, err
	}
	spec.Container.Env = env
	if spec.Labels, err = parseKeyValues("--label", o.labels); err != nil {
		return nil, err
	}
	if spec.Networks, err = parseNetworks(o.networks); err != nil {
		return nil, err
	}
	switch o.endpointMode {
	case "", "vip":
	case "dnsrr":
		if spec.Endpoint == nil {
			spec.Endpoint = &shoalpb.EndpointSpec{}
		}
		spec.Endpoint.Mode = shoalpb.EndpointSpec_MODE_DNSRR
	default:
		return nil, usageErrorf("--endpoint-mode must be vip or dnsrr, got %q", o.endpointMode)
	}
	if spec.Placement, err = o.placement(); err != nil {
		return nil, err
	}
	if spec.Container.Resources, err = o.resources(); err != nil {
		return nil, err
	}
	if spec.RestartPolicy, err = o.restartPolicy(); err != nil {
		return nil, err
	}
	ports, err := parsePublish(o.publish)
	if err != nil {
		return nil, err
	}
	if len(ports) > 0 {
		if spec.Endpoint == nil {
			spec.Endpoint = &shoalpb.EndpointSpec{}
		}
		spec.Endpoint.Ports = ports
	}
	if o.stopSignal != "" {
		sig, err := parseSignal(o.stopSignal)
		if err != nil {
			return nil, err
		}
		spec.Container.StopSignal = sig
	}
	switch {
	case o.stopGracePeriod < 0:
		return nil, usageErrorf("--stop-grace-period must be 0 or more, got %s", o.stopGracePeriod)
	case o.stopGracePeriod > 0:
		spec.Container.StopGracePeriod = durationpb.New(o.stopGracePeriod)
	}
	return spec, nil
}

// parseNetworks parses --network values: NAME, or name=NAME[,alias=A]...
func parseNetworks(vals []string) ([]*shoalpb.NetworkAttachmentConfig, error) {
	var out []*shoalpb.NetworkAttachmentConfig
	for _, v := range vals {
		if !strings.Contains(v, "=") {
			if v == "" {
				return nil, usageErrorf("--network must name a network")
			}
			out = append(out, &shoalpb.NetworkAttachmentConfig{Target: v})
			continue
		}
		a := &shoalpb.NetworkAttachmentConfig{}
		for _, field := range strings.Split(v, ",") {
			k, val, _ := strings.Cut(field, "=")
			switch {
			case k == "name" && val != "":
				a.Target = val
			case k == "alias" && val != "":
				a.Aliases = append(a.Aliases, val)
			default:
				return nil, usageErrorf("--network %q: expected NAME or name=NAME[,alias=ALIAS]...", v)
			}
		}
		if a.Target == "" {
			return nil, usageErrorf("--network %q: name=NAME is missing", v)
		}
		out = append(out, a)
	}
	return out, nil
}

// placement builds the placement from --constraint, --placement-pref and
// --replicas-max-per-node; nil when none is given.
func (o *createOptions) placement() (*shoalpb.Placement, error) {
	if len(o.constraints) == 0 && len(o.placementPrefs) == 0 && o.maxPerNode == 0 {
		return nil, nil
	}
	p := &shoalpb.Placement{Constraints: o.constraints, MaxReplicas: o.maxPerNode}
	for _, v := range o.placementPrefs {
		kind, key, ok := strings.Cut(v, "=")
		if !ok || kind != "spread" || key == "" {
			return nil, usageErrorf("--placement-pref %q must be spread=LABEL, e.g. spread=node.labels.zone", v)
		}
		p.Preferences = append(p.Preferences, &shoalpb.PlacementPreference{Spread: key})
	}
	return p, nil
}

// resources builds the resource requirements from --reserve-* and
// --limit-*; nil when none is given.
func (o *createOptions) resources() (*shoalpb.ResourceRequirements, error) {
	r := &shoalpb.ResourceRequirements{Limits: &shoalpb.Resources{}, Reservations: &shoalpb.Resources{}}
	var err error
	if r.Reservations.NanoCpus, err = parseCPUs("--reserve-cpu", o.reserveCPU); err != nil {
		return nil, err
	}
	if r.Limits.NanoCpus, err = parseCPUs("--limit-cpu", o.limitCPU); err != nil {
		return nil, err
	}
	if r.Reservations.MemoryBytes, err = parseBytes("--reserve-memory", o.reserveMemory); err != nil {
		return nil, err
	}
	if r.Limits.MemoryBytes, err = parseBytes("--limit-memory", o.limitMemory); err != nil {
		return nil, err
	}
	if o.limitPids < 0 {
		return nil, usageErrorf("--limit-pids must be 0 or more, got %d", o.limitPids)
	}
	r.PidsLimit = o.limitPids
	if proto.Equal(r, &shoalpb.ResourceRequirements{Limits: &shoalpb.Resources{}, Reservations: &shoalpb.Resources{}}) {
		return nil, nil
	}
	return r, nil
}

// restartPolicy builds the restart policy from --restart-*; nil when none
// is given.
func (o *createOptions) restartPolicy() (*shoalpb.RestartPolicy, error) {
	p := &shoalpb.RestartPolicy{MaxAttempts: o.restartAttempts}
	set := o.restartAttempts > 0
	switch o.restartCond {
	case "":
	case "any":
		set = true
	case "on-failure":
		p.Condition, set = shoalpb.RestartPolicy_CONDITION_ON_FAILURE, true
	case "none":
		p.Condition, set = shoalpb.RestartPolicy_CONDITION_NONE, true
	default:
		return nil, usageErrorf("--restart-condition must be any, on-failure or none, got %q", o.restartCond)
	}
	switch {
	case o.restartDelay < 0:
		return nil, usageErrorf("--restart-delay must be 0 or more, got %s", o.restartDelay)
	case o.restartDelaySet:
		p.Delay, set = durationpb.New(o.restartDelay), true
	}
	switch {
	case o.restartWindow < 0:
		return nil, usageErrorf("--restart-window must be 0 or more, got %s", o.restartWindow)
	case o.restartWindow > 0:
		p.Window, set = durationpb.New(o.restartWindow), true
	}
	if !set {
		return nil, nil
	}
	return p, nil
}

// publishForms is what --publish takes, for error messages.
const publishForms = "PUBLISHED:TARGET[/tcp|/udp] or published=PORT,target=PORT[,protocol=tcp|udp][,mode=host]"

// parsePublish parses --publish values: the short form "8080:80[/udp]"
// (Docker's, without its address and range variants) or the long form
// "published=8080,target=80[,protocol=tcp|udp][,mode=host|ingress]". Every
// port is published in host mode: the short form means it, and the long
// form refuses mode=ingress until the routing mesh exists. A host port may
// be published once per protocol. It returns nil for no values.
func parsePublish(vals []string) ([]*shoalpb.PortConfig, error) {
	var ports []*shoalpb.PortConfig
	seen := map[string]string{} // "8080/tcp" -> the value that published it
	for _, v := range vals {
		var (
			p   *shoalpb.PortConfig
			err error
		)
		if strings.Contains(v, "=") {
			p, err = parsePublishLong(v)
		} else {
			p, err = parsePublishShort(v)
		}
		if err != nil {
			return nil, err
		}
		key := fmt.Sprintf("%d/%s", p.GetPublishedPort(), protocolName(p.GetProtocol()))
		if prev, ok := seen[key]; ok {
			return nil, usageErrorf("--publish %q: host port %s is already published by --publish %q", v, key, prev)
		}
		seen[key] = v
		ports = append(ports, p)
	}
	return ports, nil
}

// parsePublishShort parses "8080:80", "8080:80/udp".
func parsePublishShort(v string) (*shoalpb.PortConfig, error) {
	ports, proto, hasProto := strings.Cut(v, "/")
	published, target, ok := strings.Cut(ports, ":")
	if !ok || strings.Contains(target, ":") {
		if strings.Count(ports, ":") > 1 {
			return nil, usageErrorf("--publish %q: a host address is not supported (a port is published on every address of the host); expected %s", v, publishForms)
		}
		return nil, usageErrorf("--publish %q: expected %s (the published port is required)", v, publishForms)
	}
	p := &shoalpb.PortConfig{PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST}
	var err error
	if p.PublishedPort, err = parsePortNumber(v, "published", published); err != nil {
		return nil, err
	}
	if p.TargetPort, err = parsePortNumber(v, "target", target); err != nil {
		return nil, err
	}
	if hasProto {
		if p.Protocol, err = parseProtocol(v, proto); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// parsePublishLong parses "published=8080,target=80,protocol=udp,mode=host".
func parsePublishLong(v string) (*shoalpb.PortConfig, error) {
	p := &shoalpb.PortConfig{PublishMode: shoalpb.PortConfig_PUBLISH_MODE_HOST}
	given := map[string]bool{}
	for _, field := range strings.Split(v, ",") {
		key, val, ok := strings.Cut(field, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		val = strings.TrimSpace(val)
		if !ok {
			return nil, usageErrorf("--publish %q: field %q must be KEY=VALUE; expected %s", v, field, publishForms)
		}
		if given[key] {
			return nil, usageErrorf("--publish %q: %s is given twice", v, key)
		}
		given[key] = true
		var err error
		switch key {
		case "published":
			p.PublishedPort, err = parsePortNumber(v, "published", val)
		case "target":
			p.TargetPort, err = parsePortNumber(v, "target", val)
		case "protocol":
			p.Protocol, err = parseProtocol(v, val)
		case "mode":
			switch strings.ToLower(val) {
			case "host":
			case "ingress":
				err = usageErrorf("--publish %q: mode=ingress (the routing mesh) is not supported yet; only mode=host is", v)
			default:
				err = usageErrorf("--publish %q: mode %q: expected host (ingress is not supported yet)", v, val)
			}
		default:
			err = usageErrorf("--publish %q: unknown field %q: expected published, target, protocol or mode", v, key)
		}
		if err != nil {
			return nil, err
		}
	}
	switch {
	case !given["target"]:
		return nil, usageErrorf("--publish %q: target=PORT is required", v)
	case !given["published"]:
		return nil, usageErrorf("--publish %q: published=PORT is required (Shoal does not choose a host port)", v)
	}
	return p, nil
}

// parsePortNumber parses one port of a --publish value.
func parsePortNumber(v, which, s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		if strings.Contains(s, "-") {
			return 0, usageErrorf("--publish %q: %s port %q: port ranges are not supported; expected a number from 1 to 65535", v, which, s)
		}
		return 0, usageErrorf("--publish %q: %s port %q: expected a number from 1 to 65535", v, which, s)
	}
	return uint32(n), nil
}

// parseProtocol parses the protocol of a --publish value.
func parseProtocol(v, s string) (shoalpb.PortConfig_Protocol, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return shoalpb.PortConfig_PROTOCOL_TCP, nil
	case "udp":
		return shoalpb.PortConfig_PROTOCOL_UDP, nil
	}
	return 0, usageErrorf("--publish %q: protocol %q: expected tcp or udp", v, s)
}

// parseCPUs parses a CPU count like "0.5" or "2" into nano CPUs; "" is 0.
func parseCPUs(flag, v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || f > 1e6 {
		return 0, usageErrorf("%s %q must be a number of CPUs, e.g. 0.5 or 2", flag, v)
	}
	return int64(f * 1e9), nil
}

// byteUnits are the suffixes parseBytes takes, binary as Docker's.
var byteUnits = map[string]int64{"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

// parseBytes parses a size like "64M", "1.5g", "512MiB" or "1048576" (bytes);
// "" is 0.
func parseBytes(flag, v string) (int64, error) {
	if v == "" {
		return 0, nil
	}
	s := strings.ToLower(strings.TrimSpace(v))
	s = strings.TrimSuffix(strings.TrimSuffix(s, "ib"), "b")
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], s[i:]
	}
	mult, ok := byteUnits[unit]
	f, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || f < 0 || f*float64(mult) > 1<<62 {
		return 0, usageErrorf("%s %q must be a size like 64M, 1.5G or 1048576 (bytes; units b, k, m, g, t)", flag, v)
	}
	return int64(f * float64(mult)), nil
}

// validateReplicas checks a --replicas value.
func validateReplicas(n int64) error {
	if n < 0 {
		return usageErrorf("--replicas must be 0 or more, got %d", n)
	}
	return nil
}

// parseEnv checks --env values: each must be KEY=VALUE with a non-empty KEY
// (VALUE may be empty).
func parseEnv(vals []string) ([]string, error) {
	for _, v := range vals {
		if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
			return nil, usageErrorf("--env %q must be KEY=VALUE", v)
		}
	}
	return vals, nil
}

// parseKeyValues parses repeated KEY=VALUE values of flag into a map; a
// later KEY replaces an earlier one. It returns nil for no values.
func parseKeyValues(flag string, vals []string) (map[string]string, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(vals))
	for _, v := range vals {
		k, val, ok := strings.Cut(v, "=")
		if !ok || k == "" {
			return nil, usageErrorf("%s %q must be KEY=VALUE", flag, v)
		}
		m[k] = val
	}
	return m, nil
}

// parseSignal checks a --stop-signal value and returns its canonical name:
// "term", "SIGTERM" and "15" all give "SIGTERM".
func parseSignal(s string) (string, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if name := unix.SignalName(unix.Signal(n)); name != "" {
			return name, nil
		}
		return "", usageErrorf("--stop-signal %q: no such signal", s)
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if unix.SignalNum(name) == 0 {
		return "", usageErrorf("--stop-signal %q: no such signal", s)
	}
	return name, nil
}

// progress is how far a service is from running all its tasks.
type progress struct {
	running, desired int
	// failed is a task that failed or was rejected, with its error.
	failed *shoalpb.Task
	// waiting says why tasks are not running yet, when the manager said.
	waiting string
}

func (p progress) converged() bool { return p.failed == nil && p.desired > 0 && p.running >= p.desired }

// progressOf counts a service's running tasks: one per slot whose current
// task (desired RUNNING) runs. A replicated service wants its replica count;
// a global one a task per eligible node, that is, as many as the
// orchestrator made.
func progressOf(svc *shoalpb.Service, tasks []*shoalpb.Task) progress {
	var p progress
	desired := 0
	for _, t := range tasks {
		st := t.GetStatus()
		if (st.GetState() == shoalpb.TaskState_TASK_STATE_FAILED || st.GetState() == shoalpb.TaskState_TASK_STATE_REJECTED) &&
			st.GetErr() != "" && (p.failed == nil || newer(t, p.failed)) {
			p.failed = t
		}
		if t.GetDesiredState() != shoalpb.TaskState_TASK_STATE_RUNNING {
			continue
		}
		desired++
		switch {
		case st.GetState() == shoalpb.TaskState_TASK_STATE_RUNNING:
			p.running++
		case p.waiting == "" && st.GetMessage() != "" && st.GetState() <= shoalpb.TaskState_TASK_STATE_ASSIGNED:
			p.waiting = strings.ToLower(taskStateWord(st.GetState())) + ": " + st.GetMessage()
		}
	}
	if r := svc.GetSpec().GetReplicated(); r != nil {
		p.desired = int(r.GetReplicas())
	} else {
		p.desired = desired
	}
	return p
}

// line is the progress display: "web: 2/3 running".
func (p progress) line(name string) string {
	s := fmt.Sprintf("%s: %d/%d running", name, p.running, p.desired)
	if p.waiting != "" && p.running < p.desired {
		s += " (" + p.waiting + ")"
	}
	return s
}

// failure describes a failed task: "task web.2 rejected: pull ...".
func failure(t *shoalpb.Task) error {
	return fmt.Errorf("task %s %s: %s", taskName(t), strings.ToLower(taskStateWord(t.GetStatus().GetState())), t.GetStatus().GetErr())
}

// waitConverged polls the service's tasks until every one runs, one fails,
// or timeout passes, writing progress to w: one line rewritten in place on
// a terminal, a new line per change otherwise.
func waitConverged(ctx context.Context, d *daemonClient, svc *shoalpb.Service, timeout time.Duration, w io.Writer, tty bool) error {
	name := svc.GetSpec().GetName()
	if name == "" {
		name = shortID(svc.GetId())
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(convergePoll)
	defer tick.Stop()
	last := ""
	show := func(s string) {
		if s == last {
			return
		}
		last = s
		if tty {
			fmt.Fprintf(w, "\r\033[K%s", s)
		} else {
			fmt.Fprintln(w, s)
		}
	}
	defer func() {
		if tty && last != "" {
			fmt.Fprintln(w)
		}
	}()
	var p progress
	for {
		resp, err := d.control.ListTasks(ctx, &shoalpb.ListTasksRequest{ServiceIds: []string{svc.GetId()}})
		switch {
		case ctx.Err() != nil:
			return convergeTimeout(ctx, name, timeout, p)
		case err != nil:
			return fmt.Errorf("watch service %s: %w", name, err)
		}
		p = progressOf(svc, resp.GetTasks())
		show(p.line(name))
		if p.failed != nil {
			return failure(p.failed)
		}
		// A service of zero replicas has nothing to wait for.
		if p.converged() || (svc.GetSpec().GetReplicated() != nil && p.desired == 0) {
			return nil
		}
		select {
		case <-ctx.Done():
			return convergeTimeout(ctx, name, timeout, p)
		case <-tick.C:
		}
	}
}

func convergeTimeout(ctx context.Context, name string, timeout time.Duration, p progress) error {
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ctx.Err()
	}
	return fmt.Errorf("service %s did not converge within %s: %d/%d running (see 'shoal service ps %s')", name, timeout, p.running, p.desired, name)
}

// isTerminal reports whether w is a terminal, where progress can be
// redrawn in place.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
