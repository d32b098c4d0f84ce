// Package nodeca is the managers' certificate authority for nodes: it signs
// the keys of hosts that join with a valid token and of nodes renewing their
// certificates, with the cluster's root CA kept in Raft.
package nodeca

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/shoal-project/shoal/internal/ca"
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Server implements shoalpb.NodeCAServer.
type Server struct {
	shoalpb.UnimplementedNodeCAServer
	store *store.Store
	now   func() time.Time
	log   *slog.Logger
}

// New returns the CA service over the store.
func New(s *store.Store, now func() time.Time, logger *slog.Logger) *Server {
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Server{store: s, now: now, log: logger}
}

// NewSecurity creates a cluster's root CA and its two join tokens.
// GossipKeySize is the gossip key's length: 32 bytes selects AES-256 in
// memberlist's encryption.
const GossipKeySize = 32

func NewSecurity(clusterID string, now time.Time) (*shoalpb.ClusterSecurity, error) {
	root, err := ca.NewRootCA(clusterID, now)
	if err != nil {
		return nil, fmt.Errorf("create root CA: %w", err)
	}
	worker, err := ca.GenerateJoinToken(root.Digest(), ca.RoleWorker)
	if err != nil {
		return nil, err
	}
	manager, err := ca.GenerateJoinToken(root.Digest(), ca.RoleManager)
	if err != nil {
		return nil, err
	}
	op, err := NewOperatorToken()
	if err != nil {
		return nil, err
	}
	gossipKey := make([]byte, GossipKeySize)
	if _, err := rand.Read(gossipKey); err != nil {
		return nil, fmt.Errorf("generate the gossip key: %w", err)
	}
	return &shoalpb.ClusterSecurity{
		CaCertPem: root.CertPEM(), CaKeyPem: root.KeyPEM(),
		WorkerJoinToken: worker, ManagerJoinToken: manager,
		OperatorToken: op, GossipKey: gossipKey,
	}, nil
}

// operatorTokenPrefix marks operator tokens, so that one pasted where a
// join token is expected (or the reverse) is refused as malformed.
const operatorTokenPrefix = "SHOALOPS-1-"

// NewOperatorToken returns a random operator token.
func NewOperatorToken() (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate operator token: %w", err)
	}
	return operatorTokenPrefix + hex.EncodeToString(b[:]), nil
}

// CheckOperatorToken reports whether presented is the cluster's operator
// token, in constant time.
func CheckOperatorToken(s *store.Store, presented string) bool {
	var want string
	s.View(func(tx store.ReadTx) { want = tx.GetCluster().GetSecurity().GetOperatorToken() })
	return want != "" && subtle.ConstantTimeCompare([]byte(want), []byte(presented)) == 1
}

// RotateOperatorToken replaces the operator token and returns the new one.
func RotateOperatorToken(ctx context.Context, s *store.Store) (string, error) {
	tok, err := NewOperatorToken()
	if err != nil {
		return "", err
	}
	err = s.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		c := tx.GetCluster()
		if c.GetSecurity() == nil {
			return errors.New("the cluster has no security material yet")
		}
		c = proto.Clone(c).(*shoalpb.Cluster)
		c.Security.OperatorToken = tok
		b.UpdateCluster(c)
		return nil
	})
	return tok, err
}

// RotateGossipKey stores a new random gossip key in the cluster.
func RotateGossipKey(ctx context.Context, s *store.Store) error {
	key := make([]byte, GossipKeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generate the gossip key: %w", err)
	}
	return s.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		c := tx.GetCluster()
		if c.GetSecurity() == nil {
			return errors.New("the cluster has no security material yet")
		}
		c = proto.Clone(c).(*shoalpb.Cluster)
		c.Security.GossipKey = key
		b.UpdateCluster(c)
		return nil
	})
}

// RoleOf converts an API role to a certificate role.
func RoleOf(r shoalpb.NodeRole) (ca.Role, error) {
	switch r {
	case shoalpb.NodeRole_NODE_ROLE_WORKER:
		return ca.RoleWorker, nil
	case shoalpb.NodeRole_NODE_ROLE_MANAGER:
		return ca.RoleManager, nil
	}
	return "", status.Errorf(codes.InvalidArgument, "invalid role %v: expected worker or manager", r)
}

func apiRole(r ca.Role) shoalpb.NodeRole {
	if r == ca.RoleManager {
		return shoalpb.NodeRole_NODE_ROLE_MANAGER
	}
	return shoalpb.NodeRole_NODE_ROLE_WORKER
}

// rootCA reads the cluster's CA from the store.
func (s *Server) rootCA() (*ca.RootCA, *shoalpb.ClusterSecurity, error) {
	var sec *shoalpb.ClusterSecurity
	s.store.View(func(tx store.ReadTx) { sec = tx.GetCluster().GetSecurity() })
	if sec == nil {
		return nil, nil, status.Error(codes.FailedPrecondition, "the cluster has no certificate authority yet")
	}
	root, err := ca.ParseRootCA(sec.GetCaCertPem(), sec.GetCaKeyPem())
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "load the cluster's root CA: %v", err)
	}
	return root, sec, nil
}

