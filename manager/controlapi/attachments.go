package controlapi

import (
	"context"
	"fmt"
	"path"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/shoal-project/shoal/manager/ipam"
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// attachmentNameLen is how much of an attachment's id its default name
// takes when the namespace's path gives none, like a short container id.
const attachmentNameLen = 12

// netnsDirs hold the namespace files `ip netns add` makes; a namespace
// there is named after its file.
var netnsDirs = []string{"/run/netns", "/var/run/netns"}

// ConnectNetwork stores an attachment task: the namespace at req.Netns on
// the node, joined to the given attachable networks. The allocator gives
// it its addresses and placement confirms the node, like any task; the
// agent plugs the namespace in.
func (s *Server) ConnectNetwork(ctx context.Context, req *shoalpb.ConnectNetworkRequest) (*shoalpb.ConnectNetworkResponse, error) {
	netns := req.GetNetns()
	switch {
	case len(req.GetNetworks()) == 0:
		return nil, invalid("networks", "name at least one network to connect to")
	case netns == "" || !path.IsAbs(netns) || path.Clean(netns) != netns:
		return nil, invalid("netns", "%q: expected the absolute path of a network namespace on the node, like /run/netns/NAME or /proc/PID/ns/net", netns)
	case req.GetNode() == "":
		return nil, invalid("node", "name the node whose namespace to connect")
	}
	id := store.NewID()
	name := req.GetName()
	if name == "" {
		name = defaultAttachmentName(netns, id)
	}
	if !serviceNamePattern.MatchString(name) {
		return nil, invalid("name", "%q must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit", name)
	}
	var t *shoalpb.Task
	err := s.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		node := tx.GetNode(req.GetNode())
		if node == nil {
			var err error
			if node, err = lookup("node", req.GetNode(), tx.ListNodes(), hostname); err != nil {
				return err
			}
		}
		spec := &shoalpb.ServiceSpec{Name: name}
		att := &shoalpb.Attachment{Netns: netns, Name: name}
		seen := make(map[string]bool)
		for i, ref := range req.GetNetworks() {
			n, err := findNetwork(tx, ref)
			if err != nil {
				return invalid(fmt.Sprintf("networks[%d]", i), "%v", status.Convert(err).Message())
			}
			if !n.GetSpec().GetAttachable() {
				return status.Errorf(codes.FailedPrecondition, "network %s is not attachable: only its services' tasks may join it (create a network with --attachable for namespaces that no service runs)", networkName(n))
			}
			if seen[n.GetId()] {
				return invalid(fmt.Sprintf("networks[%d]", i), "network %s is given twice", networkName(n))
			}
			seen[n.GetId()] = true
			spec.Networks = append(spec.Networks, &shoalpb.NetworkAttachmentConfig{Target: n.GetId()})
			att.Interfaces = append(att.Interfaces, fmt.Sprintf("eth%d", i+1))
		}
		for _, o := range tx.TasksByNode(node.GetId()) {
			if o.GetAttachment().GetNetns() != netns {
				continue
			}
			if live(o) {
				return status.Errorf(codes.AlreadyExists, "namespace %s on node %s is already connected (attachment %s, %s); disconnect it first, then connect it to every network it needs in one command", netns, hostname(node), o.GetAttachment().GetName(), o.GetId())
			}
			if ipam.HoldsAddresses(o) && o.GetStatus().GetState() >= shoalpb.TaskState_TASK_STATE_ASSIGNED {
				// Its agent may still be unplugging it: the interface
				// names would clash.
				return status.Errorf(codes.Unavailable, "namespace %s on node %s is still being disconnected (attachment %s); try again in a moment", netns, hostname(node), o.GetId())
			}
		}
		for _, o := range tx.Attachments() {
			if live(o) && o.GetAttachment().GetName() == name {
				return status.Errorf(codes.AlreadyExists, "attachment name %q is already in use by attachment %s; choose another with --name", name, o.GetId())
			}
		}
		t = &shoalpb.Task{
			Id:           id,
			NodeId:       node.GetId(),
			ServiceName:  name,
			Spec:         spec,
			DesiredState: shoalpb.TaskState_TASK_STATE_RUNNING,
			Status: &shoalpb.TaskStatus{
				Timestamp: timestamppb.Now(),
				State:     shoalpb.TaskState_TASK_STATE_NEW,
				Message:   "created",
			},
			Attachment: att,
		}
		b.CreateTask(t)
		return nil
	})
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("connect %s to %s", netns, strings.Join(req.GetNetworks(), ", ")), err)
	}
	created, err := s.readTask(id)
	if err != nil {
		return nil, err
	}
	s.logger.Info("namespace connected", "attachment", name, "id", id, "node", t.GetNodeId(), "netns", netns)
	return &shoalpb.ConnectNetworkResponse{Attachment: created}, nil
}

