package main

import (
	"fmt"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
)

func newClusterCmd(a *app) *cobra.Command {
	return newGroupCmd("cluster", "Manage the cluster",
		"Create and inspect the cluster this host belongs to.",
		newClusterInitCmd(a))
}

func newClusterInitCmd(a *app) *cobra.Command {
	var req shoalpb.InitClusterRequest
	c := &cobra.Command{
		Use:   "init [flags]",
		Short: "Create a cluster with this host as its first manager",
		Long: `Create a new cluster whose first manager is this host's shoald. The daemon
starts a one-member Raft group and from then on accepts the cluster API
('shoal service ...', 'shoal node ...') on its socket.

Other hosts reach this manager at --advertise-addr (default: the daemon's
--advertise-addr, else its listen address).`,
		Example: `  shoal cluster init
  shoal cluster init --advertise-addr 192.168.1.10:4242 --name prod`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			resp, err := d.local.InitCluster(ctx, &req)
			if err != nil {
				return fmt.Errorf("initialise the cluster: %w", err)
			}
			fmt.Fprintf(a.stdout, "Cluster %s initialised; this node (%s) is now a manager.\n", resp.GetClusterId(), resp.GetNodeId())
			return nil
		},
	}
	c.Flags().StringVar(&req.AdvertiseAddr, "advertise-addr", "", "address (host:port) other hosts reach this manager at")
	c.Flags().StringVar(&req.Name, "name", "", `cluster name (default "default")`)
	return c
}
