package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/shoal-project/shoal/e2e/bench"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
)

func newDebugCmd(a *app) *cobra.Command {
	return newGroupCmd("debug", "Tools for measuring and troubleshooting a cluster",
		"Tools for measuring and troubleshooting a cluster.",
		newDebugWriteLoadCmd(a))
}

// writeLoadResult is what `debug write-load --format json` prints.
type writeLoadResult struct {
	Clients   int     `json:"clients"`
	Writes    int     `json:"writes"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"writesPerSecond"`
	P50Millis float64 `json:"p50Ms"`
	P99Millis float64 `json:"p99Ms"`
}

func newDebugWriteLoadCmd(a *app) *cobra.Command {
	var (
		clients  int
		duration time.Duration
		format   string
	)
	c := &cobra.Command{
		Use:   "write-load [--clients N] [--duration D]",
		Short: "Measure committed writes/s and latency through the control API",
		Long: `Put a write load on the managers and report committed writes per second and
the p50/p99 latency of a write. Each client owns one scratch service
("load-<run>-<n>", 0 replicas) and updates it back to back; every update is
a Raft write acknowledged once applied. The scratch services are removed at
the end.`,
		Example: `  shoal debug write-load --clients 64 --duration 10s
  shoal --host tcp://10.0.0.1:4242 debug write-load --format json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if clients < 1 {
				return usageErrorf("--clients must be 1 or more, got %d", clients)
			}
			ctx := cmd.Context()
			d, err := a.daemonFor(ctx, format)
			if err != nil {
				return err
			}
			var b [3]byte
			_, _ = rand.Read(b[:])
			run := hex.EncodeToString(b[:])
			svcs := make([]*shoalpb.Service, clients)
			defer func() {
				for _, s := range svcs {
					if s != nil {
						_, _ = d.control.RemoveService(context.WithoutCancel(ctx), &shoalpb.RemoveServiceRequest{Service: s.GetId()})
					}
				}
			}()
			for i := range svcs {
				resp, err := d.control.CreateService(ctx, &shoalpb.CreateServiceRequest{Spec: &shoalpb.ServiceSpec{
					Name:      fmt.Sprintf("load-%s-%d", run, i),
					Container: &shoalpb.ContainerSpec{Image: "shoal/load:latest"},
					Mode:      &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{Replicas: 0}},
				}})
				if err != nil {
					return fmt.Errorf("create scratch service: %w", err)
				}
				svcs[i] = resp.GetService()
			}
			// Each client reads and writes only its own entry of svcs.
			res, err := bench.Measure(ctx, clients, duration, func(ctx context.Context, client, seq int) error {
				s := svcs[client]
				spec := s.GetSpec()
				spec.Labels = map[string]string{"seq": strconv.Itoa(seq)}
				resp, err := d.control.UpdateService(ctx, &shoalpb.UpdateServiceRequest{ServiceId: s.GetId(), Version: s.GetMeta().GetVersion(), Spec: spec})
				if err != nil {
					return err
				}
				svcs[client] = resp.GetService()
				return nil
			})
			if err != nil {
				return fmt.Errorf("write load: %w", err)
			}
			out := writeLoadResult{
				Clients: res.Clients, Writes: res.Ops, Seconds: res.Duration.Seconds(), PerSecond: res.OpsPerSec(),
				P50Millis: float64(res.P50.Microseconds()) / 1000, P99Millis: float64(res.P99.Microseconds()) / 1000,
			}
			if format == formatJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			}
			fmt.Fprint(a.stdout, bench.Table([]bench.Row{{System: "shoal (control API)", Result: res}}))
			return nil
		},
	}
	c.Flags().IntVar(&clients, "clients", 1, "concurrent writers")
	c.Flags().DurationVar(&duration, "duration", 5*time.Second, "how long to write")
	c.Flags().StringVar(&format, "format", formatTable, "table or json")
	return c
}
