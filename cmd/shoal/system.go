package main

import (
	"fmt"
	"runtime"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
)

// version is the CLI's version. It follows shoald's (internal/daemon's
// Version) by hand, and release builds set it with
// -ldflags "-X main.version=...". A variable, not a constant, for that.
var version = "0.1.0-dev"

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the versions of shoal and of shoald",
		Long: `Print the CLI's version, then the daemon's. The command fails when the
daemon cannot be reached, after printing the CLI's version.`,
		Example: `  shoal version`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(a.stdout, "Client: %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			info, err := d.local.Info(ctx, &shoalpb.InfoRequest{})
			if err != nil {
				return fmt.Errorf("ask shoald its version: %w", err)
			}
			fmt.Fprintf(a.stdout, "Server: %s\n", info.GetVersion())
			return nil
		},
	}
}

func newInfoCmd(a *app) *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "info [flags]",
		Short: "Show what this host's shoald is",
		Long:  "Show this host's node ID, whether it is a manager, its cluster and its data directory.",
		Example: `  shoal info
  shoal info --format json | jq -r .nodeId`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			d, err := a.daemonFor(ctx, format)
			if err != nil {
				return err
			}
			info, err := d.local.Info(ctx, &shoalpb.InfoRequest{})
			if err != nil {
				return fmt.Errorf("get daemon info: %w", err)
			}
			if format == formatJSON {
				return writeJSON(a.stdout, info)
			}
			cluster := info.GetClusterId()
			if cluster == "" {
				cluster = "none known here (run 'shoal cluster init' to create one)"
			}
			manager := "no"
			if info.GetManager() {
				manager = "yes"
			}
			w := newTable(a.stdout)
			row(w, "Node ID:", info.GetNodeId())
			row(w, "Manager:", manager)
			row(w, "Cluster ID:", cluster)
			row(w, "Version:", info.GetVersion())
			row(w, "Data dir:", info.GetDataDir())
			return w.Flush()
		},
	}
	c.Flags().StringVar(&format, "format", formatTable, "output format: table or json")
	return c
}
