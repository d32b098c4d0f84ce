package main

import (
	"fmt"
	"strings"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
)

func newClusterCmd(a *app) *cobra.Command {
	return newGroupCmd("cluster", "Manage the cluster",
		"Create the cluster, join hosts to it, and manage its join tokens.",
		newClusterInitCmd(a), newClusterJoinTokenCmd(a), newClusterJoinCmd(a))
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

func newClusterJoinTokenCmd(a *app) *cobra.Command {
	var rotate, quiet bool
	c := &cobra.Command{
		Use:   "join-token [--rotate] [-q] worker|manager",
		Short: "Show (or rotate) the token a host joins with",
		Long: `Print the token another host presents to join the cluster with the given
role, and the command to run there. The token also names the cluster's CA,
so a joining host trusts no other. --rotate replaces the token first: the
old one stops working; nodes already joined are not affected.`,
		Example: `  shoal cluster join-token worker
  shoal cluster join-token -q worker
  shoal cluster join-token --rotate worker`,
		Args: exactArgs(1, "worker|manager"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var role shoalpb.NodeRole
			switch args[0] {
			case "worker":
				role = shoalpb.NodeRole_NODE_ROLE_WORKER
			case "manager":
				role = shoalpb.NodeRole_NODE_ROLE_MANAGER
			default:
				return usageErrorf("join-token: role must be worker or manager, got %q", args[0])
			}
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			resp, err := d.control.GetJoinToken(ctx, &shoalpb.GetJoinTokenRequest{Role: role, Rotate: rotate})
			if err != nil {
				return fmt.Errorf("join token: %w", err)
			}
			if quiet {
				fmt.Fprintln(a.stdout, resp.GetToken())
				return nil
			}
			if rotate {
				fmt.Fprintf(a.stdout, "The %s join token was rotated.\n", args[0])
			}
			addr := "MANAGER:4242"
			if len(resp.GetManagerAddrs()) > 0 {
				addr = resp.GetManagerAddrs()[0]
			}
			fmt.Fprintf(a.stdout, "To add a %s to this cluster, run on that host:\n\n    shoal cluster join --token %s %s\n\n", args[0], resp.GetToken(), addr)
			return nil
		},
	}
	c.Flags().BoolVar(&rotate, "rotate", false, "replace the token first")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the token")
	return c
}

func newClusterJoinCmd(a *app) *cobra.Command {
	var token string
	c := &cobra.Command{
		Use:   "join --token TOKEN MANAGER:PORT",
		Short: "Join this host to a cluster",
		Long: `Join this host's shoald to the cluster a manager at MANAGER:PORT belongs to.
Get the token on a manager with 'shoal cluster join-token worker'. The host
receives a certificate from the cluster's CA, and from then on speaks to
the managers only over mutual TLS.`,
		Example: `  shoal cluster join --token SHOALTKN-1-... 192.168.1.10:4242`,
		Args:    exactArgs(1, "MANAGER:PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(token) == "" {
				return usageErrorf("join: --token is required (get it on a manager: shoal cluster join-token worker)")
			}
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			resp, err := d.local.JoinCluster(ctx, &shoalpb.JoinClusterRequest{RemoteAddr: args[0], Token: token})
			if err != nil {
				return err
			}
			role := strings.ToLower(strings.TrimPrefix(resp.GetRole().String(), "NODE_ROLE_"))
			fmt.Fprintf(a.stdout, "This node (%s) joined the cluster as a %s.\n", resp.GetNodeId(), role)
			return nil
		},
	}
	c.Flags().StringVar(&token, "token", "", "join token from 'shoal cluster join-token'")
	return c
}
