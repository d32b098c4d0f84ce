package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/shoal-project/shoal/manager/ipam"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
)

func newClusterCmd(a *app) *cobra.Command {
	return newGroupCmd("cluster", "Manage the cluster",
		"Create the cluster, join hosts to it, and manage its join tokens.",
		newClusterInitCmd(a), newClusterJoinTokenCmd(a), newClusterOperatorTokenCmd(a), newClusterJoinCmd(a),
		newClusterLeaveCmd(a), newClusterBackupCmd(a), newClusterRestoreCmd(a), newClusterRotateGossipKeyCmd(a))
}

func newClusterInitCmd(a *app) *cobra.Command {
	var (
		req     shoalpb.InitClusterRequest
		maskLen uint32
	)
	c := &cobra.Command{
		Use:   "init [flags]",
		Short: "Create a cluster with this host as its first manager",
		Long: `Create a new cluster whose first manager is this host's shoald. The daemon
starts a one-member Raft group and from then on accepts the cluster API
('shoal service ...', 'shoal node ...') on its socket.

Other hosts reach this manager at --advertise-addr (default: the daemon's
--advertise-addr, else its listen address).

Overlay networks created without --subnet take theirs from the address
pools: 10.10.0.0/16 in /24s unless --default-addr-pool and
--default-addr-pool-mask-len say otherwise.`,
		Example: `  shoal cluster init
  shoal cluster init --advertise-addr 192.168.1.10:4242 --name prod
  shoal cluster init --default-addr-pool 10.200.0.0/16 --default-addr-pool-mask-len 26`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("default-addr-pool-mask-len") || len(req.DefaultAddressPools) > 0 {
				req.SubnetSize = maskLen
				if err := ipam.ValidatePools(req.DefaultAddressPools, int(maskLen)); err != nil {
					return usageErrorf("--default-addr-pool/--default-addr-pool-mask-len: %v", err)
				}
			}
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			resp, err := d.local.InitCluster(ctx, &req)
			if err != nil {
				return fmt.Errorf("initialise the cluster: %w", err)
			}
			if req.GetForceNewCluster() {
				fmt.Fprintf(a.stdout, "Cluster %s recovered: this node (%s) is now its only manager. Remove the lost managers (shoal node demote/rm) and join new ones.\n", resp.GetClusterId(), resp.GetNodeId())
				return nil
			}
			fmt.Fprintf(a.stdout, "Cluster %s initialised; this node (%s) is now a manager.\n", resp.GetClusterId(), resp.GetNodeId())
			return nil
		},
	}
	c.Flags().StringVar(&req.AdvertiseAddr, "advertise-addr", "", "address (host:port) other hosts reach this manager at")
	c.Flags().StringVar(&req.Name, "name", "", `cluster name (default "default")`)
	c.Flags().BoolVar(&req.ForceNewCluster, "force-new-cluster", false,
		"recover a cluster that lost its quorum: make this surviving manager its only member, keeping its state")
	c.Flags().StringArrayVar(&req.DefaultAddressPools, "default-addr-pool", nil, "CIDR overlay subnets are taken from (repeatable; default "+ipam.DefaultPool+")")
	c.Flags().Uint32Var(&maskLen, "default-addr-pool-mask-len", ipam.DefaultSubnetSize, "prefix length of each subnet taken from the pools")
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

func newClusterBackupCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a consistent backup of the cluster's state to FILE",
		Long: `Take an online, consistent snapshot of the managers' state (services, tasks,
nodes, the cluster's CA and join tokens) and write it to FILE. The file is
checksummed; keep it safe: it holds the CA key. Restore it on a fresh host
with 'shoal cluster restore FILE'.`,
		Example: `  shoal cluster backup /root/shoal-$(date +%F).bak`,
		Args:    exactArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			stream, err := d.local.BackupCluster(ctx, &shoalpb.BackupClusterRequest{})
			if err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			tmp := args[0] + ".tmp"
			f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
			if err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			defer os.Remove(tmp)
			var summary string
			for {
				m, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					f.Close()
					return fmt.Errorf("backup: %w", err)
				}
				if _, err := f.Write(m.GetChunk()); err != nil {
					f.Close()
					return fmt.Errorf("backup: write %s: %w", tmp, err)
				}
				if m.GetSummary() != "" {
					summary = m.GetSummary()
				}
			}
			if err := f.Sync(); err != nil {
				f.Close()
				return fmt.Errorf("backup: %w", err)
			}
			if err := f.Close(); err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			if err := os.Rename(tmp, args[0]); err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			fmt.Fprintf(a.stdout, "Backup of %s written to %s\n", summary, args[0])
			return nil
		},
	}
}

func newClusterRestoreCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "restore FILE",
		Short: "Bring a cluster back from a backup on a fresh host",
		Long: `Make this host's shoald, which must not be in a cluster yet and hold no
manager state, the only manager of the cluster saved in FILE: same cluster
id, CA, join tokens, services and tasks. Workers that kept their
certificates reconnect; lost managers are removed with 'shoal node rm'.`,
		Example: `  shoal cluster restore /root/shoal-2026-11-23.bak`,
		Args:    exactArgs(1, "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			defer f.Close()
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			stream, err := d.local.RestoreCluster(ctx)
			if err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			buf := make([]byte, 1<<20)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					if err := stream.Send(&shoalpb.RestoreClusterRequest{Chunk: buf[:n]}); err != nil {
						break // the daemon's answer below says why
					}
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					return fmt.Errorf("restore: read %s: %w", args[0], err)
				}
			}
			resp, err := stream.CloseAndRecv()
			if err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			fmt.Fprintf(a.stdout, "Cluster %s restored (%d services, state as of index %d); this node is its manager.\n", resp.GetClusterId(), resp.GetServices(), resp.GetIndex())
			return nil
		},
	}
}

func newClusterLeaveCmd(a *app) *cobra.Command {
	var force bool
	c := &cobra.Command{
		Use:   "leave [--force]",
		Short: "Take this node out of its cluster",
		Long: `Take this host out of its cluster: its agent stops, every container it runs
is removed, and its certificates are forgotten. The managers then see the
node down; remove it there with 'shoal node rm'. The host can join again
with a token.

A manager should be demoted first ('shoal node demote'). With --force it
leaves anyway (its Raft state is moved aside, not deleted); the other
managers must then demote and remove it, or they keep counting it towards
their quorum.`,
		Example: `  shoal cluster leave
  shoal cluster leave --force     # on a manager`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			resp, err := d.local.LeaveCluster(ctx, &shoalpb.LeaveClusterRequest{Force: force})
			if err != nil {
				return fmt.Errorf("leave: %w", err)
			}
			fmt.Fprintf(a.stdout, "This node left the cluster (%d containers removed).\n", resp.GetRemoved())
			return nil
		},
	}
	c.Flags().BoolVarP(&force, "force", "f", false, "leave even as a manager")
	return c
}

func newClusterOperatorTokenCmd(a *app) *cobra.Command {
	var rotate bool
	c := &cobra.Command{
		Use:   "operator-token [--rotate]",
		Short: "Show (or rotate) the token that lets operators use the API through any node",
		Long: `Print the operator token. With it, the cluster API can be used through any
node's socket, a worker's included: the worker relays the call to a manager
with the token, and a worker without it is refused. Keep it like a
password. --rotate replaces it; the old one stops working at once.`,
		Example: `  shoal cluster operator-token
  SHOAL_TOKEN=$(shoal cluster operator-token) shoal --host unix:///run/shoal/shoal.sock service ls   # on a worker`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			resp, err := d.control.GetOperatorToken(ctx, &shoalpb.GetOperatorTokenRequest{Rotate: rotate})
			if err != nil {
				return fmt.Errorf("operator token: %w", err)
			}
			fmt.Fprintln(a.stdout, resp.GetToken())
			return nil
		},
	}
	c.Flags().BoolVar(&rotate, "rotate", false, "replace the token first")
	return c
}

func newClusterRotateGossipKeyCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "rotate-gossip-key",
		Short: "Replace the key that encrypts the hosts' gossip",
		Long: `Replace the cluster's gossip key (AES-256). Every host gets the new key on
its session with the managers and restarts its gossip with it, within about
a second; until a host has it, its gossip with the others pauses (liveness
then rests on the dispatcher's heartbeats, and overlay traffic already
programmed keeps flowing). A host that is down gets the key when it is back.`,
		Example: `  shoal cluster rotate-gossip-key`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			if _, err := d.control.RotateGossipKey(ctx, &shoalpb.RotateGossipKeyRequest{}); err != nil {
				return fmt.Errorf("rotate the gossip key: %w", err)
			}
			fmt.Fprintln(a.stdout, "Gossip key rotated; hosts switch to it on their sessions.")
			return nil
		},
	}
}
