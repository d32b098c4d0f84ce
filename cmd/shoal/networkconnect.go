package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// defaultConnectTimeout bounds how long `network connect` and `network
// disconnect` wait for the node: plugging a namespace in takes well under
// a second, so a minute only runs out when the node is down.
const defaultConnectTimeout = time.Minute

func newNetworkConnectCmd(a *app) *cobra.Command {
	var (
		netns, node, name string
		detach            bool
		timeout           time.Duration
	)
	c := &cobra.Command{
		Use:   "connect [flags] --netns PATH NETWORK [NETWORK...]",
		Short: "Connect a network namespace that no service runs to attachable networks",
		Long: `Connect a network namespace on a node, one that no Shoal service runs (a
debugging shell's, or a container another runtime started), to attachable
overlay networks (created with --attachable). The namespace gets one
interface per network, eth1, eth2, ... in order, with an address the managers
allocate, reaches the networks' services by address, and by name through the
resolver Shoal serves at 127.0.0.11 in it; services' virtual IPs balance over
their ready tasks. For 'ip netns exec NAME' to use that resolver, put
"nameserver 127.0.0.11" in /etc/netns/NAME/resolv.conf. The networks' tasks
find the namespace by the attachment's name (unless a service has it).

The namespace is the one at --netns on --node (this node by default): a file
'ip netns add' made under /run/netns, or /proc/PID/ns/net. It stays connected
until 'shoal network disconnect', or until it is gone; the namespace itself
is never removed. Connect it to every network it needs in one command.

Unless --detach is given, waits until the node has plugged it in and prints
its interfaces.`,
		Example: `  ip netns add debug
  shoal network connect --netns /run/netns/debug tools
  ip netns exec debug nslookup web 127.0.0.11

  shoal network connect --node worker-2 --netns /proc/4242/ns/net --name legacy-db tools backend`,
		Args: minArgs(1, "NETWORK"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if netns == "" {
				return usageErrorf("--netns is required: the path of the namespace to connect, like /run/netns/NAME or /proc/PID/ns/net")
			}
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			if node == "" {
				info, err := d.local.Info(ctx, &shoalpb.InfoRequest{})
				if err != nil {
					return fmt.Errorf("identify this node (or name one with --node): %w", err)
				}
				node = info.GetNodeId()
			}
			resp, err := d.control.ConnectNetwork(ctx, &shoalpb.ConnectNetworkRequest{
				Networks: args, Node: node, Netns: netns, Name: name,
			})
			if err != nil {
				return fmt.Errorf("connect %s: %w", netns, err)
			}
			t := resp.GetAttachment()
			if detach {
				fmt.Fprintln(a.stdout, t.GetId())
				return nil
			}
			if t, err = waitAttachment(ctx, d, t.GetId(), timeout, connected); err != nil {
				return err
			}
			return printAttachment(ctx, a, d, t)
		},
	}
	f := c.Flags()
	f.StringVar(&netns, "netns", "", "path of the network namespace on the node (required)")
	f.StringVar(&node, "node", "", "node the namespace is on: ID, ID prefix or hostname (default: this node)")
	f.StringVar(&name, "name", "", "name of the attachment: its DNS name on the networks, and what disconnect takes (default: the namespace's name under /run/netns, else a short ID)")
	f.BoolVarP(&detach, "detach", "d", false, "print the attachment's ID and return without waiting for the node")
	f.DurationVar(&timeout, "timeout", defaultConnectTimeout, "how long to wait for the node to plug the namespace in")
	return c
}

func newNetworkDisconnectCmd(a *app) *cobra.Command {
	var (
		detach  bool
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "disconnect [flags] ATTACHMENT [ATTACHMENT...]",
		Short: "Disconnect namespaces connected with 'network connect'",
		Long: `Take a namespace's interfaces off the networks 'shoal network connect' joined
it to; the namespace itself stays. ATTACHMENT is the attachment's name, ID or
unique ID prefix. Unless --detach is given, waits until its node has done so.`,
		Example: `  shoal network disconnect debug`,
		Args:    minArgs(1, "ATTACHMENT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			var errs []error
			for _, arg := range args {
				resp, err := d.control.DisconnectNetwork(ctx, &shoalpb.DisconnectNetworkRequest{Attachment: arg})
				if err == nil && !detach && resp.GetAttachment() != nil {
					_, err = waitAttachment(ctx, d, resp.GetAttachment().GetId(), timeout, unplugged)
				}
				if err != nil {
					errs = append(errs, fmt.Errorf("disconnect %s: %w", arg, err))
					continue
				}
				fmt.Fprintln(a.stdout, arg)
			}
			return reportAll(a, errs)
		},
	}
	c.Flags().BoolVarP(&detach, "detach", "d", false, "return without waiting for the node to unplug it")
	c.Flags().DurationVar(&timeout, "timeout", defaultConnectTimeout, "how long to wait for the node")
	return c
}

// attachmentDone tells from an attachment task (nil once deleted) whether
// the wait is over, and with which error.
type attachmentDone func(t *shoalpb.Task) (bool, error)

