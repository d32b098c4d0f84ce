// Package controlapi implements the Control gRPC service the CLI speaks:
// services, tasks, nodes and the cluster object, read from the managers'
// store and written through it (and so through Raft).
//
// Requests are validated here, with InvalidArgument errors that name the
// field and what was expected; store and Raft refusals are mapped to gRPC
// codes (see toStatus) so that clients decide on codes, never on strings.
package controlapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/shoal-project/shoal/raft"
)

// Server implements shoalpb.ControlServer over a store. Reads are served
// from this manager's store; writes need this manager to be the Raft leader
// (else codes.Unavailable).
type Server struct {
	shoalpb.UnimplementedControlServer

	store  *store.Store
	logger *slog.Logger
}

var _ shoalpb.ControlServer = (*Server)(nil)

// New returns a control server over s. A nil logger discards logs.
func New(s *store.Store, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Server{store: s, logger: logger}
}

// toStatus maps an error from the store, Raft or a callback to a gRPC
// status error. Errors that already carry a status are returned unchanged;
// what describes the failed operation prefixes the message.
func (s *Server) toStatus(what string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var code codes.Code
	msg := fmt.Sprintf("%s: %v", what, err)
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		code, msg = codes.Unavailable, fmt.Sprintf("%s: this manager is not the leader", what)
	case errors.Is(err, raft.ErrStopped):
		code, msg = codes.Unavailable, fmt.Sprintf("%s: this manager is shutting down", what)
	case errors.Is(err, store.ErrVersionMismatch):
		code = codes.FailedPrecondition
	case errors.Is(err, store.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, store.ErrNameConflict), errors.Is(err, store.ErrExists):
		code = codes.AlreadyExists
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	default:
		code = codes.Internal
		s.logger.Error("control request failed", "op", what, "err", err)
	}
	return status.Error(code, msg)
}

// lookup finds one object by full id, then by name (when name is non-nil),
// then by unique id prefix. kind names the object in errors ("service").
func lookup[T interface{ GetId() string }](kind, ref string, all []T, name func(T) string) (T, error) {
	var zero T
	if ref == "" {
		return zero, status.Errorf(codes.InvalidArgument, "invalid %s: an id or name is required", kind)
	}
	for _, o := range all {
		if o.GetId() == ref {
			return o, nil
		}
	}
	if name != nil {
		var named []T
		for _, o := range all {
			if name(o) == ref {
				named = append(named, o)
			}
		}
		switch len(named) {
		case 1:
			return named[0], nil
		case 0:
		default:
			return zero, status.Errorf(codes.InvalidArgument, "%s name %q is ambiguous: it matches %s; use an id", kind, ref, idList(named))
		}
	}
	var matches []T
	for _, o := range all {
		if strings.HasPrefix(o.GetId(), ref) {
			matches = append(matches, o)
		}
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return zero, status.Errorf(codes.NotFound, "no such %s: %s", kind, ref)
	}
	return zero, status.Errorf(codes.InvalidArgument, "%s id prefix %q is ambiguous: it matches %s; use more characters", kind, ref, idList(matches))
}

func idList[T interface{ GetId() string }](objs []T) string {
	ids := make([]string, len(objs))
	for i, o := range objs {
		ids[i] = o.GetId()
	}
	sort.Strings(ids)
	return strings.Join(ids, ", ")
}

func serviceName(s *shoalpb.Service) string { return s.GetSpec().GetName() }

func hostname(n *shoalpb.Node) string { return n.GetDescription().GetHostname() }

// findService resolves a service reference in tx.
func findService(tx store.ReadTx, ref string) (*shoalpb.Service, error) {
	// Fast paths; the full scan is only for prefixes.
	if svc := tx.GetService(ref); svc != nil {
		return svc, nil
	}
	if svc := tx.ServiceByName(ref); svc != nil {
		return svc, nil
	}
	return lookup("service", ref, tx.ListServices(), serviceName)
}

// taskWriteAttempts bounds how often updateTasks re-reads and retries
// after a component wrote one of the tasks first; each retry re-reads, so
// more than a couple means the tasks are churning unusually fast.
const taskWriteAttempts = 5

// updateTasks runs a store update that writes tasks, again from a fresh
// read while it loses to another write: the allocator, placement and the
// orchestrator write tasks all the time, and a version mismatch only means
// one of them won the race.
func (s *Server) updateTasks(ctx context.Context, fn func(store.ReadTx, *store.Batch) error) error {
	var err error
	for range taskWriteAttempts {
		if err = s.store.Update(ctx, fn); !errors.Is(err, store.ErrVersionMismatch) {
			break
		}
	}
	return err
}
