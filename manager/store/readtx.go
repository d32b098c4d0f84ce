package store

import (
	"github.com/hashicorp/go-memdb"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// ReadTx is a consistent read-only view of the store. Returned objects are
// the store's own and shared with every reader: callers must proto.Clone
// them before modifying. Lists are ordered by id (TasksByService,
// TasksByNode and Attachments too).
type ReadTx interface {
	GetNode(id string) *shoalpb.Node
	ListNodes() []*shoalpb.Node
	GetService(id string) *shoalpb.Service
	ServiceByName(name string) *shoalpb.Service
	ListServices() []*shoalpb.Service
	GetTask(id string) *shoalpb.Task
	ListTasks() []*shoalpb.Task
	TasksByService(serviceID string) []*shoalpb.Task
	TasksByNode(nodeID string) []*shoalpb.Task
	// Attachments returns the tasks that are network attachments (shoal
	// network connect): they belong to no service.
	Attachments() []*shoalpb.Task
	// GetCluster returns the single cluster object, nil before init.
	GetCluster() *shoalpb.Cluster
	GetNetwork(id string) *shoalpb.Network
	NetworkByName(name string) *shoalpb.Network
	ListNetworks() []*shoalpb.Network
	// Index is the raft index of the last applied write (after a Restore,
	// the highest object version in the snapshot).
	Index() uint64
}

type readTx struct {
	txn   *memdb.Txn
	index uint64
}

// first returns the object at table/index/arg, nil if none. Lookups cannot
// fail with the static schema and string arguments, so errors read as "none".
func first[T any](tx *readTx, table, index, arg string) T {
	var zero T
	raw, err := tx.txn.First(table, index, arg)
	if err != nil || raw == nil {
		return zero
	}
	return raw.(T)
}

// list returns every object at table/index (matching args if any).
func list[T any](tx *readTx, table, index string, args ...any) []T {
	it, err := tx.txn.Get(table, index, args...)
	if err != nil {
		return nil
	}
	var out []T
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(T))
	}
	return out
}

func (tx *readTx) GetNode(id string) *shoalpb.Node {
	return first[*shoalpb.Node](tx, tableNode, indexID, id)
}

func (tx *readTx) ListNodes() []*shoalpb.Node {
	return list[*shoalpb.Node](tx, tableNode, indexID)
}

func (tx *readTx) GetService(id string) *shoalpb.Service {
	return first[*shoalpb.Service](tx, tableService, indexID, id)
}

func (tx *readTx) ServiceByName(name string) *shoalpb.Service {
	if name == "" {
		return nil
	}
	return first[*shoalpb.Service](tx, tableService, indexName, name)
}

func (tx *readTx) ListServices() []*shoalpb.Service {
	return list[*shoalpb.Service](tx, tableService, indexID)
}

func (tx *readTx) GetTask(id string) *shoalpb.Task {
	return first[*shoalpb.Task](tx, tableTask, indexID, id)
}

func (tx *readTx) ListTasks() []*shoalpb.Task {
	return list[*shoalpb.Task](tx, tableTask, indexID)
}

func (tx *readTx) TasksByService(serviceID string) []*shoalpb.Task {
	if serviceID == "" {
		return nil
	}
	return list[*shoalpb.Task](tx, tableTask, indexServiceID, serviceID)
}

func (tx *readTx) TasksByNode(nodeID string) []*shoalpb.Task {
	if nodeID == "" {
		return nil
	}
	return list[*shoalpb.Task](tx, tableTask, indexNodeID, nodeID)
}

func (tx *readTx) Attachments() []*shoalpb.Task {
	return list[*shoalpb.Task](tx, tableTask, indexAttachment, attachmentKey)
}

func (tx *readTx) GetCluster() *shoalpb.Cluster {
	raw, err := tx.txn.First(tableCluster, indexID)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*shoalpb.Cluster)
}

func (tx *readTx) GetNetwork(id string) *shoalpb.Network {
	return first[*shoalpb.Network](tx, tableNetwork, indexID, id)
}

func (tx *readTx) NetworkByName(name string) *shoalpb.Network {
	if name == "" {
		return nil
	}
	return first[*shoalpb.Network](tx, tableNetwork, indexName, name)
}

func (tx *readTx) ListNetworks() []*shoalpb.Network {
	return list[*shoalpb.Network](tx, tableNetwork, indexID)
}

func (tx *readTx) Index() uint64 { return tx.index }
