package store

import (
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Batch collects the writes of one Update, proposed as one Raft entry and
// applied atomically. Objects are cloned when added: the caller may keep
// using its copy.
//
// Create* stamp Meta.CreatedAt and UpdatedAt, Update* stamp UpdatedAt, from
// the proposer's clock (never at apply time: apply must be deterministic).
// Update* use the object's Meta.Version as the expected version (0 means any
// version); Delete* take the id and the expected version (0 = any).
type Batch struct {
	now     time.Time
	actions []*shoalpb.StoreAction
}

// Len returns the number of writes in the batch.
func (b *Batch) Len() int { return len(b.actions) }

func (b *Batch) CreateNode(n *shoalpb.Node)       { b.create(n) }
func (b *Batch) UpdateNode(n *shoalpb.Node)       { b.update(n) }
func (b *Batch) CreateService(s *shoalpb.Service) { b.create(s) }
func (b *Batch) UpdateService(s *shoalpb.Service) { b.update(s) }
func (b *Batch) CreateTask(t *shoalpb.Task)       { b.create(t) }
func (b *Batch) UpdateTask(t *shoalpb.Task)       { b.update(t) }
func (b *Batch) CreateCluster(c *shoalpb.Cluster) { b.create(c) }
func (b *Batch) UpdateCluster(c *shoalpb.Cluster) { b.update(c) }
func (b *Batch) CreateNetwork(n *shoalpb.Network) { b.create(n) }
func (b *Batch) UpdateNetwork(n *shoalpb.Network) { b.update(n) }

func (b *Batch) DeleteNetwork(id string, version uint64) {
	b.add(shoalpb.StoreAction_KIND_DELETE, version, &shoalpb.Network{Id: id})
}

func (b *Batch) DeleteNode(id string, version uint64) {
	b.add(shoalpb.StoreAction_KIND_DELETE, version, &shoalpb.Node{Id: id})
}

func (b *Batch) DeleteService(id string, version uint64) {
	b.add(shoalpb.StoreAction_KIND_DELETE, version, &shoalpb.Service{Id: id})
}

func (b *Batch) DeleteTask(id string, version uint64) {
	b.add(shoalpb.StoreAction_KIND_DELETE, version, &shoalpb.Task{Id: id})
}

func (b *Batch) create(m proto.Message) {
	m = proto.Clone(m)
	meta := objectMeta(m)
	ts := timestamppb.New(b.now)
	meta.Version = 0 // assigned at apply
	meta.CreatedAt, meta.UpdatedAt = ts, ts
	b.add(shoalpb.StoreAction_KIND_CREATE, 0, m)
}

func (b *Batch) update(m proto.Message) {
	m = proto.Clone(m)
	meta := objectMeta(m)
	expected := meta.GetVersion()
	meta.UpdatedAt = timestamppb.New(b.now)
	b.add(shoalpb.StoreAction_KIND_UPDATE, expected, m)
}

func (b *Batch) add(kind shoalpb.StoreAction_Kind, expected uint64, m proto.Message) {
	a := &shoalpb.StoreAction{Kind: kind, ExpectedVersion: expected}
	switch o := m.(type) {
	case *shoalpb.Node:
		a.Target = &shoalpb.StoreAction_Node{Node: o}
	case *shoalpb.Service:
		a.Target = &shoalpb.StoreAction_Service{Service: o}
	case *shoalpb.Task:
		a.Target = &shoalpb.StoreAction_Task{Task: o}
	case *shoalpb.Cluster:
		a.Target = &shoalpb.StoreAction_Cluster{Cluster: o}
	case *shoalpb.Network:
		a.Target = &shoalpb.StoreAction_Network{Network: o}
	}
	b.actions = append(b.actions, a)
}

// marshal encodes the batch as the Raft entry Apply expects. Deterministic
// so that the same batch always yields the same bytes.
func (b *Batch) marshal() ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(&shoalpb.StoreRequest{Actions: b.actions})
}
