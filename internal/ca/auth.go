package ca

import (
	"context"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// IdentityFromContext returns the identity of the node calling a gRPC
// method, read from the TLS chain the server verified. It reports false for
// calls without a verified certificate (a joining host, or a server not using
// TLS): a certificate the peer merely presented is never trusted.
func IdentityFromContext(ctx context.Context) (Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Identity{}, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Identity{}, false
	}
	chains := info.State.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return Identity{}, false
	}
	id, err := identityFromCert(chains[0][0])
	if err != nil {
		return Identity{}, false
	}
	return id, true
}

// AuthInterceptors returns gRPC server interceptors that authorise every
// call by the caller's role. policy maps a full method name
// ("/shoal.v1.Control/CreateService") to the roles allowed to call it;
// allowUnauthenticated lists methods anyone may call, with or without a
// certificate (the join RPC). Everything else is denied by default:
//   - no verified certificate: codes.Unauthenticated;
//   - a method missing from policy, or a role not listed: codes.PermissionDenied.
//
// The maps are read, never written, after this call; callers must not
// modify them afterwards.
func AuthInterceptors(policy map[string][]Role, allowUnauthenticated map[string]bool) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	a := authorizer{policy: policy, open: allowUnauthenticated}
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := a.authorize(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := a.authorize(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	return unary, stream
}

type authorizer struct {
	policy map[string][]Role
	open   map[string]bool
}

// authorize returns nil if the caller in ctx may call method, or a gRPC
// status error saying who was refused what and why.
func (a authorizer) authorize(ctx context.Context, method string) error {
	if a.open[method] {
		return nil
	}
	id, ok := IdentityFromContext(ctx)
	if !ok {
		return status.Errorf(codes.Unauthenticated, "call to %s requires a node certificate issued by the cluster CA", method)
	}
	allowed, ok := a.policy[method]
	if !ok {
		return status.Errorf(codes.PermissionDenied, "node %s (%s) may not call %s: method has no authorisation policy", id.NodeID, id.Role, method)
	}
	if slices.Contains(allowed, id.Role) {
		return nil
	}
	if len(allowed) == 0 {
		return status.Errorf(codes.PermissionDenied, "node %s (%s) may not call %s: no role may call it", id.NodeID, id.Role, method)
	}
	names := make([]string, len(allowed))
	for i, r := range allowed {
		names[i] = string(r)
	}
	return status.Errorf(codes.PermissionDenied, "node %s (%s) may not call %s: requires %s", id.NodeID, id.Role, method, strings.Join(names, " or "))
}
