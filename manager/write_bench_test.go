package manager

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// BenchmarkControlWrites measures service updates through the control API
// of one manager with Raft on disk, called in process (no gRPC, no
// replication): the store and apply path alone. Compare with the 3-manager
// end-to-end figure (BenchmarkShoalWrites) to see where time goes.
func BenchmarkControlWrites(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			cfg := Config{DataDir: b.TempDir(), NodeID: store.NewID(), TickInterval: 10 * time.Millisecond}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := Init(ctx, cfg, &shoalpb.ClusterSpec{Name: "bench"}); err != nil {
				b.Fatal(err)
			}
			m, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- m.Run(ctx) }()
			defer func() { cancel(); <-done }()
			for !m.IsLeader() {
				time.Sleep(5 * time.Millisecond)
			}
			svcs := make([]*shoalpb.Service, clients)
			for i := range svcs {
				var err error
				for {
					var resp *shoalpb.CreateServiceResponse
					resp, err = m.Control().CreateService(ctx, &shoalpb.CreateServiceRequest{Spec: &shoalpb.ServiceSpec{
						Name:      fmt.Sprintf("w%d", i),
						Container: &shoalpb.ContainerSpec{Image: "shoal/load"},
						Mode:      &shoalpb.ServiceSpec_Replicated{Replicated: &shoalpb.ReplicatedService{}},
					}})
					if err == nil {
						svcs[i] = resp.GetService()
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			per := b.N/clients + 1
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := svcs[c]
					for i := range per {
						spec := s.GetSpec()
						spec.Labels = map[string]string{"seq": fmt.Sprint(i)}
						resp, err := m.Control().UpdateService(ctx, &shoalpb.UpdateServiceRequest{ServiceId: s.GetId(), Version: s.GetMeta().GetVersion(), Spec: spec})
						if err != nil {
							b.Error(err)
							return
						}
						s = resp.GetService()
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(per*clients)/time.Since(start).Seconds(), "writes/s")
		})
	}
}
