package dns

import (
	"maps"
	"net/netip"
	"slices"
	"sync"
)

// Table is an in-memory Resolver: per network, the services on it and their
// Records. The caller keeps it up to date (from the gossip endpoint table)
// with Set, Delete and SetNetwork; the server reads it with Lookup. Records
// are copied in and out, so callers may reuse their slices.
//
// The zero Table is empty and ready to use. It is safe for concurrent use.
type Table struct {
	mu   sync.RWMutex                 // guards following
	nets map[string]map[string]Record // network id → lower-case service name → record
}

var _ Resolver = (*Table)(nil)

// Set adds or replaces the record of service on network.
func (t *Table) Set(network, service string, r Record) {
	r = cloneRecord(r)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nets == nil {
		t.nets = make(map[string]map[string]Record)
	}
	svcs := t.nets[network]
	if svcs == nil {
		svcs = make(map[string]Record)
		t.nets[network] = svcs
	}
	svcs[normalizeService(service)] = r
}

// Delete removes service from network. Deleting what is absent is a no-op.
func (t *Table) Delete(network, service string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	svcs := t.nets[network]
	delete(svcs, normalizeService(service))
	if len(svcs) == 0 {
		delete(t.nets, network)
	}
}

// SetNetwork replaces every record of network at once, keyed by service
// name: a full sync, seen by lookups either entirely or not at all. An
// empty map deletes the network.
func (t *Table) SetNetwork(network string, services map[string]Record) {
	svcs := make(map[string]Record, len(services))
	for name, r := range services {
		svcs[normalizeService(name)] = cloneRecord(r)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(svcs) == 0 {
		delete(t.nets, network)
		return
	}
	if t.nets == nil {
		t.nets = make(map[string]map[string]Record)
	}
	t.nets[network] = svcs
}

// Networks returns the ids of the networks that hold records, in no order.
func (t *Table) Networks() []string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return slices.Collect(maps.Keys(t.nets))
}

// Lookup implements Resolver with the rules of ParseName and Record.Answer:
// the first network of scope that holds the service answers.
func (t *Table) Lookup(scope Scope, name string) ([]netip.Addr, bool) {
	service, tasks, ok := ParseName(name)
	if !ok {
		return nil, false
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, network := range scope.Networks {
		if r, found := t.nets[network][service]; found {
			return r.Answer(tasks), true
		}
	}
	return nil, false
}
