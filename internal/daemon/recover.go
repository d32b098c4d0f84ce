package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/shoal-project/shoal/manager"
	"github.com/shoal-project/shoal/manager/backup"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// backupChunk is the size of the pieces a backup is streamed in.
const backupChunk = 1 << 20

// forceNewCluster makes this host's manager the only member of its Raft
// group: the lone survivor of a cluster that lost its quorum.
func (d *Daemon) forceNewCluster(ctx context.Context) error {
	has, err := manager.HasState(d.cfg.DataDir)
	if err != nil {
		return status.Errorf(codes.Internal, "read manager state: %v", err)
	}
	if !has {
		return status.Errorf(codes.FailedPrecondition, "nothing to recover: %s holds no manager state (use `shoal cluster init` to create a cluster)", d.cfg.DataDir)
	}
	d.mu.Lock()
	runCtx := d.runCtx
	d.mu.Unlock()
	d.stopListener()
	d.stopManager()
	if err := manager.ForceNewCluster(d.managerConfig()); err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	if err := d.startManager(runCtx, false); err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	creds, err := d.tlsMaterial()
	if err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	d.startListener(runCtx, creds)
	d.log.Warn("forced a new cluster: this manager is now the only member of the Raft group")
	return nil
}

// BackupCluster streams a consistent backup of the managers' state.
func (l *localServer) BackupCluster(_ *shoalpb.BackupClusterRequest, stream shoalpb.Local_BackupClusterServer) error {
	m, err := l.d.manager()
	if err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	snap, meta, err := m.Backup(stream.Context())
	if err != nil {
		return status.Errorf(codes.Unavailable, "take a consistent snapshot: %v", err)
	}
	meta.ShoalVersion = Version
	var buf bytes.Buffer
	if err := backup.Write(&buf, snap, meta); err != nil {
		return status.Errorf(codes.Internal, "write backup: %v", err)
	}
	data := buf.Bytes()
	for len(data) > 0 {
		n := min(backupChunk, len(data))
		msg := &shoalpb.BackupChunk{Chunk: data[:n]}
		data = data[n:]
		if len(data) == 0 {
			msg.Summary = fmt.Sprintf("cluster %s at index %d, %d bytes", meta.ClusterID, meta.Index, buf.Len())
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	return nil
}

// RestoreCluster makes this host, in no cluster yet, the lone manager of
// the cluster a backup holds: same cluster id, CA, services and tasks.
func (l *localServer) RestoreCluster(stream shoalpb.Local_RestoreClusterServer) error {
	d := l.d
	if err := d.refuseIfInCluster(); err != nil {
		return err
	}
	if has, err := manager.HasState(d.cfg.DataDir); err != nil || has {
		return status.Errorf(codes.FailedPrecondition, "%s already holds manager state: restore into an empty data dir", d.cfg.DataDir)
	}
	var buf bytes.Buffer
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		buf.Write(m.GetChunk())
	}
	snap, meta, err := backup.Read(&buf)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "read backup: %v", err)
	}
	if err := manager.Restore(d.managerConfig(), snap); err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	d.mu.Lock()
	runCtx := d.runCtx
	d.mu.Unlock()
	if err := d.startManager(runCtx, false); err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	m, err := d.manager()
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	ctx, cancel := context.WithTimeout(stream.Context(), initTimeout)
	defer cancel()
	hostname, _ := os.Hostname()
	if err := m.EnsureManagerNode(ctx, hostname); err != nil {
		return status.Errorf(codes.Internal, "register this manager: %v", err)
	}
	if err := d.issueOwnCertificate(); err != nil {
		return status.Errorf(codes.Internal, "issue this manager's certificate: %v", err)
	}
	if err := d.runAsManager(runCtx); err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	svcs, err := m.Control().ListServices(ctx, &shoalpb.ListServicesRequest{})
	if err != nil {
		return err
	}
	return stream.SendAndClose(&shoalpb.RestoreClusterResponse{ClusterId: meta.ClusterID, Services: int64(len(svcs.GetServices())), Index: meta.Index})
}
