package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
)

func newNetworkCmd(a *app) *cobra.Command {
	return newGroupCmd("network", "Manage overlay networks",
		`Create, list, inspect and remove overlay networks. An overlay network spans
every host: containers of the services attached to it reach each other by
address and by service name, wherever they run. A namespace that no service
runs joins attachable networks with 'network connect'. Needs a manager (or
the operator token on a worker).`,
		newNetworkCreateCmd(a), newNetworkLsCmd(a), newNetworkInspectCmd(a), newNetworkRmCmd(a),
		newNetworkConnectCmd(a), newNetworkDisconnectCmd(a), newNetworkAttachmentsCmd(a))
}

func newNetworkCreateCmd(a *app) *cobra.Command {
	var (
		driver, subnet, gateway         string
		encrypted, attachable, internal bool
		labels                          []string
	)
	c := &cobra.Command{
		Use:   "create [flags] NAME",
		Short: "Create an overlay network",
		Long: `Create an overlay network. Without --subnet, the managers take a subnet
from the cluster's address pools (10.10.0.0/16 in /24s unless 'cluster init'
said otherwise). Prints the network's ID.`,
		Example: `  shoal network create backend
  shoal network create -d overlay --subnet 10.20.0.0/24 --gateway 10.20.0.254 --encrypted secure
  shoal network create --internal --attachable db-net`,
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			lbl, err := parseKeyValues("--label", labels)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			resp, err := d.control.CreateNetwork(ctx, &shoalpb.CreateNetworkRequest{Spec: &shoalpb.NetworkSpec{
				Name: args[0], Driver: driver, Subnet: subnet, Gateway: gateway, Labels: lbl,
				Encrypted: encrypted, Attachable: attachable, Internal: internal,
			}})
			if err != nil {
				return fmt.Errorf("create network %s: %w", args[0], err)
			}
			fmt.Fprintln(a.stdout, resp.GetNetwork().GetId())
			return nil
		},
	}
	f := c.Flags()
	f.StringVarP(&driver, "driver", "d", "overlay", "network driver (overlay is the only one)")
	f.StringVar(&subnet, "subnet", "", "subnet in CIDR notation, e.g. 10.20.0.0/24 (default: one from the cluster's pools)")
	f.StringVar(&gateway, "gateway", "", "gateway address in the subnet (default: its first address)")
	f.BoolVar(&encrypted, "encrypted", false, "encrypt traffic between hosts (WireGuard)")
	f.BoolVar(&attachable, "attachable", false, "let namespaces that no service runs join it ('shoal network connect')")
	f.BoolVar(&internal, "internal", false, "no route out of the cluster")
	f.StringArrayVarP(&labels, "label", "l", nil, "network label KEY=VALUE (repeatable)")
	return c
}

func newNetworkLsCmd(a *app) *cobra.Command {
	var (
		format string
		quiet  bool
	)
	c := &cobra.Command{
		Use:     "ls [flags]",
		Aliases: []string{"list"},
		Short:   "List overlay networks",
		Long: `List the overlay networks: their subnet, gateway and VXLAN network
identifier (VNI), and whether they are encrypted, attachable or internal.`,
		Example: `  shoal network ls
  shoal network ls -q`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemonFor(ctx, format)
			if err != nil {
				return err
			}
			resp, err := d.control.ListNetworks(ctx, &shoalpb.ListNetworksRequest{})
			if err != nil {
				return fmt.Errorf("list networks: %w", err)
			}
			nets := resp.GetNetworks()
			sort.Slice(nets, func(i, j int) bool { return nets[i].GetSpec().GetName() < nets[j].GetSpec().GetName() })
			switch {
			case quiet:
				for _, n := range nets {
					fmt.Fprintln(a.stdout, n.GetId())
				}
				return nil
			case format == formatJSON:
				return writeJSONArray(a.stdout, nets)
			}
			w := newTable(a.stdout)
			row(w, "ID", "NAME", "DRIVER", "SUBNET", "GATEWAY", "VNI", "OPTIONS")
			for _, n := range nets {
				row(w, shortID(n.GetId()), n.GetSpec().GetName(), n.GetSpec().GetDriver(), n.GetSubnet(), n.GetGateway(),
					fmt.Sprint(n.GetVni()), networkOptions(n.GetSpec()))
			}
			return w.Flush()
		},
	}
	c.Flags().StringVar(&format, "format", formatTable, "output format: table or json")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "only print network IDs")
	return c
}

// networkOptions lists a network's flags: "encrypted,internal".
func networkOptions(s *shoalpb.NetworkSpec) string {
	var opts []string
	if s.GetEncrypted() {
		opts = append(opts, "encrypted")
	}
	if s.GetAttachable() {
		opts = append(opts, "attachable")
	}
	if s.GetInternal() {
		opts = append(opts, "internal")
	}
	return strings.Join(opts, ",")
}

func newNetworkInspectCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "inspect NETWORK [NETWORK...]",
		Short:   "Show networks in detail, as JSON",
		Long:    "Print the networks as a JSON array. NETWORK is an ID, a unique ID prefix or a name.",
		Example: `  shoal network inspect backend`,
		Args:    minArgs(1, "NETWORK"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return inspectAll(cmd.Context(), a, args, getNetwork)
		},
	}
}

// getNetwork looks a network up by name, ID or unique ID prefix.
func getNetwork(ctx context.Context, d *daemonClient, arg string) (*shoalpb.Network, error) {
	resp, err := d.control.GetNetwork(ctx, &shoalpb.GetNetworkRequest{Network: arg})
	if err != nil {
		return nil, fmt.Errorf("network %s: %w", arg, err)
	}
	return resp.GetNetwork(), nil
}

func newNetworkRmCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NETWORK [NETWORK...]",
		Aliases: []string{"remove"},
		Short:   "Remove networks",
		Long:    "Remove networks. A network in use by a service is not removed; the error says by which.",
		Example: `  shoal network rm backend`,
		Args:    minArgs(1, "NETWORK"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			var errs []error
			for _, arg := range args {
				if _, err := d.control.RemoveNetwork(ctx, &shoalpb.RemoveNetworkRequest{Network: arg}); err != nil {
					errs = append(errs, fmt.Errorf("remove network %s: %w", arg, err))
					continue
				}
				fmt.Fprintln(a.stdout, arg)
			}
			return reportAll(a, errs)
		},
	}
}
