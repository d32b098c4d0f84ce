package daemon

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/shoal-project/shoal/internal/ca"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

// membership is what a host remembers of the cluster it joined, beside its
// certificates.
type membership struct {
	// Managers are the managers' host:port addresses.
	Managers []string `json:"managers"`
}

func (d *Daemon) certStore() ca.Store {
	return ca.Store{Dir: filepath.Join(d.cfg.DataDir, "certificates")}
}

func (d *Daemon) membershipPath() string { return filepath.Join(d.cfg.DataDir, "cluster.json") }

func (d *Daemon) loadMembership() (membership, bool, error) {
	var m membership
	b, err := os.ReadFile(d.membershipPath())
	if errors.Is(err, os.ErrNotExist) {
		return m, false, nil
	}
	if err != nil {
		return m, false, fmt.Errorf("read cluster membership: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, false, fmt.Errorf("read cluster membership %s: %w", d.membershipPath(), err)
	}
	return m, true, nil
}

func (d *Daemon) saveMembership(m membership) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileSync(d.membershipPath(), b)
}

// tlsMaterial loads the node's credentials, and makes the daemon's live
// certificate holder present the certificate found on disk.
func (d *Daemon) tlsMaterial() (*ca.Credentials, error) {
	creds, err := d.certStore().Load()
	if err != nil {
		return nil, fmt.Errorf("load node certificates: %w", err)
	}
	if _, err := d.useCredentials(&creds); err != nil {
		return nil, err
	}
	return &creds, nil
}

// useCredentials makes creds the certificate every TLS config of the daemon
// presents at its next handshake (listener, dispatcher, Raft, forwarding):
// a renewed or role-changed certificate takes effect without a restart.
func (d *Daemon) useCredentials(creds *ca.Credentials) (*ca.KeyPair, error) {
	cert, err := creds.TLSCertificate()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.keyPair == nil {
		d.keyPair = ca.NewKeyPair(cert)
	} else {
		d.keyPair.Set(cert)
	}
	return d.keyPair, nil
}

// clientTLS is the mutual TLS configuration for calls to managers, with the
// daemon's live certificate.
func (d *Daemon) clientTLS(creds *ca.Credentials) (*tls.Config, error) {
	kp, err := d.useCredentials(creds)
	if err != nil {
		return nil, err
	}
	pool, err := creds.CertPool()
	if err != nil {
		return nil, err
	}
	return kp.ApplyTo(ca.ClientTLSConfig(nil, pool, ca.ManagerServerName)), nil
}

// dialManager connects to a manager over mutual TLS with the node's
// certificate.
func (d *Daemon) dialManager(addr string, creds *ca.Credentials) (*grpc.ClientConn, error) {
	cfg, err := d.clientTLS(creds)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
}

// dialManagers connects to whichever of the managers answers, over mutual
// TLS; update replaces the list (pick_first moves to the next address when
// the current one fails).
func (d *Daemon) dialManagers(addrs []string, creds *ca.Credentials) (*grpc.ClientConn, func([]string), error) {
	tlsCfg, err := d.clientTLS(creds)
	if err != nil {
		return nil, nil, err
	}
	r := manual.NewBuilderWithScheme("shoal-managers")
	state := func(addrs []string) resolver.State {
		var st resolver.State
		for _, a := range addrs {
			st.Endpoints = append(st.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}})
		}
		return st
	}
	r.InitialState(state(addrs))
	conn, err := grpc.NewClient(r.Scheme()+":///managers",
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
	)
	if err != nil {
		return nil, nil, err
	}
	return conn, func(addrs []string) { r.UpdateState(state(addrs)) }, nil
}

