package controlapi

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// nameAttempts is how often CreateService draws a generated name that is
// already taken before giving up; with 60 million suffixes per image a
// second draw is already rare.
const nameAttempts = 5

// nameInUse is the AlreadyExists error of a taken service name.
func nameInUse(name, id string) error {
	return status.Errorf(codes.AlreadyExists, "service name %q is already in use by service %s", name, id)
}

// CreateService validates the spec, fills in its defaults (a generated
// name, replicated mode with one replica) and stores the new service.
func (s *Server) CreateService(ctx context.Context, req *shoalpb.CreateServiceRequest) (*shoalpb.CreateServiceResponse, error) {
	spec := proto.Clone(req.GetSpec()).(*shoalpb.ServiceSpec)
	if req.GetSpec() == nil {
		spec = nil
	}
	if err := normalizeSpec(spec); err != nil {
		return nil, err
	}
	generated := spec.GetName() == ""
	svc := &shoalpb.Service{Id: store.NewID(), Spec: spec}
	err := s.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		for i := 0; generated; i++ {
			spec.Name = generateName(spec.GetContainer().GetImage())
			if tx.ServiceByName(spec.GetName()) == nil {
				break
			}
			if i == nameAttempts {
				return status.Errorf(codes.AlreadyExists, "no free service name found for image %q; give the service a name", spec.GetContainer().GetImage())
			}
		}
		if other := tx.ServiceByName(spec.GetName()); other != nil {
			return nameInUse(spec.GetName(), other.GetId())
		}
		ep, err := attachNetworks(tx, spec, nil)
		if err != nil {
			return err
		}
		svc.Endpoint = ep
		b.CreateService(svc)
		return nil
	})
	if errors.Is(err, store.ErrNameConflict) {
		// Another create with this name was applied between our read and
		// ours: report it like the check above does.
		var other *shoalpb.Service
		s.store.View(func(tx store.ReadTx) { other = tx.ServiceByName(spec.GetName()) })
		return nil, nameInUse(spec.GetName(), other.GetId())
	}
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("create service %s", spec.GetName()), err)
	}
	created, err := s.readService(svc.GetId())
	if err != nil {
		return nil, err
	}
	s.logger.Info("service created", "service", created.GetSpec().GetName(), "id", created.GetId())
	return &shoalpb.CreateServiceResponse{Service: created}, nil
}

// readService returns a copy of the stored service id, after a write.
func (s *Server) readService(id string) (*shoalpb.Service, error) {
	var svc *shoalpb.Service
	s.store.View(func(tx store.ReadTx) { svc = tx.GetService(id) })
	if svc == nil {
		// Removed between the write and this read.
		return nil, status.Errorf(codes.NotFound, "no such service: %s", id)
	}
	return proto.Clone(svc).(*shoalpb.Service), nil
}

// GetService returns a service by full id, name or unique id prefix.
func (s *Server) GetService(_ context.Context, req *shoalpb.GetServiceRequest) (*shoalpb.GetServiceResponse, error) {
	var svc *shoalpb.Service
	var err error
	s.store.View(func(tx store.ReadTx) { svc, err = findService(tx, req.GetService()) })
	if err != nil {
		return nil, err
	}
	return &shoalpb.GetServiceResponse{Service: proto.Clone(svc).(*shoalpb.Service)}, nil
}

// ListServices returns the services, by id, keeping only the given names
// when any are given.
func (s *Server) ListServices(_ context.Context, req *shoalpb.ListServicesRequest) (*shoalpb.ListServicesResponse, error) {
	names := make(map[string]bool, len(req.GetNames()))
	for _, n := range req.GetNames() {
		names[n] = true
	}
	resp := &shoalpb.ListServicesResponse{}
	s.store.View(func(tx store.ReadTx) {
		for _, svc := range tx.ListServices() {
			if len(names) == 0 || names[svc.GetSpec().GetName()] {
				resp.Services = append(resp.Services, proto.Clone(svc).(*shoalpb.Service))
			}
		}
	})
	return resp, nil
}

