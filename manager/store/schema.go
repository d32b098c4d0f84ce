package store

import (
	"fmt"

	"github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Table and index names of the memdb schema.
const (
	tableNode    = "nodes"
	tableService = "services"
	tableTask    = "tasks"
	tableCluster = "clusters"
	tableNetwork = "networks"

	indexID        = "id"
	indexName      = "name"
	indexServiceID = "service_id"
	indexNodeID    = "node_id"
	// indexAttachment holds the tasks that are network attachments
	// (Task.attachment), all under attachmentKey.
	indexAttachment = "attachment"
	attachmentKey   = "attachment"
)

// kinds names each table's objects in errors.
var kinds = map[string]string{
	tableNode:    "node",
	tableService: "service",
	tableTask:    "task",
	tableCluster: "cluster",
	tableNetwork: "network",
}

func schema() *memdb.DBSchema {
	idIndex := &memdb.IndexSchema{
		Name:    indexID,
		Unique:  true,
		Indexer: stringIndex(func(o proto.Message) string { return objectID(o) }),
	}
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableNode: {Name: tableNode, Indexes: map[string]*memdb.IndexSchema{indexID: idIndex}},
		tableService: {Name: tableService, Indexes: map[string]*memdb.IndexSchema{
			indexID: idIndex,
			// Not Unique: memdb does not enforce uniqueness on insert
			// anyway; Apply checks names itself and refuses conflicts.
			indexName: {
				Name:         indexName,
				AllowMissing: true,
				Indexer: stringIndex(func(o proto.Message) string {
					return o.(*shoalpb.Service).GetSpec().GetName()
				}),
			},
		}},
		tableTask: {Name: tableTask, Indexes: map[string]*memdb.IndexSchema{
			indexID: idIndex,
			indexServiceID: {
				Name:         indexServiceID,
				AllowMissing: true,
				Indexer: stringIndex(func(o proto.Message) string {
					return o.(*shoalpb.Task).GetServiceId()
				}),
			},
			indexNodeID: {
				Name:         indexNodeID,
				AllowMissing: true,
				Indexer: stringIndex(func(o proto.Message) string {
					return o.(*shoalpb.Task).GetNodeId()
				}),
			},
			indexAttachment: {
				Name:         indexAttachment,
				AllowMissing: true,
				Indexer: stringIndex(func(o proto.Message) string {
					if o.(*shoalpb.Task).GetAttachment() == nil {
						return ""
					}
					return attachmentKey
				}),
			},
		}},
		tableCluster: {Name: tableCluster, Indexes: map[string]*memdb.IndexSchema{indexID: idIndex}},
		tableNetwork: {Name: tableNetwork, Indexes: map[string]*memdb.IndexSchema{
			indexID: idIndex,
			indexName: {
				Name:         indexName,
				AllowMissing: true,
				Indexer: stringIndex(func(o proto.Message) string {
					return o.(*shoalpb.Network).GetSpec().GetName()
				}),
			},
		}},
	}}
}

// stringIndex indexes objects by a string computed from them; an empty
// string means "not indexed". Keys are NUL-terminated like memdb's
// StringFieldIndex so that "ab" is not found under "a".
type stringIndex func(proto.Message) string

func (f stringIndex) FromObject(raw any) (bool, []byte, error) {
	m, ok := raw.(proto.Message)
	if !ok {
		return false, nil, fmt.Errorf("index: %T is not a proto message", raw)
	}
	v := f(m)
	if v == "" {
		return false, nil, nil
	}
	return true, append([]byte(v), 0), nil
}

func (f stringIndex) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("index: want 1 argument, got %d", len(args))
	}
	v, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("index: argument is %T, want string", args[0])
	}
	return append([]byte(v), 0), nil
}

// objectID returns the id of a stored object.
func objectID(m proto.Message) string {
	switch o := m.(type) {
	case *shoalpb.Node:
		return o.GetId()
	case *shoalpb.Service:
		return o.GetId()
	case *shoalpb.Task:
		return o.GetId()
	case *shoalpb.Cluster:
		return o.GetId()
	case *shoalpb.Network:
		return o.GetId()
	}
	return ""
}

// objectMeta returns the Meta of a stored object, creating it if missing.
func objectMeta(m proto.Message) *shoalpb.Meta {
	switch o := m.(type) {
	case *shoalpb.Node:
		if o.Meta == nil {
			o.Meta = &shoalpb.Meta{}
		}
		return o.Meta
	case *shoalpb.Service:
		if o.Meta == nil {
			o.Meta = &shoalpb.Meta{}
		}
		return o.Meta
	case *shoalpb.Task:
		if o.Meta == nil {
			o.Meta = &shoalpb.Meta{}
		}
		return o.Meta
	case *shoalpb.Cluster:
		if o.Meta == nil {
			o.Meta = &shoalpb.Meta{}
		}
		return o.Meta
	case *shoalpb.Network:
		if o.Meta == nil {
			o.Meta = &shoalpb.Meta{}
		}
		return o.Meta
	}
	return &shoalpb.Meta{}
}

// tableOf returns the table an object lives in, "" for foreign types.
func tableOf(m proto.Message) string {
	switch m.(type) {
	case *shoalpb.Node:
		return tableNode
	case *shoalpb.Service:
		return tableService
	case *shoalpb.Task:
		return tableTask
	case *shoalpb.Cluster:
		return tableCluster
	case *shoalpb.Network:
		return tableNetwork
	}
	return ""
}
