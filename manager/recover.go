package manager

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-project/shoal/manager/backup"
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/shoal-project/shoal/raft"
)

// Backup takes a consistent online snapshot of the managers' state: the
// store as of a linearizable read point.
func (m *Manager) Backup(ctx context.Context) ([]byte, backup.Meta, error) {
	return backup.Take(ctx, m.node, m.store)
}

// ForceNewCluster rewrites a stopped manager's Raft state so that it is the
// only member, keeping everything it had committed. It is how a lone
// surviving manager recovers a cluster that lost its quorum for good.
func ForceNewCluster(cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if err := raft.ForceNewCluster(cfg.raftConfig(), store.New()); err != nil {
		return fmt.Errorf("force a new cluster in %s: %w", cfg.DataDir, err)
	}
	return nil
}

// Restore creates a manager's Raft state in cfg.DataDir from a backup's
// store snapshot: a one-member group holding the backed-up cluster.
func Restore(cfg Config, snap []byte) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	rc := cfg.raftConfig()
	if err := os.MkdirAll(filepath.Dir(rc.DataDir), 0o700); err != nil {
		return err
	}
	if err := backup.Restore(rc.DataDir, rc, snap); err != nil {
		return fmt.Errorf("restore into %s: %w", cfg.DataDir, err)
	}
	return nil
}

// EnsureManagerNode waits until this manager leads, then makes sure the
// store knows this host as a manager (after a restore onto a new host).
func (m *Manager) EnsureManagerNode(ctx context.Context, hostname string) error {
	for !m.node.IsLeader() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for leadership: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return m.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		if tx.GetNode(m.cfg.NodeID) != nil {
			return nil
		}
		b.CreateNode(&shoalpb.Node{
			Id:            m.cfg.NodeID,
			Role:          shoalpb.NodeRole_NODE_ROLE_MANAGER,
			Spec:          &shoalpb.NodeSpec{DesiredRole: shoalpb.NodeRole_NODE_ROLE_MANAGER, Availability: shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
			Description:   &shoalpb.NodeDescription{Hostname: hostname},
			ManagerStatus: &shoalpb.ManagerStatus{RaftId: m.cfg.RaftID, Addr: m.cfg.AdvertiseAddr, Leader: true, Reachability: "reachable"},
		})
		return nil
	})
}