// clusterPolicy says which roles may call each method on the network
// listener: the control API is the managers' (and operators' through a
// manager's local socket); the dispatcher and certificate renewal are every
// node's. Methods not listed are refused.
func clusterPolicy() map[string][]ca.Role {
	policy := map[string][]ca.Role{}
	add := func(desc grpc.ServiceDesc, roles ...ca.Role) {
		for _, m := range desc.Methods {
			policy["/"+desc.ServiceName+"/"+m.MethodName] = roles
		}
		for _, s := range desc.Streams {
			policy["/"+desc.ServiceName+"/"+s.StreamName] = roles
		}
	}
	// Workers pass only with an operator token (operatorCheck): it is how a
	// worker's socket serves the control API for an operator.
	add(shoalpb.Control_ServiceDesc, ca.RoleManager, ca.RoleWorker)
	add(shoalpb.Dispatcher_ServiceDesc, ca.RoleWorker, ca.RoleManager)
	add(shoalpb.NodeCA_ServiceDesc, ca.RoleWorker, ca.RoleManager)
	add(shoalpb.Raft_ServiceDesc, ca.RoleManager)
	add(shoalpb.RaftMembership_ServiceDesc, ca.RoleManager)
	return policy
}

// serveNetwork serves the cluster API on --listen-addr over mutual TLS until
// ctx ends. Only a host holding a certificate listens: there is never a
// plaintext listener on the network.
func (d *Daemon) serveNetwork(ctx context.Context, creds *ca.Credentials) error {
	kp, err := d.useCredentials(creds)
	if err != nil {
		return err
	}
	pool, err := creds.CertPool()
	if err != nil {
		return err
	}
	unary, stream := ca.AuthInterceptors(clusterPolicy(), map[string]bool{
		"/" + shoalpb.NodeCA_ServiceDesc.ServiceName + "/IssueNodeCertificate": true,
	})
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(kp.ApplyTo(ca.ServerTLSConfigAllowJoin(kp.Get(), pool)))),
		grpc.ChainUnaryInterceptor(unary, d.operatorCheck, d.forwardUnary),
		grpc.ChainStreamInterceptor(stream, d.forwardStream),
	)
	if m, err := d.manager(); err == nil {
		m.RegisterRaft(srv)
	}
	shoalpb.RegisterControlServer(srv, &controlProxy{d: d})
	shoalpb.RegisterDispatcherServer(srv, &dispatcherProxy{d: d})
	shoalpb.RegisterNodeCAServer(srv, &nodeCAProxy{d: d})
	lis, err := net.Listen("tcp", d.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", d.cfg.ListenAddr, err)
	}
	d.log.Info("serving the cluster API over mutual TLS", "addr", lis.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case <-ctx.Done():
		srv.Stop()
		<-errc
		return nil
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", d.cfg.ListenAddr, err)
	}
}

// issueOwnCertificate gives a new manager host its certificate from its own
// CA.
func (d *Daemon) issueOwnCertificate() error {
	m, err := d.manager()
	if err != nil {
		return err
	}
	key, csr, err := ca.NewNodeKey()
	if err != nil {
		return err
	}
	cert, caCert, err := m.NodeCA().IssueOwn(csr, d.nodeID, ca.RoleManager)
	if err != nil {
		return err
	}
	return d.certStore().Save(ca.Credentials{CACertPEM: caCert, CertPEM: cert, KeyPEM: key})
}

// advertiseAddr is where other hosts reach this one: --advertise-addr, with
// the listen port added when it names only a host.
func (d *Daemon) advertiseAddr() string {
	a := d.cfg.AdvertiseAddr
	if a == "" {
		return d.cfg.ListenAddr
	}
	if _, _, err := net.SplitHostPort(a); err != nil {
		if _, port, err := net.SplitHostPort(d.cfg.ListenAddr); err == nil {
			return net.JoinHostPort(a, port)
		}
	}
	return a
}

// refuseIfInCluster refuses init or join on a host already in a cluster.
func (d *Daemon) refuseIfInCluster() error {
	d.mu.Lock()
	inCluster := d.mgr != nil || d.worker
	d.mu.Unlock()
	if inCluster {
		return status.Error(codes.FailedPrecondition, "this node is already part of a cluster")
	}
	return nil
}

// dialPeer connects to another manager for Raft, with this node's
// certificate.
func (d *Daemon) dialPeer(_ context.Context, addr string) (*grpc.ClientConn, error) {
	creds, err := d.tlsMaterial()
	if err != nil {
		return nil, err
	}
	return d.dialManager(addr, creds)
}

