package nodeca

import (
	"context"
	"testing"
	"time"

	"github.com/shoal-project/shoal/internal/ca"
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func newCluster(t *testing.T) (*Server, *store.Store, *shoalpb.ClusterSecurity) {
	t.Helper()
	s := store.New()
	s.SetProposer(store.NewLocalProposer(s))
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	sec, err := NewSecurity("c1", now)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(context.Background(), func(_ store.ReadTx, b *store.Batch) error {
		b.CreateCluster(&shoalpb.Cluster{Id: "c1", Security: sec})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return New(s, func() time.Time { return now }, nil), s, sec
}

func TestIssueNodeCertificate(t *testing.T) {

	tests := []struct {
		name     string
		token    func(sec *shoalpb.ClusterSecurity) string
		wantCode codes.Code
	}{
		{"worker token", func(s *shoalpb.ClusterSecurity) string { return s.GetWorkerJoinToken() }, codes.OK},
		{"manager token", func(s *shoalpb.ClusterSecurity) string { return s.GetManagerJoinToken() }, codes.OK},
		{"wrong secret", func(s *shoalpb.ClusterSecurity) string {
			tok := s.GetWorkerJoinToken()
			return tok[:len(tok)-3] + "zzz"
		}, codes.PermissionDenied},
		{"no token", func(*shoalpb.ClusterSecurity) string { return "" }, codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, s, sec := newCluster(t)
			_, csr, err := ca.NewNodeKey()
			if err != nil {
				t.Fatal(err)
			}
			resp, err := srv.IssueNodeCertificate(context.Background(), &shoalpb.IssueNodeCertificateRequest{
				CsrPem: csr, Token: tc.token(sec), NodeId: "node-a", Hostname: "host-a",
			})
			if status.Code(err) != tc.wantCode {
				t.Fatalf("err = %v, want code %v", err, tc.wantCode)
			}
			var n *shoalpb.Node
			s.View(func(tx store.ReadTx) { n = tx.GetNode("node-a") })
			if tc.wantCode != codes.OK {
				if n != nil {
					t.Errorf("a refused join registered node %v", n)
				}
				return
			}
			id, err := ca.ParseNodeIdentity(resp.GetCertPem())
			if err != nil {
				t.Fatal(err)
			}
			wantRole, wantAPIRole := ca.RoleWorker, shoalpb.NodeRole_NODE_ROLE_WORKER
			if tc.name == "manager token" {
				wantRole, wantAPIRole = ca.RoleManager, shoalpb.NodeRole_NODE_ROLE_MANAGER
			}
			if id.NodeID != "node-a" || id.Role != wantRole || id.ClusterID != "c1" {
				t.Errorf("identity %+v, want node-a %s of c1", id, wantRole)
			}
			if n == nil || n.GetRole() != wantAPIRole || n.GetDescription().GetHostname() != "host-a" {
				t.Errorf("registered node %v, want %s host-a", n, wantRole)
			}
		})
	}
}

func TestRotatedTokenStopsWorking(t *testing.T) {
	srv, s, sec := newCluster(t)
	old := sec.GetWorkerJoinToken()
	tok, err := RotateToken(context.Background(), s, ca.RoleWorker)
	if err != nil {
		t.Fatal(err)
	}
	if tok == old {
		t.Fatal("rotation returned the same token")
	}
	_, csr, _ := ca.NewNodeKey()
	if _, err := srv.IssueNodeCertificate(context.Background(), &shoalpb.IssueNodeCertificateRequest{CsrPem: csr, Token: old, NodeId: "n1"}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("old token after rotation: %v, want PermissionDenied", err)
	}
	if _, err := srv.IssueNodeCertificate(context.Background(), &shoalpb.IssueNodeCertificateRequest{CsrPem: csr, Token: tok, NodeId: "n1"}); err != nil {
		t.Errorf("new token: %v", err)
	}
}
