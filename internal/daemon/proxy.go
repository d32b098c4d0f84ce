package daemon

import (
	"context"

	"github.com/shoal-project/shoal/internal/ca"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// controlProxy serves the Control API on the local socket by handing each
// call to this host's manager. The socket exists before the node joins a
// cluster, so the services are registered up front and answer with a clear
// error until a manager runs here.
type controlProxy struct {
	shoalpb.UnimplementedControlServer
	d *Daemon
}

func (p *controlProxy) control() (shoalpb.ControlServer, error) {
	m, err := p.d.manager()
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return m.Control(), nil
}

func (p *controlProxy) CreateService(ctx context.Context, r *shoalpb.CreateServiceRequest) (*shoalpb.CreateServiceResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.CreateService(ctx, r)
}

func (p *controlProxy) GetService(ctx context.Context, r *shoalpb.GetServiceRequest) (*shoalpb.GetServiceResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.GetService(ctx, r)
}

func (p *controlProxy) ListServices(ctx context.Context, r *shoalpb.ListServicesRequest) (*shoalpb.ListServicesResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.ListServices(ctx, r)
}

func (p *controlProxy) UpdateService(ctx context.Context, r *shoalpb.UpdateServiceRequest) (*shoalpb.UpdateServiceResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.UpdateService(ctx, r)
}

func (p *controlProxy) RemoveService(ctx context.Context, r *shoalpb.RemoveServiceRequest) (*shoalpb.RemoveServiceResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.RemoveService(ctx, r)
}

func (p *controlProxy) GetTask(ctx context.Context, r *shoalpb.GetTaskRequest) (*shoalpb.GetTaskResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.GetTask(ctx, r)
}

func (p *controlProxy) ListTasks(ctx context.Context, r *shoalpb.ListTasksRequest) (*shoalpb.ListTasksResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.ListTasks(ctx, r)
}

func (p *controlProxy) GetNode(ctx context.Context, r *shoalpb.GetNodeRequest) (*shoalpb.GetNodeResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.GetNode(ctx, r)
}

func (p *controlProxy) ListNodes(ctx context.Context, r *shoalpb.ListNodesRequest) (*shoalpb.ListNodesResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.ListNodes(ctx, r)
}

func (p *controlProxy) UpdateNode(ctx context.Context, r *shoalpb.UpdateNodeRequest) (*shoalpb.UpdateNodeResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.UpdateNode(ctx, r)
}

func (p *controlProxy) RemoveNode(ctx context.Context, r *shoalpb.RemoveNodeRequest) (*shoalpb.RemoveNodeResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.RemoveNode(ctx, r)
}

func (p *controlProxy) SetNodeRole(ctx context.Context, r *shoalpb.SetNodeRoleRequest) (*shoalpb.SetNodeRoleResponse, error) {
	m, err := p.d.manager()
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return m.SetNodeRole(ctx, r)
}

func (p *controlProxy) GetOperatorToken(ctx context.Context, r *shoalpb.GetOperatorTokenRequest) (*shoalpb.GetOperatorTokenResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.GetOperatorToken(ctx, r)
}

func (p *controlProxy) GetJoinToken(ctx context.Context, r *shoalpb.GetJoinTokenRequest) (*shoalpb.GetJoinTokenResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.GetJoinToken(ctx, r)
}

func (p *controlProxy) GetCluster(ctx context.Context, r *shoalpb.GetClusterRequest) (*shoalpb.GetClusterResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.GetCluster(ctx, r)
}

// dispatcherProxy serves the Dispatcher API on the local socket for this
// host's own agent.
type dispatcherProxy struct {
	shoalpb.UnimplementedDispatcherServer
	d *Daemon
}

// dispatcher returns the manager's dispatcher after checking that a worker
// speaks only for its own node. Local-socket callers carry no certificate
// (they are this host's own agent); managers forward their hosts' agents'
// calls to the leader and may speak for any node.
func (p *dispatcherProxy) dispatcher(ctx context.Context, nodeID string) (shoalpb.DispatcherServer, error) {
	if id, ok := ca.IdentityFromContext(ctx); ok && id.Role != ca.RoleManager && id.NodeID != nodeID {
		return nil, status.Errorf(codes.PermissionDenied, "node %s may not speak for node %s", id.NodeID, nodeID)
	}
	m, err := p.d.manager()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return m.Dispatcher(), nil
}

func (p *dispatcherProxy) Session(r *shoalpb.SessionRequest, s shoalpb.Dispatcher_SessionServer) error {
	d, err := p.dispatcher(s.Context(), r.GetNodeId())
	if err != nil {
		return err
	}
	return d.Session(r, s)
}

func (p *dispatcherProxy) Heartbeat(ctx context.Context, r *shoalpb.HeartbeatRequest) (*shoalpb.HeartbeatResponse, error) {
	d, err := p.dispatcher(ctx, r.GetNodeId())
	if err != nil {
		return nil, err
	}
	return d.Heartbeat(ctx, r)
}

func (p *dispatcherProxy) Assignments(r *shoalpb.AssignmentsRequest, s shoalpb.Dispatcher_AssignmentsServer) error {
	d, err := p.dispatcher(s.Context(), r.GetNodeId())
	if err != nil {
		return err
	}
	return d.Assignments(r, s)
}

func (p *dispatcherProxy) UpdateTaskStatus(ctx context.Context, r *shoalpb.UpdateTaskStatusRequest) (*shoalpb.UpdateTaskStatusResponse, error) {
	d, err := p.dispatcher(ctx, r.GetNodeId())
	if err != nil {
		return nil, err
	}
	return d.UpdateTaskStatus(ctx, r)
}

// nodeCAProxy serves the managers' certificate authority on the network
// listener.
type nodeCAProxy struct {
	shoalpb.UnimplementedNodeCAServer
	d *Daemon
}

func (p *nodeCAProxy) IssueNodeCertificate(ctx context.Context, r *shoalpb.IssueNodeCertificateRequest) (*shoalpb.IssueNodeCertificateResponse, error) {
	m, err := p.d.manager()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return m.NodeCA().IssueNodeCertificate(ctx, r)
}

func (p *controlProxy) CreateNetwork(ctx context.Context, r *shoalpb.CreateNetworkRequest) (*shoalpb.CreateNetworkResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.CreateNetwork(ctx, r)
}

func (p *controlProxy) GetNetwork(ctx context.Context, r *shoalpb.GetNetworkRequest) (*shoalpb.GetNetworkResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.GetNetwork(ctx, r)
}

func (p *controlProxy) ListNetworks(ctx context.Context, r *shoalpb.ListNetworksRequest) (*shoalpb.ListNetworksResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.ListNetworks(ctx, r)
}

func (p *controlProxy) RemoveNetwork(ctx context.Context, r *shoalpb.RemoveNetworkRequest) (*shoalpb.RemoveNetworkResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.RemoveNetwork(ctx, r)
}

func (p *controlProxy) RotateGossipKey(ctx context.Context, r *shoalpb.RotateGossipKeyRequest) (*shoalpb.RotateGossipKeyResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.RotateGossipKey(ctx, r)
}

func (p *controlProxy) ConnectNetwork(ctx context.Context, r *shoalpb.ConnectNetworkRequest) (*shoalpb.ConnectNetworkResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.ConnectNetwork(ctx, r)
}

func (p *controlProxy) DisconnectNetwork(ctx context.Context, r *shoalpb.DisconnectNetworkRequest) (*shoalpb.DisconnectNetworkResponse, error) {
	c, err := p.control()
	if err != nil {
		return nil, err
	}
	return c.DisconnectNetwork(ctx, r)
}