// joinManagers makes this host, which holds a manager certificate now, a
// member of the managers' Raft group through the leader at leaderAddr, then
// runs its manager.
func (d *Daemon) joinManagers(ctx, runCtx context.Context, leaderAddr string, creds *ca.Credentials) error {
	if !d.hasAdvertiseAddr() {
		return status.Error(codes.FailedPrecondition, "joining as a manager needs the address other managers reach this host at: start shoald with --advertise-addr, then join again")
	}
	conn, err := d.dialManager(leaderAddr, creds)
	if err != nil {
		return status.Errorf(codes.Unavailable, "connect to manager %s: %v", leaderAddr, err)
	}
	defer conn.Close()
	resp, err := shoalpb.NewRaftMembershipClient(conn).JoinRaft(ctx, &shoalpb.JoinRaftRequest{Addr: d.advertiseAddr()}, grpc.WaitForReady(true))
	if err != nil {
		st, _ := status.FromError(err)
		return status.Errorf(st.Code(), "join the managers through %s (it must be the leader): %s", leaderAddr, st.Message())
	}
	if err := d.saveMembership(membership{Managers: append([]string{leaderAddr}, resp.GetMembers()...)}); err != nil {
		return status.Errorf(codes.Internal, "save cluster membership: %v", err)
	}
	if err := d.startManager(runCtx, true); err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	if err := d.runAsManager(runCtx); err != nil {
		return status.Errorf(codes.Internal, "%v", err)
	}
	return nil
}

// hasAdvertiseAddr reports whether other hosts know where to reach this one.
func (d *Daemon) hasAdvertiseAddr() bool {
	host, _, err := net.SplitHostPort(d.advertiseAddr())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return host != "" && (ip == nil || !ip.IsUnspecified())
}

// LeaveCluster takes a worker out of its cluster: the agent stops, every
// container of this host is removed, and the certificates and the list of
// managers are forgotten. The managers see the node go down; remove it there
// with `shoal node rm`. A manager must be demoted first.
func (l *localServer) LeaveCluster(ctx context.Context, req *shoalpb.LeaveClusterRequest) (*shoalpb.LeaveClusterResponse, error) {
	d := l.d
	d.mu.Lock()
	isManager, isWorker := d.mgr != nil, d.worker
	d.mu.Unlock()
	switch {
	case isManager && !req.GetForce():
		return nil, status.Error(codes.FailedPrecondition, "this node is a manager: demote it first (`shoal node demote` on a manager), then leave; or leave anyway with --force and demote it on the other managers afterwards")
	case !isManager && !isWorker:
		return nil, status.Error(codes.FailedPrecondition, "this node is not part of a cluster")
	}
	d.stopAgent()
	d.stopRenewer()
	d.stopGossip()
	d.forgetGossipKey()
	if isManager {
		d.stopListener()
		d.stopManager()
		raftDir := filepath.Join(d.cfg.DataDir, "raft")
		if err := os.Rename(raftDir, fmt.Sprintf("%s.left-%d", raftDir, time.Now().Unix())); err != nil {
			return nil, status.Errorf(codes.Internal, "move the Raft state aside: %v", err)
		}
	}
	exec := d.executor()
	ids, err := exec.List(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list containers: %v", err)
	}
	var removed int64
	for _, id := range ids {
		if err := exec.Remove(ctx, id); err != nil {
			return nil, status.Errorf(codes.Internal, "remove container %s: %v", id, err)
		}
		removed++
	}
	for _, p := range []string{d.membershipPath(), d.certStore().Dir} {
		if err := os.RemoveAll(p); err != nil {
			return nil, status.Errorf(codes.Internal, "forget cluster membership: %v", err)
		}
	}
	d.mu.Lock()
	d.worker, d.workerConn = false, nil
	d.mu.Unlock()
	d.log.Info("left the cluster", "containers_removed", removed)
	return &shoalpb.LeaveClusterResponse{Removed: removed}, nil
}
