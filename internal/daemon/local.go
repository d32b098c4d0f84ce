package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/shoal-project/shoal/agent/container"
	"github.com/shoal-project/shoal/agent/image"
	"github.com/shoal-project/shoal/internal/ca"
	"github.com/shoal-project/shoal/manager"
	"github.com/shoal-project/shoal/manager/ipam"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// localServer serves what concerns this host: its images, its task logs,
// and bootstrapping a cluster.
type localServer struct {
	shoalpb.UnimplementedLocalServer
	d *Daemon
}

func (l *localServer) Info(ctx context.Context, _ *shoalpb.InfoRequest) (*shoalpb.InfoResponse, error) {
	resp := &shoalpb.InfoResponse{NodeId: l.d.nodeID, Version: Version, DataDir: l.d.cfg.DataDir}
	if m, err := l.d.manager(); err == nil {
		resp.Manager = true
		if c, err := m.Control().GetCluster(ctx, &shoalpb.GetClusterRequest{}); err == nil {
			resp.ClusterId = c.GetCluster().GetId()
		}
	}
	return resp, nil
}

func (l *localServer) InitCluster(ctx context.Context, r *shoalpb.InitClusterRequest) (*shoalpb.InitClusterResponse, error) {
	d := l.d
	if r.GetForceNewCluster() {
		if err := d.forceNewCluster(ctx); err != nil {
			return nil, err
		}
		m, err := d.manager()
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		// The store is replayed when the manager opens: the cluster is there.
		c, err := m.Control().GetCluster(ctx, &shoalpb.GetClusterRequest{})
		if err != nil {
			return nil, err
		}
		return &shoalpb.InitClusterResponse{ClusterId: c.GetCluster().GetId(), NodeId: d.nodeID}, nil
	}
	if err := d.refuseIfInCluster(); err != nil {
		return nil, err
	}
	d.mu.Lock()
	runCtx := d.runCtx
	d.mu.Unlock()
	spec := &shoalpb.ClusterSpec{Name: r.GetName(), DefaultAddressPools: r.GetDefaultAddressPools(), SubnetSize: r.GetSubnetSize()}
	if len(spec.DefaultAddressPools) > 0 || spec.SubnetSize != 0 {
		pools, size := spec.DefaultAddressPools, int(spec.SubnetSize)
		if len(pools) == 0 {
			pools = []string{ipam.DefaultPool}
		}
		if size == 0 {
			size = ipam.DefaultSubnetSize
		}
		if err := ipam.ValidatePools(pools, size); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "invalid address pools: %v", err)
		}
	}
	ictx, cancel := context.WithTimeout(ctx, initTimeout)
	defer cancel()
	cfg := d.managerConfig()
	if a := r.GetAdvertiseAddr(); a != "" {
		cfg.AdvertiseAddr = a
	}
	if err := manager.Init(ictx, cfg, spec); err != nil {
		return nil, status.Errorf(codes.Internal, "initialise the cluster: %v", err)
	}
	if err := d.startManager(runCtx, false); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if err := d.issueOwnCertificate(); err != nil {
		return nil, status.Errorf(codes.Internal, "issue this manager's certificate: %v", err)
	}
	if err := d.runAsManager(runCtx); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	m, err := d.manager()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	c, err := m.Control().GetCluster(ictx, &shoalpb.GetClusterRequest{})
	if err != nil {
		return nil, err
	}
	return &shoalpb.InitClusterResponse{ClusterId: c.GetCluster().GetId(), NodeId: d.nodeID}, nil
}

// joinTimeout bounds the certificate request to the manager.
const joinTimeout = 30 * time.Second

// JoinCluster makes this host a worker of the cluster a manager at
// RemoteAddr belongs to. The token pins the cluster's CA: the host talks to
// no manager whose certificate that CA did not sign.
func (l *localServer) JoinCluster(ctx context.Context, r *shoalpb.JoinClusterRequest) (*shoalpb.JoinClusterResponse, error) {
	d := l.d
	if err := d.refuseIfInCluster(); err != nil {
		return nil, err
	}
	tok, err := ca.ParseJoinToken(r.GetToken())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	if _, _, err := net.SplitHostPort(r.GetRemoteAddr()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "manager address %q: expected HOST:PORT", r.GetRemoteAddr())
	}
	key, csr, err := ca.NewNodeKey()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "create node key: %v", err)
	}
	conn, err := grpc.NewClient(r.GetRemoteAddr(), grpc.WithTransportCredentials(credentials.NewTLS(ca.JoinClientTLSConfig(tok, ca.ManagerServerName))))
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "manager address %s: %v", r.GetRemoteAddr(), err)
	}
	defer conn.Close()
	jctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	hostname, _ := os.Hostname()
	resp, err := shoalpb.NewNodeCAClient(conn).IssueNodeCertificate(jctx, &shoalpb.IssueNodeCertificateRequest{
		CsrPem: csr, Token: r.GetToken(), NodeId: d.nodeID, Hostname: hostname,
	}, grpc.WaitForReady(true))
	if err != nil {
		st, _ := status.FromError(err)
		return nil, status.Errorf(st.Code(), "join the cluster through %s: %s", r.GetRemoteAddr(), st.Message())
	}
	if resp.GetNodeId() != d.nodeID {
		return nil, status.Errorf(codes.Internal, "the manager issued a certificate for node %s, not this node (%s)", resp.GetNodeId(), d.nodeID)
	}
	creds := ca.Credentials{CACertPEM: resp.GetCaCertPem(), CertPEM: resp.GetCertPem(), KeyPEM: key}
	if err := ca.VerifyCA(creds.CACertPEM, tok); err != nil {
		return nil, status.Errorf(codes.PermissionDenied, "the manager sent a CA the join token does not name: %v", err)
	}
	if err := d.certStore().Save(creds); err != nil {
		return nil, status.Errorf(codes.Internal, "save node certificates: %v", err)
	}
	d.mu.Lock()
	runCtx := d.runCtx
	d.mu.Unlock()
	mem := membership{Managers: []string{r.GetRemoteAddr()}}
	if resp.GetRole() == shoalpb.NodeRole_NODE_ROLE_MANAGER {
		if err := d.joinManagers(jctx, runCtx, r.GetRemoteAddr(), &creds); err != nil {
			return nil, err
		}
		return &shoalpb.JoinClusterResponse{NodeId: d.nodeID, Role: resp.GetRole()}, nil
	}
	if err := d.saveMembership(mem); err != nil {
		return nil, status.Errorf(codes.Internal, "save cluster membership: %v", err)
	}
	if err := d.runAsWorker(runCtx, mem); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	return &shoalpb.JoinClusterResponse{NodeId: d.nodeID, Role: resp.GetRole()}, nil
}