// DisconnectNetwork asks the attachment's node to unplug it; the reaper
// deletes it once the agent reports it stopped, or at once when it never
// reached a node.
func (s *Server) DisconnectNetwork(ctx context.Context, req *shoalpb.DisconnectNetworkRequest) (*shoalpb.DisconnectNetworkResponse, error) {
	var id string
	err := s.updateTasks(ctx, func(tx store.ReadTx, b *store.Batch) error {
		t, err := findAttachment(tx, req.GetAttachment())
		if err != nil {
			return err
		}
		id = t.GetId()
		if t.GetDesiredState() == shoalpb.TaskState_TASK_STATE_REMOVE {
			return nil
		}
		t = proto.Clone(t).(*shoalpb.Task)
		t.DesiredState = shoalpb.TaskState_TASK_STATE_REMOVE
		b.UpdateTask(t)
		return nil
	})
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("disconnect %s", req.GetAttachment()), err)
	}
	t, err := s.readTask(id)
	if status.Code(err) == codes.NotFound {
		// Reaped already: it never reached its node.
		return &shoalpb.DisconnectNetworkResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	s.logger.Info("namespace disconnecting", "attachment", t.GetAttachment().GetName(), "id", id)
	return &shoalpb.DisconnectNetworkResponse{Attachment: t}, nil
}

// findAttachment resolves an attachment by id, live attachment name or
// unique id prefix.
func findAttachment(tx store.ReadTx, ref string) (*shoalpb.Task, error) {
	if t := tx.GetTask(ref); t != nil && t.GetAttachment() != nil {
		return t, nil
	}
	return lookup("attachment", ref, tx.Attachments(), func(t *shoalpb.Task) string {
		if !live(t) {
			return "" // a finished attachment's name is free again
		}
		return t.GetAttachment().GetName()
	})
}

// live reports whether a task still holds its place: it is meant to run
// and has not finished.
func live(t *shoalpb.Task) bool {
	return t.GetDesiredState() <= shoalpb.TaskState_TASK_STATE_RUNNING &&
		t.GetStatus().GetState() < shoalpb.TaskState_TASK_STATE_COMPLETE
}

// defaultAttachmentName names an attachment after its namespace file when
// `ip netns add` made it, else after its short id.
func defaultAttachmentName(netns, id string) string {
	for _, dir := range netnsDirs {
		if path.Dir(netns) == dir && serviceNamePattern.MatchString(path.Base(netns)) {
			return path.Base(netns)
		}
	}
	return id[:min(attachmentNameLen, len(id))]
}

// readTask returns a copy of the stored task.
func (s *Server) readTask(id string) (*shoalpb.Task, error) {
	var t *shoalpb.Task
	s.store.View(func(tx store.ReadTx) { t = tx.GetTask(id) })
	if t == nil {
		return nil, status.Errorf(codes.NotFound, "no such task: %s", id)
	}
	return proto.Clone(t).(*shoalpb.Task), nil
}
