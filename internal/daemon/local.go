package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/shoal-project/shoal/agent/container"
	"github.com/shoal-project/shoal/agent/image"
	"github.com/shoal-project/shoal/manager"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
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
	d.mu.Lock()
	running, runCtx := d.mgr != nil, d.runCtx
	d.mu.Unlock()
	if running {
		return nil, status.Error(codes.FailedPrecondition, "this node is already part of a cluster")
	}
	name := r.GetName()
	if name == "" {
		name = "default"
	}
	ictx, cancel := context.WithTimeout(ctx, initTimeout)
	defer cancel()
	if err := manager.Init(ictx, d.managerConfig(), name); err != nil {
		return nil, status.Errorf(codes.Internal, "initialise the cluster: %v", err)
	}
	if err := d.startManager(runCtx); err != nil {
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