func (l *localServer) LoadImage(stream shoalpb.Local_LoadImageServer) error {
	pr, pw := io.Pipe()
	go func() {
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				pw.Close()
				return
			}
			if err != nil {
				pw.CloseWithError(fmt.Errorf("receive archive: %w", err))
				return
			}
			if _, err := pw.Write(m.GetChunk()); err != nil {
				return
			}
		}
	}()
	imgs, err := l.d.images.Load(stream.Context(), pr)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "load image archive: %v", err)
	}
	resp := &shoalpb.LoadImageResponse{}
	for _, img := range imgs {
		resp.Images = append(resp.Images, summary(img))
	}
	return stream.SendAndClose(resp)
}

func (l *localServer) PullImage(r *shoalpb.PullImageRequest, stream shoalpb.Local_PullImageServer) error {
	if _, err := image.ParseReference(r.GetRef()); err != nil {
		return status.Errorf(codes.InvalidArgument, "%v", err)
	}
	img, err := l.d.images.Pull(stream.Context(), r.GetRef(), func(msg string) {
		_ = stream.Send(&shoalpb.PullImageProgress{Message: msg})
	})
	if err != nil {
		return status.Errorf(codes.Unavailable, "pull %s: %v", r.GetRef(), err)
	}
	return stream.Send(&shoalpb.PullImageProgress{Message: "pulled " + img.Digest, Image: summary(img)})
}

func (l *localServer) ListImages(context.Context, *shoalpb.ListImagesRequest) (*shoalpb.ListImagesResponse, error) {
	imgs, err := l.d.images.List()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list images: %v", err)
	}
	resp := &shoalpb.ListImagesResponse{}
	for _, img := range imgs {
		resp.Images = append(resp.Images, summary(img))
	}
	return resp, nil
}

func summary(img *image.Image) *shoalpb.ImageSummary {
	s := &shoalpb.ImageSummary{Refs: img.Refs, Digest: img.Digest, Size: img.Size}
	if !img.Created.IsZero() {
		s.CreatedAt = timestamppb.New(img.Created)
	}
	return s
}

// ServiceLogs streams the logs of the service's tasks that ran on this host.
func (l *localServer) ServiceLogs(r *shoalpb.ServiceLogsRequest, stream shoalpb.Local_ServiceLogsServer) error {
	ctx := stream.Context()
	m, err := l.d.manager()
	if err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	svc, err := m.Control().GetService(ctx, &shoalpb.GetServiceRequest{Service: r.GetService()})
	if err != nil {
		return err
	}
	tasks, err := m.Control().ListTasks(ctx, &shoalpb.ListTasksRequest{ServiceIds: []string{svc.GetService().GetId()}})
	if err != nil {
		return err
	}
	var mine []*shoalpb.Task
	for _, t := range tasks.GetTasks() {
		if t.GetNodeId() == l.d.nodeID {
			mine = append(mine, t)
		}
	}
	sort.Slice(mine, func(i, j int) bool { return mine[i].GetSlot() < mine[j].GetSlot() })

	var sendMu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(mine))
	for i, t := range mine {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := l.d.runtime.Logs(ctx, t.GetId(), int(r.GetTail()), r.GetFollow(), func(line container.LogLine) error {
				sendMu.Lock()
				defer sendMu.Unlock()
				return stream.Send(&shoalpb.LogLine{
					TaskId: t.GetId(), Slot: t.GetSlot(), NodeId: t.GetNodeId(),
					Time: timestamppb.New(line.Time), Stream: line.Stream, Line: line.Line,
				})
			})
			// A task whose container was already removed has no logs left.
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, container.ErrNotFound) {
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
