package controlapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// GetTask returns a task by full id or unique id prefix.
func (s *Server) GetTask(_ context.Context, req *shoalpb.GetTaskRequest) (*shoalpb.GetTaskResponse, error) {
	var t *shoalpb.Task
	var err error
	s.store.View(func(tx store.ReadTx) {
		if t = tx.GetTask(req.GetTask()); t == nil {
			t, err = lookup[*shoalpb.Task]("task", req.GetTask(), tx.ListTasks(), nil)
		}
	})
	if err != nil {
		return nil, err
	}
	return &shoalpb.GetTaskResponse{Task: proto.Clone(t).(*shoalpb.Task)}, nil
}

// ListTasks returns the tasks, by id, that match every given filter: one of
// the service ids, one of the node ids, one of the desired states.
func (s *Server) ListTasks(_ context.Context, req *shoalpb.ListTasksRequest) (*shoalpb.ListTasksResponse, error) {
	services := set(req.GetServiceIds())
	nodes := set(req.GetNodeIds())
	states := set(req.GetDesiredStates())
	resp := &shoalpb.ListTasksResponse{}
	s.store.View(func(tx store.ReadTx) {
		for _, t := range candidates(tx, req) {
			if (len(services) == 0 || services[t.GetServiceId()]) &&
				(len(nodes) == 0 || nodes[t.GetNodeId()]) &&
				(len(states) == 0 || states[t.GetDesiredState()]) {
				resp.Tasks = append(resp.Tasks, proto.Clone(t).(*shoalpb.Task))
			}
		}
	})
	return resp, nil
}

// candidates narrows the tasks to scan with the store's indexes: a single
// service or node filter (the CLI's `service ps` and `node ps`) reads only
// that service's or node's tasks.
func candidates(tx store.ReadTx, req *shoalpb.ListTasksRequest) []*shoalpb.Task {
	switch {
	case len(req.GetServiceIds()) == 1:
		return tx.TasksByService(req.GetServiceIds()[0])
	case len(req.GetNodeIds()) == 1:
		return tx.TasksByNode(req.GetNodeIds()[0])
	}
	return tx.ListTasks()
}

func set[T comparable](xs []T) map[T]bool {
	m := make(map[T]bool, len(xs))
	for _, x := range xs {
		m[x] = true
	}
	return m
}

// GetNode returns a node by full id, hostname or unique id prefix.
func (s *Server) GetNode(_ context.Context, req *shoalpb.GetNodeRequest) (*shoalpb.GetNodeResponse, error) {
	var n *shoalpb.Node
	var err error
	s.store.View(func(tx store.ReadTx) {
		if n = tx.GetNode(req.GetNode()); n == nil {
			n, err = lookup("node", req.GetNode(), tx.ListNodes(), hostname)
		}
	})
	if err != nil {
		return nil, err
	}
	return &shoalpb.GetNodeResponse{Node: proto.Clone(n).(*shoalpb.Node)}, nil
}

// ListNodes returns every node, by id.
func (s *Server) ListNodes(context.Context, *shoalpb.ListNodesRequest) (*shoalpb.ListNodesResponse, error) {
	resp := &shoalpb.ListNodesResponse{}
	s.store.View(func(tx store.ReadTx) {
		for _, n := range tx.ListNodes() {
			resp.Nodes = append(resp.Nodes, proto.Clone(n).(*shoalpb.Node))
		}
	})
	return resp, nil
}

// GetCluster returns the cluster object without its security material (the
// root CA key and the join tokens); NotFound before the cluster is
// initialised.
func (s *Server) GetCluster(context.Context, *shoalpb.GetClusterRequest) (*shoalpb.GetClusterResponse, error) {
	var c *shoalpb.Cluster
	s.store.View(func(tx store.ReadTx) { c = tx.GetCluster() })
	if c == nil {
		return nil, status.Error(codes.NotFound, "the cluster is not initialised")
	}
	c = proto.Clone(c).(*shoalpb.Cluster)
	c.Security = nil
	return &shoalpb.GetClusterResponse{Cluster: c}, nil
}
