package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// availabilities maps --availability values to the API's.
var availabilities = map[string]shoalpb.NodeAvailability{
	"active": shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE,
	"pause":  shoalpb.NodeAvailability_NODE_AVAILABILITY_PAUSE,
	"drain":  shoalpb.NodeAvailability_NODE_AVAILABILITY_DRAIN,
}

func newNodeUpdateCmd(a *app) *cobra.Command {
	var (
		availability string
		labelAdd     []string
		labelRm      []string
	)
	c := &cobra.Command{
		Use:   "update [flags] NODE",
		Short: "Change a node's availability or labels",
		Long: `Change a node's availability or labels. NODE is an ID, a unique ID prefix,
a hostname, or "self".

Availability: active (takes new tasks), pause (keeps its tasks, takes no
new ones), drain (its tasks move elsewhere). Labels are what placement
constraints and preferences match (node.labels.KEY).`,
		Example: `  shoal node update --availability drain node-2
  shoal node update --label-add zone=a --label-add disk=ssd node-1
  shoal node update --label-rm disk node-1`,
		Args: exactArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var avail shoalpb.NodeAvailability
			if availability != "" {
				v, ok := availabilities[availability]
				if !ok {
					return usageErrorf("--availability must be active, pause or drain, got %q", availability)
				}
				avail = v
			}
			add, err := parseKeyValues("--label-add", labelAdd)
			if err != nil {
				return err
			}
			if availability == "" && len(labelAdd) == 0 && len(labelRm) == 0 {
				return usageErrorf("nothing to change: give --availability, --label-add or --label-rm")
			}
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			n, err := updateNode(ctx, d, args[0], func(spec *shoalpb.NodeSpec) {
				if avail != shoalpb.NodeAvailability_NODE_AVAILABILITY_UNSPECIFIED {
					spec.Availability = avail
				}
				if spec.Labels == nil {
					spec.Labels = map[string]string{}
				}
				for k, v := range add {
					spec.Labels[k] = v
				}
				for _, k := range labelRm {
					delete(spec.Labels, k)
				}
			})
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, n.GetDescription().GetHostname())
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&availability, "availability", "", "active, pause or drain")
	f.StringArrayVar(&labelAdd, "label-add", nil, "add or change a label KEY=VALUE (repeatable)")
	f.StringArrayVar(&labelRm, "label-rm", nil, "remove the label KEY (repeatable)")
	return c
}

// updateNode applies change to the node's spec, re-reading and retrying
// when another write got in between (FailedPrecondition), as scale does.
func updateNode(ctx context.Context, d *daemonClient, ref string, change func(*shoalpb.NodeSpec)) (*shoalpb.Node, error) {
	for attempt := 0; ; attempt++ {
		n, err := getNode(ctx, d, ref)
		if err != nil {
			return nil, err
		}
		spec := n.GetSpec()
		if spec == nil {
			spec = &shoalpb.NodeSpec{}
		}
		change(spec)
		resp, err := d.control.UpdateNode(ctx, &shoalpb.UpdateNodeRequest{Node: n.GetId(), Version: n.GetMeta().GetVersion(), Spec: spec})
		if err == nil {
			return resp.GetNode(), nil
		}
		if status.Code(err) != codes.FailedPrecondition || attempt >= maxScaleRetries {
			return nil, fmt.Errorf("update node %s: %w", ref, err)
		}
	}
}

func newNodeRmCmd(a *app) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:     "rm [--force] NODE [NODE...]",
		Aliases: []string{"remove"},
		Short:   "Remove nodes from the cluster",
		Long: `Remove nodes from the cluster. A node that is still up is refused unless
--force is given; its tasks are then replaced elsewhere. Managers must be
demoted first.`,
		Example: `  shoal node rm node-3
  shoal node rm --force node-3`,
		Args: minArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			var errs []error
			for _, arg := range args {
				n, err := getNode(ctx, d, arg)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if _, err := d.control.RemoveNode(ctx, &shoalpb.RemoveNodeRequest{Node: n.GetId(), Force: force}); err != nil {
					errs = append(errs, fmt.Errorf("remove node %s: %w", arg, err))
					continue
				}
				fmt.Fprintln(a.stdout, arg)
			}
			return reportAll(a, errs)
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "remove the node even if it is up")
	return c
}

func newNodeRoleCmd(a *app, verb string, role shoalpb.NodeRole) *cobra.Command {
	long := map[string]string{
		"promote": `Make workers managers. Each promoted node receives a manager certificate
and joins the managers' Raft group as a learner, becoming a voter once it
has caught up. It must have been started with --advertise-addr.`,
		"demote": `Make managers workers. Each is removed from the managers' Raft group first;
a demotion that would leave the managers without a quorum is refused. The
leader hands leadership to another manager before it is demoted. The
demoted node keeps its containers and its old Raft state (moved aside).`,
	}[verb]
	return &cobra.Command{
		Use:     verb + " NODE [NODE...]",
		Short:   strings.ToUpper(verb[:1]) + verb[1:] + " nodes",
		Long:    long,
		Example: "  shoal node " + verb + " node-3",
		Args:    minArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			var errs []error
			for _, arg := range args {
				n, err := getNode(ctx, d, arg)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				if _, err := d.control.SetNodeRole(ctx, &shoalpb.SetNodeRoleRequest{Node: n.GetId(), Role: role}); err != nil {
					errs = append(errs, fmt.Errorf("%s %s: %w", verb, arg, err))
					continue
				}
				fmt.Fprintf(a.stdout, "Node %s %sd.\n", arg, verb)
			}
			return reportAll(a, errs)
		},
	}
}

func newNodeRenewCertCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "renew-cert",
		Short: "Renew this host's node certificate now",
		Long: `Renew the certificate this host's shoald presents to the cluster, now. The
daemon also renews it by itself two thirds into its validity (90 days);
renew by hand after suspecting the old key leaked. New connections use the
new certificate at once; nothing restarts.`,
		Example: `  shoal node renew-cert`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			resp, err := d.local.RenewCertificate(ctx, &shoalpb.RenewCertificateRequest{})
			if err != nil {
				return fmt.Errorf("renew: %w", err)
			}
			role := strings.ToLower(strings.TrimPrefix(resp.GetRole().String(), "NODE_ROLE_"))
			fmt.Fprintf(a.stdout, "Certificate of node %s (%s) renewed; valid until %s.\n", resp.GetNodeId(), role, resp.GetNotAfter().AsTime().Format(time.RFC3339))
			return nil
		},
	}
}