// IssueNodeCertificate implements shoalpb.NodeCAServer.
func (s *Server) IssueNodeCertificate(ctx context.Context, req *shoalpb.IssueNodeCertificateRequest) (*shoalpb.IssueNodeCertificateResponse, error) {
	root, sec, err := s.rootCA()
	if err != nil {
		return nil, err
	}
	var (
		nodeID = req.GetNodeId()
		role   ca.Role
	)
	if id, ok := ca.IdentityFromContext(ctx); ok {
		// Renewal: the node keeps its identity; its role is what the
		// managers say now, so a promotion or demotion takes effect.
		nodeID, role = id.NodeID, id.Role
		var n *shoalpb.Node
		s.store.View(func(tx store.ReadTx) { n = tx.GetNode(nodeID) })
		if n == nil {
			return nil, status.Errorf(codes.PermissionDenied, "node %s is no longer part of the cluster", nodeID)
		}
		// A promotion or demotion in progress: the desired role wins, so the
		// node gets the certificate of the role it is moving to.
		want := n.GetRole()
		if d := n.GetSpec().GetDesiredRole(); d != shoalpb.NodeRole_NODE_ROLE_UNSPECIFIED {
			want = d
		}
		if r, err := RoleOf(want); err == nil {
			role = r
		}
	} else {
		role, err = ca.MatchJoinToken(req.GetToken(), map[ca.Role]string{
			ca.RoleWorker: sec.GetWorkerJoinToken(), ca.RoleManager: sec.GetManagerJoinToken(),
		})
		if err != nil {
			return nil, status.Errorf(codes.PermissionDenied, "join token refused: %v", err)
		}
		if nodeID == "" {
			nodeID = store.NewID()
		}
		if err := s.register(ctx, nodeID, req.GetHostname(), role); err != nil {
			return nil, err
		}
	}
	cert, err := root.IssueNodeCertificate(req.GetCsrPem(), nodeID, role, s.now())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "sign the node's key: %v", err)
	}
	s.log.Info("node certificate issued", "node", nodeID, "role", role)
	return &shoalpb.IssueNodeCertificateResponse{NodeId: nodeID, CertPem: cert, CaCertPem: root.CertPEM(), Role: apiRole(role)}, nil
}

// IssueOwn signs the key of the manager's own host (no token: the caller
// is the daemon the manager runs in).
func (s *Server) IssueOwn(csrPEM []byte, nodeID string, role ca.Role, sans ...string) (cert, caCert []byte, err error) {
	root, _, err := s.rootCA()
	if err != nil {
		return nil, nil, err
	}
	cert, err = root.IssueNodeCertificate(csrPEM, nodeID, role, s.now(), sans...)
	if err != nil {
		return nil, nil, fmt.Errorf("sign own key: %w", err)
	}
	return cert, root.CertPEM(), nil
}

// register records a joining node so it is known before its first session.
func (s *Server) register(ctx context.Context, nodeID, hostname string, role ca.Role) error {
	err := s.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		if n := tx.GetNode(nodeID); n != nil {
			if n.GetRole() != apiRole(role) {
				return status.Errorf(codes.FailedPrecondition, "node %s is already in the cluster as a %s", nodeID, n.GetRole())
			}
			return nil
		}
		b.CreateNode(&shoalpb.Node{
			Id:          nodeID,
			Role:        apiRole(role),
			Spec:        &shoalpb.NodeSpec{DesiredRole: apiRole(role), Availability: shoalpb.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
			Description: &shoalpb.NodeDescription{Hostname: hostname},
			Status:      &shoalpb.NodeStatus{State: shoalpb.NodeState_NODE_STATE_UNKNOWN, Message: "joined; waiting for its first session"},
		})
		return nil
	})
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return err
		}
		return status.Errorf(codes.Unavailable, "register node %s: %v", nodeID, err)
	}
	return nil
}

// RotateToken replaces the join token of role and returns the new one.
func RotateToken(ctx context.Context, s *store.Store, role ca.Role) (string, error) {
	var tok string
	err := s.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		c := tx.GetCluster()
		if c.GetSecurity() == nil {
			return errors.New("the cluster has no certificate authority yet")
		}
		root, err := ca.ParseRootCA(c.GetSecurity().GetCaCertPem(), c.GetSecurity().GetCaKeyPem())
		if err != nil {
			return err
		}
		if tok, err = ca.GenerateJoinToken(root.Digest(), role); err != nil {
			return err
		}
		c = proto.Clone(c).(*shoalpb.Cluster)
		if role == ca.RoleManager {
			c.Security.ManagerJoinToken = tok
		} else {
			c.Security.WorkerJoinToken = tok
		}
		b.UpdateCluster(c)
		return nil
	})
	return tok, err
}
