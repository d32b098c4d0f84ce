package controlapi

import (
	"context"
	"fmt"

	"github.com/shoal-project/shoal/manager/nodeca"
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// GetJoinToken returns the join token for a role, rotating it first when
// asked, and the addresses of the managers a joining host may contact.
func (s *Server) GetJoinToken(ctx context.Context, req *shoalpb.GetJoinTokenRequest) (*shoalpb.GetJoinTokenResponse, error) {
	role, err := nodeca.RoleOf(req.GetRole())
	if err != nil {
		return nil, err
	}
	var tok string
	if req.GetRotate() {
		if tok, err = nodeca.RotateToken(ctx, s.store, role); err != nil {
			return nil, s.toStatus(fmt.Sprintf("rotate the %s join token", role), err)
		}
		s.logger.Info("join token rotated", "role", role)
	}
	resp := &shoalpb.GetJoinTokenResponse{}
	s.store.View(func(tx store.ReadTx) {
		sec := tx.GetCluster().GetSecurity()
		if tok == "" {
			if req.GetRole() == shoalpb.NodeRole_NODE_ROLE_MANAGER {
				tok = sec.GetManagerJoinToken()
			} else {
				tok = sec.GetWorkerJoinToken()
			}
		}
		for _, n := range tx.ListNodes() {
			if a := n.GetManagerStatus().GetAddr(); n.GetRole() == shoalpb.NodeRole_NODE_ROLE_MANAGER && a != "" {
				resp.ManagerAddrs = append(resp.ManagerAddrs, a)
			}
		}
	})
	if tok == "" {
		return nil, status.Error(codes.FailedPrecondition, "the cluster has no join tokens yet")
	}
	resp.Token = tok
	return resp, nil
}

// GetOperatorToken returns the operator token, rotating it first when
// asked.
func (s *Server) GetOperatorToken(ctx context.Context, req *shoalpb.GetOperatorTokenRequest) (*shoalpb.GetOperatorTokenResponse, error) {
	if req.GetRotate() {
		tok, err := nodeca.RotateOperatorToken(ctx, s.store)
		if err != nil {
			return nil, s.toStatus("rotate the operator token", err)
		}
		s.logger.Info("operator token rotated")
		return &shoalpb.GetOperatorTokenResponse{Token: tok}, nil
	}
	var tok string
	s.store.View(func(tx store.ReadTx) { tok = tx.GetCluster().GetSecurity().GetOperatorToken() })
	if tok == "" {
		return nil, status.Error(codes.FailedPrecondition, "the cluster has no operator token yet")
	}
	return &shoalpb.GetOperatorTokenResponse{Token: tok}, nil
}

// RotateGossipKey replaces the cluster's gossip key.
func (s *Server) RotateGossipKey(ctx context.Context, _ *shoalpb.RotateGossipKeyRequest) (*shoalpb.RotateGossipKeyResponse, error) {
	if err := nodeca.RotateGossipKey(ctx, s.store); err != nil {
		return nil, s.toStatus("rotate the gossip key", err)
	}
	s.logger.Info("gossip key rotated")
	return &shoalpb.RotateGossipKeyResponse{}, nil
}
