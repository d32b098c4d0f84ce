package main

import (
	"context"
	"fmt"
	"sort"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// selfNode is the NODE argument that names the host shoal runs on, as in
// Docker.
const selfNode = "self"

func newNodeCmd(a *app) *cobra.Command {
	return newGroupCmd("node", "Manage the cluster's nodes",
		"List, inspect, update and remove the hosts of the cluster. Needs a manager.",
		newNodeLsCmd(a), newNodeInspectCmd(a), newNodeUpdateCmd(a), newNodeRmCmd(a),
		newNodeRoleCmd(a, "promote", shoalpb.NodeRole_NODE_ROLE_MANAGER),
		newNodeRoleCmd(a, "demote", shoalpb.NodeRole_NODE_ROLE_WORKER),
		newNodeRenewCertCmd(a))
}

func newNodeLsCmd(a *app) *cobra.Command {
	var (
		format string
		quiet  bool
	)
	c := &cobra.Command{
		Use:     "ls [flags]",
		Aliases: []string{"list"},
		Short:   "List the cluster's nodes",
		Long: `List the nodes of the cluster. The node shoal talks to is marked with
"*" after its ID. MANAGER STATUS is Leader or Reachable/Unreachable for
managers and empty for workers.`,
		Example: `  shoal node ls
  shoal node ls -q
  shoal node ls --format json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemonFor(ctx, format)
			if err != nil {
				return err
			}
			resp, err := d.control.ListNodes(ctx, &shoalpb.ListNodesRequest{})
			if err != nil {
				return fmt.Errorf("list nodes: %w", err)
			}
			nodes := resp.GetNodes()
			sortNodes(nodes)
			switch {
			case quiet:
				for _, n := range nodes {
					fmt.Fprintln(a.stdout, n.GetId())
				}
				return nil
			case format == formatJSON:
				return writeJSONArray(a.stdout, nodes)
			}
			// Over tcp:// there is no local node to mark: a manager's
			// network listener serves only the cluster API.
			info, err := d.local.Info(ctx, &shoalpb.InfoRequest{})
			if err != nil && status.Code(err) != codes.Unimplemented {
				return fmt.Errorf("identify this node: %w", err)
			}
			w := newTable(a.stdout)
			row(w, "ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ADDRESS")
			for _, n := range nodes {
				id := n.GetId()
				if id == info.GetNodeId() {
					id += " *"
				}
				row(w, id, n.GetDescription().GetHostname(), nodeStatus(n), nodeAvailability(n), managerStatus(n), n.GetStatus().GetAddr())
			}
			return w.Flush()
		},
	}
	c.Flags().StringVar(&format, "format", formatTable, "output format: table or json")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "only print node IDs")
	return c
}

func newNodeInspectCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NODE [NODE...]",
		Short: "Show nodes in detail, as JSON",
		Long: `Print the nodes as a JSON array. NODE is an ID, a unique ID prefix, a
hostname, or "self" for the node shoal talks to.`,
		Example: `  shoal node inspect self
  shoal node inspect node-1 | jq '.[0].status'`,
		Args: minArgs(1, "NODE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return inspectAll(cmd.Context(), a, args, getNode)
		},
	}
}

// getNode looks a node up by the NODE argument, resolving "self".
func getNode(ctx context.Context, d *daemonClient, arg string) (*shoalpb.Node, error) {
	name := arg
	if arg == selfNode {
		info, err := d.local.Info(ctx, &shoalpb.InfoRequest{})
		if err != nil {
			return nil, fmt.Errorf("identify this node: %w", err)
		}
		name = info.GetNodeId()
	}
	resp, err := d.control.GetNode(ctx, &shoalpb.GetNodeRequest{Node: name})
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", arg, err)
	}
	return resp.GetNode(), nil
}

// inspectAll looks every argument up with get and prints what was found
// as one JSON array; arguments that failed are reported after it.
func inspectAll[M proto.Message](ctx context.Context, a *app, args []string, get func(context.Context, *daemonClient, string) (M, error)) error {
	d, err := a.daemon(ctx)
	if err != nil {
		return err
	}
	var (
		found []M
		errs  []error
	)
	for _, arg := range args {
		m, err := get(ctx, d, arg)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		found = append(found, m)
	}
	if err := writeJSONArray(a.stdout, found); err != nil {
		return err
	}
	return reportAll(a, errs)
}

// reportAll prints every error of a command that went on after failures
// (one per argument) and returns errReported when there was any. A single
// error is returned as is, for run to print.
func reportAll(a *app, errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	for _, err := range errs {
		fmt.Fprintln(a.stderr, "Error:", err)
	}
	return errReported
}

// sortNodes orders nodes by hostname, then ID, so listings are stable.
func sortNodes(nodes []*shoalpb.Node) {
	sort.Slice(nodes, func(i, j int) bool {
		hi, hj := nodes[i].GetDescription().GetHostname(), nodes[j].GetDescription().GetHostname()
		if hi != hj {
			return hi < hj
		}
		return nodes[i].GetId() < nodes[j].GetId()
	})
}

func nodeStatus(n *shoalpb.Node) string {
	return enumWord(n.GetStatus().GetState().String(), "NODE_STATE_")
}

func nodeAvailability(n *shoalpb.Node) string {
	a := n.GetSpec().GetAvailability()
	if a == shoalpb.NodeAvailability_NODE_AVAILABILITY_UNSPECIFIED {
		return ""
	}
	return enumWord(a.String(), "NODE_AVAILABILITY_")
}

// managerStatus is Docker's MANAGER STATUS column: Leader, the manager's
// reachability (Reachable, Unreachable), or empty for a worker.
func managerStatus(n *shoalpb.Node) string {
	ms := n.GetManagerStatus()
	switch {
	case ms == nil:
		return ""
	case ms.GetLeader():
		return "Leader"
	case ms.GetReachability() == "":
		return "Reachable"
	}
	return enumWord(ms.GetReachability(), "")
}

// nodeNames maps node IDs to hostnames, for tables and log prefixes. A
// failure to list nodes is not fatal to the caller: it shows IDs instead.
func nodeNames(ctx context.Context, d *daemonClient) map[string]string {
	names := map[string]string{}
	resp, err := d.control.ListNodes(ctx, &shoalpb.ListNodesRequest{})
	if err != nil {
		return names
	}
	for _, n := range resp.GetNodes() {
		if h := n.GetDescription().GetHostname(); h != "" {
			names[n.GetId()] = h
		}
	}
	return names
}

// nodeName is the hostname of id, or id itself when unknown.
func nodeName(names map[string]string, id string) string {
	if h, ok := names[id]; ok {
		return h
	}
	return id
}
