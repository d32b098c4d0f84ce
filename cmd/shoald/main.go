// Command shoald is Shoal's daemon. Every host runs one: it always runs the
// agent, and the manager too when the host is a manager.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/shoal-project/shoal/agent/container"
	"github.com/shoal-project/shoal/internal/daemon"
	"github.com/spf13/cobra"
)

func main() {
	os.Exit(run())
}

func run() int {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "shoald:", err)
		return 1
	}
	return 0
}

func newRootCmd() *cobra.Command {
	var (
		cfg       daemon.Config
		subnet    string
		logLevel  string
		logFormat string
	)
	root := &cobra.Command{
		Use:   "shoald",
		Short: "Shoal daemon: runs this host's agent, and its manager when it is one",
		Long: `shoald runs on every host of a Shoal cluster. It runs the containers of the
tasks the managers assign to this host (with runc), and, on manager hosts,
the Raft-replicated manager that keeps the cluster's desired state.

The CLI (shoal) talks to it over the root-only socket <run-dir>/shoal.sock.
Two daemons on one machine need distinct --data-dir, --run-dir,
--cgroup-parent and network namespaces.`,
		Example: `  shoald --data-dir /var/lib/shoal --run-dir /run/shoal
  shoal cluster init`,
		SilenceUsage: true,
		Args:         cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			p, err := netip.ParsePrefix(subnet)
			if err != nil {
				return fmt.Errorf("--bridge-subnet %q: expected a CIDR like %s: %w", subnet, daemon.DefaultBridgeSubnet, err)
			}
			cfg.BridgeSubnet = p.Masked()
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own executable for the container shim: %w", err)
			}
			cfg.ShimCommand = []string{exe, "shim"}
			cfg.Logger = log
			d, err := daemon.New(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return d.Run(ctx)
		},
	}
	f := root.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", daemon.DefaultDataDir, "durable state: manager Raft log and snapshots, images, node identity")
	f.StringVar(&cfg.RunDir, "run-dir", daemon.DefaultRunDir, "runtime state: the CLI socket, runc state, container bundles and logs")
	f.StringVar(&cfg.ListenAddr, "listen-addr", daemon.DefaultListenAddr, "address for cluster gRPC (Raft, API, dispatcher) between hosts")
	f.StringVar(&cfg.AdvertiseAddr, "advertise-addr", "", "address other hosts reach this one at (default: the listen address)")
	f.IntVar(&cfg.GossipPort, "gossip-port", daemon.DefaultGossipPort, "gossip port (TCP and UDP) on the advertise address, for membership and node liveness; the same on every host of a cluster")
	f.StringVar(&cfg.CgroupParent, "cgroup-parent", daemon.DefaultCgroupParent, "cgroup under which every container of this daemon runs")
	f.StringVar(&cfg.BridgeName, "bridge-name", daemon.DefaultBridgeName, "name of the node-local container bridge")
	f.StringVar(&subnet, "bridge-subnet", daemon.DefaultBridgeSubnet, "subnet of the node-local container bridge")
	f.StringSliceVar(&cfg.InsecureRegistries, "insecure-registry", nil, "registry host:port reached over plain HTTP (repeatable)")
	f.StringVar(&cfg.RuncBinary, "runc", "runc", "runc binary")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")

	root.AddCommand(&cobra.Command{
		Use:                "shim",
		Short:              "Container shim (started by shoald itself, one per container)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			if code := container.ShimMain(args); code != 0 {
				os.Exit(code)
			}
			return nil
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print shoald's version",
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "shoald", daemon.Version) },
	})
	return root
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: expected debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: expected text or json", format)
	}
}