// UpdateService replaces a service's spec. The request's version must be
// the service's current version (FailedPrecondition otherwise), so that an
// update based on a stale read never overwrites a newer one. An empty name
// keeps the current name; another name is refused.
func (s *Server) UpdateService(ctx context.Context, req *shoalpb.UpdateServiceRequest) (*shoalpb.UpdateServiceResponse, error) {
	spec := proto.Clone(req.GetSpec()).(*shoalpb.ServiceSpec)
	if req.GetSpec() == nil {
		spec = nil
	}
	if err := normalizeSpec(spec); err != nil {
		return nil, err
	}
	var id string
	err := s.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		cur, err := findService(tx, req.GetServiceId())
		if err != nil {
			return err
		}
		id = cur.GetId()
		name := cur.GetSpec().GetName()
		if v := cur.GetMeta().GetVersion(); req.GetVersion() != v {
			return staleVersion(name, req.GetVersion(), v)
		}
		if spec.GetName() == "" {
			spec.Name = name
		}
		if spec.GetName() != name {
			return status.Errorf(codes.InvalidArgument, "invalid name: a service cannot be renamed (from %q to %q); create a new service instead", name, spec.GetName())
		}
		ep, err := attachNetworks(tx, spec, cur)
		if err != nil {
			return err
		}
		svc := proto.Clone(cur).(*shoalpb.Service)
		svc.Spec = spec
		svc.Endpoint = ep
		b.UpdateService(svc) // carries cur's version: refused if written since
		return nil
	})
	if errors.Is(err, store.ErrVersionMismatch) {
		// Written between our read and our write: same answer as above.
		var cur *shoalpb.Service
		s.store.View(func(tx store.ReadTx) { cur = tx.GetService(id) })
		if cur != nil {
			return nil, staleVersion(cur.GetSpec().GetName(), req.GetVersion(), cur.GetMeta().GetVersion())
		}
	}
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("update service %s", req.GetServiceId()), err)
	}
	updated, err := s.readService(id)
	if err != nil {
		return nil, err
	}
	s.logger.Info("service updated", "service", updated.GetSpec().GetName(), "id", id, "version", updated.GetMeta().GetVersion())
	return &shoalpb.UpdateServiceResponse{Service: updated}, nil
}

func staleVersion(name string, yours, current uint64) error {
	return status.Errorf(codes.FailedPrecondition,
		"service %s was updated since you read it (your version %d, current %d); read it again and retry", name, yours, current)
}

// RemoveService deletes a service and, in the same write, sets the desired
// state of its tasks to REMOVE: agents stop them, and the reaper deletes
// them once they are reported stopped.
func (s *Server) RemoveService(ctx context.Context, req *shoalpb.RemoveServiceRequest) (*shoalpb.RemoveServiceResponse, error) {
	var svc *shoalpb.Service
	remove := func(tx store.ReadTx, b *store.Batch) error {
		var err error
		if svc, err = findService(tx, req.GetService()); err != nil {
			return err
		}
		b.DeleteService(svc.GetId(), svc.GetMeta().GetVersion())
		for _, t := range tx.TasksByService(svc.GetId()) {
			if t.GetDesiredState() == shoalpb.TaskState_TASK_STATE_REMOVE {
				continue
			}
			t = proto.Clone(t).(*shoalpb.Task)
			t.DesiredState = shoalpb.TaskState_TASK_STATE_REMOVE
			b.UpdateTask(t)
		}
		return nil
	}
	if err := s.updateTasks(ctx, remove); err != nil {
		return nil, s.toStatus(fmt.Sprintf("remove service %s", req.GetService()), err)
	}
	s.logger.Info("service removed", "service", svc.GetSpec().GetName(), "id", svc.GetId())
	return &shoalpb.RemoveServiceResponse{}, nil
}
