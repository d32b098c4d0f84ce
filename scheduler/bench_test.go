package scheduler

import (
	"fmt"
	"strconv"
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// BenchmarkSchedule places a batch of pending tasks of many services on an
// empty cluster, as after a cluster restore or a large stack deploy.
//
// "plain": no filter but node state, no preference. "constrained": nodes
// labelled over 3 zones, half of them ssd=true, with resources; every
// service reserves CPU and memory and spreads over the zones, and half of
// the services are constrained to node.labels.ssd==true.
func BenchmarkSchedule(b *testing.B) {
	benchmarks := []struct {
		name                   string
		nodes, tasks, services int
		constrained            bool
	}{
		{"10k_on_1k_plain", 1000, 10_000, 100, false},
		{"10k_on_1k_constrained", 1000, 10_000, 100, true},
		{"100k_on_1k_constrained", 1000, 100_000, 1000, true},
	}
	for _, bm := range benchmarks {
		b.Run(bm.name, func(b *testing.B) {
			nodes, tasks := benchCluster(bm.nodes, bm.tasks, bm.services, bm.constrained)
			b.ReportAllocs()
			for b.Loop() {
				res := Schedule(nodes, tasks)
				for _, r := range res {
					if r.NodeID == "" {
						b.Fatalf("task %s not placed: %s", r.TaskID, r.Reason)
					}
				}
			}
			b.ReportMetric(float64(len(tasks))*float64(b.N)/b.Elapsed().Seconds(), "placements/s")
		})
	}
}

func benchCluster(numNodes, numTasks, numServices int, constrained bool) ([]NodeInfo, []*shoalpb.Task) {
	nodes := make([]NodeInfo, numNodes)
	for i := range nodes {
		nodes[i] = ready(fmt.Sprintf("node%04d", i))
		if constrained {
			nodes[i] = withResources(nodes[i], 64*nano, 256*gib)
			nodes[i].Node.Spec.Labels = map[string]string{
				"zone": "zone" + strconv.Itoa(i%3),
				"ssd":  strconv.FormatBool(i%2 == 0),
			}
		}
	}
	specs := make([]*shoalpb.ServiceSpec, numServices)
	for i := range specs {
		specs[i] = &shoalpb.ServiceSpec{Name: fmt.Sprintf("svc%04d", i)}
		if constrained {
			reserve(0.1*nano, 256<<20)(specs[i])
			spread("node.labels.zone")(specs[i])
			if i%2 == 0 {
				constraints("node.labels.ssd==true")(specs[i])
			}
		}
	}
	tasks := make([]*shoalpb.Task, numTasks)
	for i := range tasks {
		s := i % numServices
		tasks[i] = task(fmt.Sprintf("task%06d", i), fmt.Sprintf("svc%04d", s))
		tasks[i].Spec = specs[s]
	}
	return nodes, tasks
}
