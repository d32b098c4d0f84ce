package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxScaleRetries is how many times `service scale` re-reads a service and
// tries again when another writer updated it between the read and the
// write. Conflicts need two writers within milliseconds of each other, so a
// few tries settle it; more would hide a runaway writer.
const maxScaleRetries = 3

func newServiceCmd(a *app) *cobra.Command {
	return newGroupCmd("service", "Manage services",
		`Create, list, scale and remove services: a container image run as tasks
on the cluster's nodes, either a number of replicas or one per node (global).`,
		newServiceCreateCmd(a), newServiceLsCmd(a), newServicePsCmd(a), newServiceInspectCmd(a),
		newServiceScaleCmd(a), newServiceRmCmd(a), newServiceLogsCmd(a))
}

func newServiceLsCmd(a *app) *cobra.Command {
	var (
		format string
		quiet  bool
	)
	c := &cobra.Command{
		Use:     "ls [flags]",
		Aliases: []string{"list"},
		Short:   "List services",
		Long: `List the cluster's services. REPLICAS is running/desired: tasks that are
running out of those that should be (for a global service, one per
eligible node). PORTS are the published ports, PUBLISHED->TARGET/PROTOCOL:
"host:" for a port published on each host that runs a task, "*:" for one
published on every node.`,
		Example: `  shoal service ls
  shoal service ls -q
  shoal service ls --format json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemonFor(ctx, format)
			if err != nil {
				return err
			}
			resp, err := d.control.ListServices(ctx, &shoalpb.ListServicesRequest{})
			if err != nil {
				return fmt.Errorf("list services: %w", err)
			}
			svcs := resp.GetServices()
			sort.Slice(svcs, func(i, j int) bool { return svcs[i].GetSpec().GetName() < svcs[j].GetSpec().GetName() })
			switch {
			case quiet:
				for _, s := range svcs {
					fmt.Fprintln(a.stdout, s.GetId())
				}
				return nil
			case format == formatJSON:
				return writeJSONArray(a.stdout, svcs)
			}
			tasks, err := d.control.ListTasks(ctx, &shoalpb.ListTasksRequest{})
			if err != nil {
				return fmt.Errorf("list tasks: %w", err)
			}
			byService := map[string][]*shoalpb.Task{}
			for _, t := range tasks.GetTasks() {
				byService[t.GetServiceId()] = append(byService[t.GetServiceId()], t)
			}
			w := newTable(a.stdout)
			row(w, "ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS")
			for _, s := range svcs {
				p := progressOf(s, byService[s.GetId()])
				row(w, shortID(s.GetId()), s.GetSpec().GetName(), serviceMode(s.GetSpec()),
					fmt.Sprintf("%d/%d", p.running, p.desired), s.GetSpec().GetContainer().GetImage(),
					formatPorts(s.GetSpec()))
			}
			return w.Flush()
		},
	}
	c.Flags().StringVar(&format, "format", formatTable, "output format: table or json")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "only print service IDs")
	return c
}

func newServicePsCmd(a *app) *cobra.Command {
	var (
		format  string
		quiet   bool
		noTrunc bool
		all     bool
	)
	c := &cobra.Command{
		Use:   "ps [flags] SERVICE [SERVICE...]",
		Short: "List the tasks of services",
		Long: `List the tasks of services, one group per slot (replica number, or node for
a global service): the slot's newest task first, then its history, newest
first, marked with " \_ ".

By default slots the service no longer has (after a scale down) are left
out; --all shows them too.`,
		Example: `  shoal service ps web
  shoal service ps --no-trunc web
  shoal service ps -q web`,
		Args: minArgs(1, "SERVICE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			d, err := a.daemonFor(ctx, format)
			if err != nil {
				return err
			}
			var svcs []*shoalpb.Service
			for _, arg := range args {
				s, err := getService(ctx, d, arg)
				if err != nil {
					return err
				}
				svcs = append(svcs, s)
			}
			req := &shoalpb.ListTasksRequest{}
			for _, s := range svcs {
				req.ServiceIds = append(req.ServiceIds, s.GetId())
			}
			resp, err := d.control.ListTasks(ctx, req)
			if err != nil {
				return fmt.Errorf("list tasks: %w", err)
			}
			rows := psRows(svcs, resp.GetTasks(), all)
			switch {
			case quiet:
				for _, r := range rows {
					fmt.Fprintln(a.stdout, r.task.GetId())
				}
				return nil
			case format == formatJSON:
				tasks := make([]*shoalpb.Task, len(rows))
				for i, r := range rows {
					tasks[i] = r.task
				}
				return writeJSONArray(a.stdout, tasks)
			}
			names := nodeNames(ctx, d)
			now := time.Now()
			w := newTable(a.stdout)
			row(w, "ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "ADDRESS")
			for _, r := range rows {
				t := r.task
				id, name, image, errMsg := t.GetId(), taskName(t), t.GetSpec().GetContainer().GetImage(), t.GetStatus().GetErr()
				if errMsg == "" && t.GetStatus().GetState() == shoalpb.TaskState_TASK_STATE_PENDING {
					// Why the task waits, as Swarm shows it: "no suitable node (...)".
					errMsg = t.GetStatus().GetMessage()
				}
				if !noTrunc {
					id, image, errMsg = shortID(id), trimDigest(image), truncate(errMsg, maxErrLen)
				}
				if r.history {
					name = ` \_ ` + name
				}
				row(w, id, name, image, nodeName(names, t.GetNodeId()),
					taskStateWord(t.GetDesiredState()),
					stateSince(taskStateWord(t.GetStatus().GetState()), t.GetStatus().GetTimestamp().AsTime(), now),
					errMsg, strings.Join(t.GetStatus().GetAddresses(), ","))
			}
			return w.Flush()
		},
	}
	c.Flags().StringVar(&format, "format", formatTable, "output format: table or json")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "only print task IDs")
	c.Flags().BoolVar(&noTrunc, "no-trunc", false, "do not shorten IDs, image digests and errors")
	c.Flags().BoolVarP(&all, "all", "a", false, "also show slots the service no longer has")
	return c
}

// psRow is one line of `service ps`.
type psRow struct {
	task    *shoalpb.Task
	history bool // an older task of the slot above
}

// psRows groups tasks by service and slot (the node, for global services)
// and orders each group newest first. Unless all is set it drops the slots
// a service no longer has: those with no task meant to run that are also
// beyond a replicated service's replica count (so a slot whose task just
// failed, waiting for its replacement, stays visible).
func psRows(svcs []*shoalpb.Service, tasks []*shoalpb.Task, all bool) []psRow {
	type slotKey struct {
		service string
		slot    uint64
		node    string
	}
	groups := map[slotKey][]*shoalpb.Task{}
	var keys []slotKey
	for _, t := range tasks {
		k := slotKey{service: t.GetServiceId(), slot: t.GetSlot()}
		if k.slot == 0 {
			k.node = t.GetNodeId()
		}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], t)
	}
	order := map[string]int{}
	replicas := map[string]uint64{}
	for i, s := range svcs {
		order[s.GetId()] = i
		if r := s.GetSpec().GetReplicated(); r != nil {
			replicas[s.GetId()] = r.GetReplicas()
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.service != b.service {
			return order[a.service] < order[b.service]
		}
		if a.slot != b.slot {
			return a.slot < b.slot
		}
		return a.node < b.node
	})
	var rows []psRow
	for _, k := range keys {
		g := groups[k]
		if !all && !slotCurrent(g, k.slot, replicas[k.service]) {
			continue
		}
		sort.SliceStable(g, func(i, j int) bool { return newer(g[i], g[j]) })
		for i, t := range g {
			rows = append(rows, psRow{task: t, history: i > 0})
		}
	}
	return rows
}

// slotCurrent reports whether a slot with these tasks is part of its
// service now.
func slotCurrent(tasks []*shoalpb.Task, slot, replicas uint64) bool {
	if slot > 0 && slot <= replicas {
		return true
	}
	for _, t := range tasks {
		if t.GetDesiredState() == shoalpb.TaskState_TASK_STATE_RUNNING {
			return true
		}
	}
	return false
}

// newer orders tasks by creation, newest first; the task ID breaks ties so
// the order is stable.
func newer(a, b *shoalpb.Task) bool {
	ta, tb := a.GetMeta().GetCreatedAt().AsTime(), b.GetMeta().GetCreatedAt().AsTime()
	if !ta.Equal(tb) {
		return ta.After(tb)
	}
	if a.GetMeta().GetVersion() != b.GetMeta().GetVersion() {
		return a.GetMeta().GetVersion() > b.GetMeta().GetVersion()
	}
	return a.GetId() > b.GetId()
}

func newServiceInspectCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect SERVICE [SERVICE...]",
		Short: "Show services in detail, as JSON",
		Long:  "Print the services as a JSON array. SERVICE is a name, an ID or a unique ID prefix.",
		Example: `  shoal service inspect web
  shoal service inspect web | jq '.[0].spec.container'`,
		Args: minArgs(1, "SERVICE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return inspectAll(cmd.Context(), a, args, getService)
		},
	}
}

func newServiceScaleCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "scale SERVICE=REPLICAS [SERVICE=REPLICAS...]",
		Short: "Change the number of replicas of services",
		Long: `Set the replica count of replicated services. The change is applied and the
command returns; follow it with 'shoal service ps'.`,
		Example: `  shoal service scale web=5
  shoal service scale web=0 worker=2`,
		Args: minArgs(1, "SERVICE=REPLICAS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			type target struct {
				service  string
				replicas uint64
			}
			var targets []target
			for _, arg := range args {
				s, n, err := parseScaleArg(arg)
				if err != nil {
					return err
				}
				targets = append(targets, target{s, n})
			}
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			var errs []error
			for _, t := range targets {
				if err := scaleService(ctx, d, t.service, t.replicas); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(a.stdout, "%s scaled to %d\n", t.service, t.replicas)
			}
			return reportAll(a, errs)
		},
	}
}

// parseScaleArg parses a SERVICE=REPLICAS argument of `service scale`.
func parseScaleArg(arg string) (string, uint64, error) {
	name, val, ok := strings.Cut(arg, "=")
	n, err := strconv.ParseUint(val, 10, 64)
	if !ok || name == "" || err != nil {
		return "", 0, usageErrorf("scale: %q: expected SERVICE=REPLICAS", arg)
	}
	return name, n, nil
}

// scaleService sets a replicated service's replica count, re-reading and
// retrying when another write got in between (FailedPrecondition).
func scaleService(ctx context.Context, d *daemonClient, name string, replicas uint64) error {
	for attempt := 0; ; attempt++ {
		svc, err := getService(ctx, d, name)
		if err != nil {
			return err
		}
		spec := svc.GetSpec()
		if spec.GetReplicated() == nil {
			return fmt.Errorf("scale %s: only replicated services can be scaled (this one is %s)", name, serviceMode(spec))
		}
		spec.Mode = &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: replicas}}
		_, err = d.control.UpdateService(ctx, &shoalpb.UpdateServiceRequest{
			ServiceId: svc.GetId(), Version: svc.GetMeta().GetVersion(), Spec: spec,
		})
		if err == nil {
			return nil
		}
		if status.Code(err) != codes.FailedPrecondition || attempt >= maxScaleRetries {
			return fmt.Errorf("scale %s: %w", name, err)
		}
	}
}

func newServiceRmCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "rm SERVICE [SERVICE...]",
		Aliases: []string{"remove"},
		Short:   "Remove services",
		Long:    "Remove services: their tasks are stopped and deleted. Prints each service removed.",
		Example: `  shoal service rm web
  shoal service rm $(shoal service ls -q)`,
		Args: minArgs(1, "SERVICE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			var errs []error
			for _, arg := range args {
				if _, err := d.control.RemoveService(ctx, &shoalpb.RemoveServiceRequest{Service: arg}); err != nil {
					errs = append(errs, fmt.Errorf("remove %s: %w", arg, err))
					continue
				}
				fmt.Fprintln(a.stdout, arg)
			}
			return reportAll(a, errs)
		},
	}
}

// getService looks a service up by name, ID or unique ID prefix.
func getService(ctx context.Context, d *daemonClient, arg string) (*shoalpb.Service, error) {
	resp, err := d.control.GetService(ctx, &shoalpb.GetServiceRequest{Service: arg})
	if err != nil {
		return nil, fmt.Errorf("service %s: %w", arg, err)
	}
	if resp.GetService() == nil {
		return nil, fmt.Errorf("service %s: not found", arg)
	}
	return resp.GetService(), nil
}

func serviceMode(spec *shoalpb.ServiceSpec) string {
	if spec.GetGlobal() != nil {
		return modeGlobal
	}
	return modeReplicated
}

// formatPorts writes a service's published ports for a table, comma
// separated: "host:8080->80/tcp" for a host-mode port, "*:8080->80/tcp" for
// an ingress one.
func formatPorts(spec *shoalpb.ServiceSpec) string {
	var out []string
	for _, p := range spec.GetEndpoint().GetPorts() {
		where := "*"
		if p.GetPublishMode() == shoalpb.PortConfig_PUBLISH_MODE_HOST {
			where = "host"
		}
		out = append(out, fmt.Sprintf("%s:%d->%d/%s", where, p.GetPublishedPort(), p.GetTargetPort(), protocolName(p.GetProtocol())))
	}
	return strings.Join(out, ",")
}

// protocolName is "tcp" or "udp".
func protocolName(p shoalpb.PortConfig_Protocol) string {
	if p == shoalpb.PortConfig_PROTOCOL_UDP {
		return "udp"
	}
	return "tcp"
}

// taskName is how tables and logs name a task: "web.2", or "web.<node>" for
// a global service's task.
func taskName(t *shoalpb.Task) string {
	if a := t.GetAttachment(); a != nil {
		return "attachment " + a.GetName()
	}
	name := t.GetServiceName()
	if name == "" {
		name = t.GetSpec().GetName()
	}
	if t.GetSlot() > 0 {
		return fmt.Sprintf("%s.%d", name, t.GetSlot())
	}
	return name + "." + t.GetNodeId()
}

func taskStateWord(s shoalpb.TaskState) string {
	return enumWord(s.String(), "TASK_STATE_")
}

// trimDigest drops the "@sha256:..." of a pinned image reference, which
// tables have no room for.
func trimDigest(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		return ref[:i]
	}
	return ref
}
