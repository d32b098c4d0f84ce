package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-project/shoal/internal/ca"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// roleChangeTimeout bounds one promotion or demotion of this host.
const roleChangeTimeout = time.Minute

// onNode reacts to this node's role as the managers record it: a worker
// asked to become a manager promotes itself; a manager recorded as a
// worker (demoted) turns into one. It runs on the agent's session, so the
// change itself runs in the background.
func (d *Daemon) onNode(n *shoalpb.Node) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.changingRole {
		return
	}
	switch {
	case d.worker && n.GetSpec().GetDesiredRole() == shoalpb.NodeRole_NODE_ROLE_MANAGER:
		d.changingRole = true
		d.goBackground(d.promoteSelf)
	case d.mgr != nil && n.GetRole() == shoalpb.NodeRole_NODE_ROLE_WORKER:
		d.changingRole = true
		d.goBackground(d.demoteSelf)
	}
}

func (d *Daemon) roleChangeDone() {
	d.mu.Lock()
	d.changingRole = false
	d.mu.Unlock()
}

// renewCertificate asks one of the managers at addrs for a certificate of
// the role the managers now want for this node, and stores it.
func (d *Daemon) renewCertificate(ctx context.Context, addrs []string, want ca.Role) (*ca.Credentials, error) {
	creds, err := d.tlsMaterial()
	if err != nil {
		return nil, err
	}
	key, csr, err := ca.NewNodeKey()
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, addr := range addrs {
		conn, err := d.dialManager(addr, creds)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		resp, err := shoalpb.NewNodeCAClient(conn).IssueNodeCertificate(ctx, &shoalpb.IssueNodeCertificateRequest{CsrPem: csr})
		conn.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		id, err := ca.ParseNodeIdentity(resp.GetCertPem())
		if err != nil || id.Role != want {
			errs = append(errs, fmt.Errorf("%s issued a %s certificate, want %s", addr, id.Role, want))
			continue
		}
		next := ca.Credentials{CACertPEM: resp.GetCaCertPem(), CertPEM: resp.GetCertPem(), KeyPEM: key}
		if err := d.certStore().Save(next); err != nil {
			return nil, err
		}
		if _, err := d.useCredentials(&next); err != nil {
			return nil, err
		}
		return &next, nil
	}
	return nil, fmt.Errorf("renew the node certificate as a %s: %w", want, errors.Join(errs...))
}

// promoteSelf turns this worker into a manager: a manager certificate, a
// place in the Raft group through the leader, then the manager runs here.
func (d *Daemon) promoteSelf() {
	defer d.roleChangeDone()
	d.mu.Lock()
	runCtx := d.runCtx
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(runCtx, roleChangeTimeout)
	defer cancel()
	mem, _, err := d.loadMembership()
	if err != nil {
		d.log.Error("promotion", "err", err)
		return
	}
	creds, err := d.renewCertificate(ctx, mem.Managers, ca.RoleManager)
	if err != nil {
		d.log.Error("promotion", "err", err)
		return
	}
	d.stopAgent()
	d.mu.Lock()
	d.worker = false
	d.mu.Unlock()
	for _, addr := range mem.Managers {
		if err = d.joinManagers(ctx, runCtx, addr, creds); err == nil {
			d.log.Info("promoted: this node is now a manager")
			return
		}
	}
	d.log.Error("promotion: no manager let this node join the Raft group; staying a worker", "err", err)
	if err := d.runAsWorker(runCtx, mem); err != nil {
		d.log.Error("restart as a worker", "err", err)
	}
}

// demoteSelf turns this manager, removed from the Raft group by the
// leader, into a worker. Its Raft state is moved aside, never deleted.
func (d *Daemon) demoteSelf() {
	defer d.roleChangeDone()
	d.mu.Lock()
	runCtx := d.runCtx
	m := d.mgr
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(runCtx, roleChangeTimeout)
	defer cancel()
	var others []string
	if m != nil {
		if resp, err := m.Control().ListNodes(ctx, &shoalpb.ListNodesRequest{}); err == nil {
			for _, n := range resp.GetNodes() {
				if a := n.GetManagerStatus().GetAddr(); n.GetRole() == shoalpb.NodeRole_NODE_ROLE_MANAGER && n.GetId() != d.nodeID && a != "" {
					others = append(others, a)
				}
			}
		}
	}
	if len(others) == 0 {
		d.log.Error("demotion: no other manager known; staying as is")
		return
	}
	d.stopListener()
	d.stopAgent()
	d.stopManager()
	if _, err := d.renewCertificate(ctx, others, ca.RoleWorker); err != nil {
		d.log.Error("demotion", "err", err)
		return
	}
	raftDir := filepath.Join(d.cfg.DataDir, "raft")
	aside := fmt.Sprintf("%s.demoted-%d", raftDir, time.Now().Unix())
	if err := os.Rename(raftDir, aside); err != nil {
		d.log.Error("demotion: move the Raft state aside", "err", err)
		return
	}
	mem := membership{Managers: others}
	if err := d.saveMembership(mem); err != nil {
		d.log.Error("demotion", "err", err)
		return
	}
	if err := d.runAsWorker(runCtx, mem); err != nil {
		d.log.Error("demotion: run as a worker", "err", err)
		return
	}
	d.log.Info("demoted: this node is now a worker", "raft_state_kept_in", aside)
}