// connected is done once the attachment runs, failing when it cannot.
func connected(t *shoalpb.Task) (bool, error) {
	st := t.GetStatus()
	switch {
	case t == nil:
		return true, errors.New("the attachment was removed")
	case st.GetState() == shoalpb.TaskState_TASK_STATE_RUNNING:
		return true, nil
	case st.GetState() >= shoalpb.TaskState_TASK_STATE_COMPLETE:
		why := st.GetErr()
		if why == "" {
			why = st.GetMessage()
		}
		return true, fmt.Errorf("the node could not connect it (%s): %s", strings.ToLower(taskStateWord(st.GetState())), why)
	}
	return false, nil
}

// unplugged is done once the node reports the attachment stopped, or it
// is deleted.
func unplugged(t *shoalpb.Task) (bool, error) {
	return t == nil || t.GetStatus().GetState() >= shoalpb.TaskState_TASK_STATE_COMPLETE, nil
}

// waitAttachment polls the attachment until done says so, or timeout
// passes (saying what the attachment waits for).
func waitAttachment(ctx context.Context, d *daemonClient, id string, timeout time.Duration, done attachmentDone) (*shoalpb.Task, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(convergePoll)
	defer tick.Stop()
	var t *shoalpb.Task
	for {
		resp, err := d.control.GetTask(ctx, &shoalpb.GetTaskRequest{Task: id})
		switch {
		case ctx.Err() != nil:
		case status.Code(err) == codes.NotFound:
			t = nil
		case err != nil:
			return nil, fmt.Errorf("watch attachment %s: %w", id, err)
		default:
			t = resp.GetTask()
		}
		if ctx.Err() == nil {
			if ok, err := done(t); ok {
				return t, err
			}
		}
		select {
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, ctx.Err()
			}
			st := t.GetStatus()
			return nil, fmt.Errorf("attachment %s: the node did not act within %s (it is %s: %s)", id, timeout,
				strings.ToLower(taskStateWord(st.GetState())), st.GetMessage())
		case <-tick.C:
		}
	}
}

// printAttachment writes the attachment's interfaces, a row each.
func printAttachment(ctx context.Context, a *app, d *daemonClient, t *shoalpb.Task) error {
	names := make(map[string]string)
	if resp, err := d.control.ListNetworks(ctx, &shoalpb.ListNetworksRequest{}); err == nil {
		for _, n := range resp.GetNetworks() {
			names[n.GetId()] = n.GetSpec().GetName()
		}
	}
	w := newTable(a.stdout)
	row(w, "ATTACHMENT", "INTERFACE", "ADDRESS", "NETWORK")
	ifs := t.GetAttachment().GetInterfaces() // one per network, set by the managers
	for i, n := range t.GetNetworks() {
		ifName := ""
		if i < len(ifs) {
			ifName = ifs[i]
		}
		net := names[n.GetNetworkId()]
		if net == "" {
			net = shortID(n.GetNetworkId())
		}
		row(w, t.GetAttachment().GetName(), ifName, strings.Join(n.GetAddresses(), ","), net)
	}
	return w.Flush()
}

// newNetworkAttachmentsCmd lists the attachments.
func newNetworkAttachmentsCmd(a *app) *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "attachments [flags]",
		Short: "List the namespaces connected with 'network connect'",
		Long: `List the attachments 'shoal network connect' made: their node, namespace,
state and addresses.`,
		Example: `  shoal network attachments`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemonFor(ctx, format)
			if err != nil {
				return err
			}
			resp, err := d.control.ListTasks(ctx, &shoalpb.ListTasksRequest{})
			if err != nil {
				return fmt.Errorf("list attachments: %w", err)
			}
			var atts []*shoalpb.Task
			for _, t := range resp.GetTasks() {
				if t.GetAttachment() != nil {
					atts = append(atts, t)
				}
			}
			sort.Slice(atts, func(i, j int) bool {
				return atts[i].GetAttachment().GetName() < atts[j].GetAttachment().GetName()
			})
			if format == formatJSON {
				return writeJSONArray(a.stdout, atts)
			}
			w := newTable(a.stdout)
			row(w, "ID", "NAME", "NODE", "NETNS", "STATE", "ADDRESSES")
			for _, t := range atts {
				var addrs []string
				for _, n := range t.GetNetworks() {
					addrs = append(addrs, n.GetAddresses()...)
				}
				state := strings.ToLower(taskStateWord(t.GetStatus().GetState()))
				if t.GetDesiredState() == shoalpb.TaskState_TASK_STATE_REMOVE && state == "running" {
					state = "disconnecting"
				}
				row(w, shortID(t.GetId()), t.GetAttachment().GetName(), shortID(t.GetNodeId()), t.GetAttachment().GetNetns(),
					state, strings.Join(addrs, ","))
			}
			return w.Flush()
		},
	}
	c.Flags().StringVar(&format, "format", formatTable, "output format: table or json")
	return c
}
