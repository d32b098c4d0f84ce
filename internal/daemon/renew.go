package daemon

import (
	"context"
	"errors"
	"fmt"

	"github.com/shoal-project/shoal/internal/ca"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// startRenewer keeps this host's certificate fresh until ctx ends: it is
// renewed two thirds into its validity through any manager, and every TLS
// config of the daemon presents the new one at its next handshake. Started
// once, when the host first holds credentials.
func (d *Daemon) startRenewer(ctx context.Context) error {
	d.mu.Lock()
	started, kp := d.renewer != nil, d.keyPair
	d.mu.Unlock()
	if started {
		return nil
	}
	if kp == nil {
		return errors.New("renew certificates: no credentials loaded")
	}
	r, err := ca.NewRenewer(ca.RenewerConfig{
		Store:   d.certStore(),
		KeyPair: kp,
		Request: d.requestCertificate,
		OnRenew: func(id ca.Identity) {
			d.log.Info("node certificate renewed", "role", id.Role, "expires", id.NotAfter)
		},
		Logger: d.log.With("component", "certificates"),
	})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithCancel(ctx)
	d.mu.Lock()
	d.renewer, d.renewCancel = r, cancel
	d.mu.Unlock()
	d.goBackground(func() { _ = r.Run(rctx) })
	return nil
}

// stopRenewer stops renewing (the host left its cluster).
func (d *Daemon) stopRenewer() {
	d.mu.Lock()
	cancel := d.renewCancel
	d.renewer, d.renewCancel = nil, nil
	d.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// requestCertificate asks a manager to sign csr for this node, presenting
// the current certificate; a manager may ask itself through its listener.
func (d *Daemon) requestCertificate(ctx context.Context, csr []byte) ([]byte, error) {
	creds, err := d.tlsMaterial()
	if err != nil {
		return nil, err
	}
	var addrs []string
	d.mu.Lock()
	isManager := d.mgr != nil
	d.mu.Unlock()
	if isManager {
		addrs = append(addrs, d.advertiseAddr())
	}
	if mem, ok, err := d.loadMembership(); err == nil && ok {
		addrs = append(addrs, mem.Managers...)
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
		return resp.GetCertPem(), nil
	}
	return nil, fmt.Errorf("no manager renewed the certificate: %w", errors.Join(errs...))
}

// RenewCertificate renews this host's certificate now.
func (l *localServer) RenewCertificate(ctx context.Context, _ *shoalpb.RenewCertificateRequest) (*shoalpb.RenewCertificateResponse, error) {
	l.d.mu.Lock()
	r := l.d.renewer
	l.d.mu.Unlock()
	if r == nil {
		return nil, status.Error(codes.FailedPrecondition, "this node holds no certificate: it is not part of a cluster")
	}
	id, err := r.RenewNow(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "renew the node certificate: %v", err)
	}
	role := shoalpb.NodeRole_NODE_ROLE_WORKER
	if id.Role == ca.RoleManager {
		role = shoalpb.NodeRole_NODE_ROLE_MANAGER
	}
	return &shoalpb.RenewCertificateResponse{NodeId: id.NodeID, Role: role, NotAfter: timestamppb.New(id.NotAfter)}, nil
}
