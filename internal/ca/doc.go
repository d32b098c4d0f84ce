// Package ca is Shoal's cluster certificate authority: the root CA kept by
// the managers, node certificates that carry a node's id and role, join
// tokens that pin the CA, TLS configurations for mutual TLS between nodes,
// and gRPC interceptors that authorise each call by the caller's role.
//
// The package does no network I/O and keeps no global state; the only
// filesystem access is Store. Time is always passed in by the caller so that
// issuance and renewal decisions are deterministic and testable.
//
// Trust model: a node is whoever presents a certificate that chains to the
// cluster root CA. Its identity (node id, role, cluster id) is read only from
// verified chains, never from a certificate the peer merely presented.
package ca

import (
	"errors"
	"fmt"
)

// Role is what a node may do in the cluster. It is carried in the node
// certificate's subject OU as "shoal-" + role.
type Role string

const (
	// RoleWorker runs tasks and talks to the dispatcher only.
	RoleWorker Role = "worker"
	// RoleManager runs Raft, the control API and the CA.
	RoleManager Role = "manager"
)

// ouPrefix marks the subject OU of node certificates so that a role cannot
// be confused with some other OU an operator might use.
const ouPrefix = "shoal-"

// ManagerServerName is a DNS SAN present in every manager certificate.
// Clients dial managers with this server name so that verification does not
// depend on which address (or NAT, or load balancer) they reached it by; the
// CA is private to the cluster, so the name needs no public meaning.
const ManagerServerName = "shoal-manager"

// Valid reports whether r is one of the defined roles.
func (r Role) Valid() bool { return r == RoleWorker || r == RoleManager }

// String returns the role's name ("worker", "manager").
func (r Role) String() string { return string(r) }

// OU returns the subject organisational unit that encodes r in a node
// certificate ("shoal-worker", "shoal-manager").
func (r Role) OU() string { return ouPrefix + string(r) }

// roleFromOU is the inverse of Role.OU.
func roleFromOU(ou string) (Role, error) {
	for _, r := range []Role{RoleWorker, RoleManager} {
		if ou == r.OU() {
			return r, nil
		}
	}
	return "", fmt.Errorf("%w: unknown role OU %q", ErrInvalidCertificate, ou)
}

// Errors returned by this package; check them with errors.Is.
var (
	// ErrInvalidRole is returned when a role is neither worker nor manager.
	ErrInvalidRole = errors.New("invalid node role")
	// ErrInvalidCertificate is returned for PEM or X.509 data that cannot
	// be parsed or does not describe a Shoal node or CA.
	ErrInvalidCertificate = errors.New("invalid certificate")
	// ErrInvalidCSR is returned when a certificate signing request cannot
	// be parsed or its signature does not verify.
	ErrInvalidCSR = errors.New("invalid certificate signing request")
	// ErrMalformedJoinToken is returned when a join token does not have
	// the form SHOALTKN-1-<ca digest>-<secret>.
	ErrMalformedJoinToken = errors.New("join token is malformed: expected SHOALTKN-1-<ca digest>-<secret>")
	// ErrInvalidJoinToken is returned when a well-formed join token matches
	// none of the cluster's current tokens.
	ErrInvalidJoinToken = errors.New("join token is not valid for this cluster")
	// ErrCAMismatch is returned when the CA a joining host sees is not the
	// one its join token pins.
	ErrCAMismatch = errors.New("cluster CA does not match the join token's digest")
	// ErrNotFound is returned by Store.Load when no credentials are saved.
	ErrNotFound = errors.New("node credentials not found")
)
