package store

import (
	"fmt"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Apply applies one committed Raft entry: data is a proto-marshalled
// shoalpb.StoreRequest. Its actions are applied in order, all or none: a
// refused action (ErrVersionMismatch, ErrNotFound, ErrNameConflict,
// ErrExists, ErrInvalid, wrapped with the action and object) leaves the store
// unchanged and is returned to the proposer. Every created or updated object
// gets Meta.Version = index. Apply is deterministic: it reads no clock and
// no randomness, so every manager ends in the same state.
func (s *Store) Apply(index uint64, data []byte) error {
	var req shoalpb.StoreRequest
	if err := proto.Unmarshal(data, &req); err != nil {
		return fmt.Errorf("apply entry %d: decode store request: %w: %v", index, ErrInvalid, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	txn := s.db.Txn(true)
	events := make([]Event, 0, len(req.GetActions()))
	for i, a := range req.GetActions() {
		ev, err := applyAction(txn, index, a)
		if err != nil {
			txn.Abort()
			return fmt.Errorf("apply entry %d, action %d of %d: %w", index, i+1, len(req.GetActions()), err)
		}
		events = append(events, ev)
	}
	txn.Commit()
	s.view.Store(&view{db: s.db.Snapshot(), index: index})
	s.publishLocked(events)
	return nil
}

// applyAction applies one action inside txn.
func applyAction(txn *memdb.Txn, index uint64, a *shoalpb.StoreAction) (Event, error) {
	var obj proto.Message
	switch t := a.GetTarget().(type) {
	case *shoalpb.StoreAction_Node:
		obj = t.Node
	case *shoalpb.StoreAction_Service:
		obj = t.Service
	case *shoalpb.StoreAction_Task:
		obj = t.Task
	case *shoalpb.StoreAction_Cluster:
		obj = t.Cluster
	case *shoalpb.StoreAction_Network:
		obj = t.Network
	}
	table := tableOf(obj)
	if table == "" {
		return Event{}, fmt.Errorf("%s action without an object: %w", a.GetKind(), ErrInvalid)
	}
	kind, id := kinds[table], objectID(obj)
	if id == "" {
		return Event{}, fmt.Errorf("%s %s without an id: %w", a.GetKind(), kind, ErrInvalid)
	}
	raw, err := txn.First(table, indexID, id)
	if err != nil {
		return Event{}, fmt.Errorf("look up %s %s: %w", kind, id, err)
	}
	var existing proto.Message
	if raw != nil {
		existing = raw.(proto.Message)
	}
	checkVersion := func(verb string) error {
		if existing == nil {
			return fmt.Errorf("%s %s %s: %w", verb, kind, id, ErrNotFound)
		}
		stored := objectMeta(existing).GetVersion()
		if want := a.GetExpectedVersion(); want != 0 && want != stored {
			return fmt.Errorf("%s %s %s: %w (expected version %d, stored %d)", verb, kind, id, ErrVersionMismatch, want, stored)
		}
		return nil
	}

	switch a.GetKind() {
	case shoalpb.StoreAction_KIND_CREATE:
		if existing != nil {
			return Event{}, fmt.Errorf("create %s %s: %w", kind, id, ErrExists)
		}
		if table == tableCluster {
			// There is one cluster object: a second one is a bug or a
			// second init racing the first.
			if other, _ := txn.First(tableCluster, indexID); other != nil {
				return Event{}, fmt.Errorf("create cluster %s: cluster %s %w", id, objectID(other.(proto.Message)), ErrExists)
			}
		}
		if err := checkName(txn, obj); err != nil {
			return Event{}, fmt.Errorf("create %s %s: %w", kind, id, err)
		}
		objectMeta(obj).Version = index
		if err := txn.Insert(table, obj); err != nil {
			return Event{}, fmt.Errorf("create %s %s: %w", kind, id, err)
		}
		return Event{Kind: EventCreate, Index: index, Object: obj}, nil

	case shoalpb.StoreAction_KIND_UPDATE:
		if err := checkVersion("update"); err != nil {
			return Event{}, err
		}
		if err := checkName(txn, obj); err != nil {
			return Event{}, fmt.Errorf("update %s %s: %w", kind, id, err)
		}
		meta := objectMeta(obj)
		meta.Version = index
		// Creation time is the store's, whatever the writer sent.
		meta.CreatedAt = objectMeta(existing).GetCreatedAt()
		if err := txn.Insert(table, obj); err != nil {
			return Event{}, fmt.Errorf("update %s %s: %w", kind, id, err)
		}
		return Event{Kind: EventUpdate, Index: index, Object: obj}, nil

	case shoalpb.StoreAction_KIND_DELETE:
		if err := checkVersion("delete"); err != nil {
			return Event{}, err
		}
		if err := txn.Delete(table, existing); err != nil {
			return Event{}, fmt.Errorf("delete %s %s: %w", kind, id, err)
		}
		return Event{Kind: EventDelete, Index: index, Object: existing}, nil
	}
	return Event{}, fmt.Errorf("%s %s: unknown action kind %d: %w", kind, id, a.GetKind(), ErrInvalid)
}

// checkName refuses a service (network) whose name another service
// (network) already has.
func checkName(txn *memdb.Txn, obj proto.Message) error {
	var name string
	switch o := obj.(type) {
	case *shoalpb.Service:
		name = o.GetSpec().GetName()
	case *shoalpb.Network:
		name = o.GetSpec().GetName()
	}
	if name == "" {
		return nil
	}
	table := tableOf(obj)
	it, err := txn.Get(table, indexName, name)
	if err != nil {
		return fmt.Errorf("look up %s name %q: %w", kinds[table], name, err)
	}
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if other := raw.(proto.Message); objectID(other) != objectID(obj) {
			return fmt.Errorf("name %q is used by %s %s: %w", name, kinds[table], objectID(other), ErrNameConflict)
		}
	}
	return nil
}

// Snapshot returns the whole store as a proto-marshalled
// shoalpb.StoreSnapshot, objects ordered by id.
func (s *Store) Snapshot() ([]byte, error) {
	var snap shoalpb.StoreSnapshot
	s.View(func(tx ReadTx) {
		snap.Nodes = tx.ListNodes()
		snap.Services = tx.ListServices()
		snap.Tasks = tx.ListTasks()
		if c := tx.GetCluster(); c != nil {
			snap.Clusters = []*shoalpb.Cluster{c}
		}
		snap.Networks = tx.ListNetworks()
	})
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(&snap)
	if err != nil {
		return nil, fmt.Errorf("marshal store snapshot: %w", err)
	}
	return data, nil
}

// Restore replaces the whole store with a snapshot's data. The snapshot
// holds no index, so Index becomes the highest object version in it (a lower
// bound of the snapshot's raft index). Every watcher's channel is closed:
// watchers must resync from View, as after falling behind.
func (s *Store) Restore(data []byte) error {
	var snap shoalpb.StoreSnapshot
	if err := proto.Unmarshal(data, &snap); err != nil {
		return fmt.Errorf("restore store: decode snapshot: %w", err)
	}
	db := newDB()
	txn := db.Txn(true)
	var index uint64
	insert := func(table string, m proto.Message) error {
		index = max(index, objectMeta(m).GetVersion())
		if err := txn.Insert(table, m); err != nil {
			return fmt.Errorf("restore store: insert %s %s: %w", kinds[table], objectID(m), err)
		}
		return nil
	}
	var objs []proto.Message
	for _, o := range snap.GetNodes() {
		objs = append(objs, o)
	}
	for _, o := range snap.GetServices() {
		objs = append(objs, o)
	}
	for _, o := range snap.GetTasks() {
		objs = append(objs, o)
	}
	for _, o := range snap.GetClusters() {
		objs = append(objs, o)
	}
	for _, o := range snap.GetNetworks() {
		objs = append(objs, o)
	}
	for _, o := range objs {
		if objectID(o) == "" {
			txn.Abort()
			return fmt.Errorf("restore store: %s without an id: %w", kinds[tableOf(o)], ErrInvalid)
		}
		if err := insert(tableOf(o), o); err != nil {
			txn.Abort()
			return err
		}
	}
	txn.Commit()

	s.mu.Lock()
	defer s.mu.Unlock()
	s.db = db
	s.view.Store(&view{db: db.Snapshot(), index: index})
	for w := range s.watchers {
		s.dropLocked(w)
	}
	return nil
}
