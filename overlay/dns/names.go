package dns

import (
	"net/netip"
	"slices"
	"strings"
)

// tasksPrefix marks a query for a service's task addresses.
const tasksPrefix = "tasks."

// Scope is what a container may see: the networks it is attached to.
type Scope struct {
	// Networks are the ids of the container's networks, in the order they
	// are consulted: the first one that knows a service answers for it.
	Networks []string
}

// Resolver answers the Shoal names a container asks for.
//
// Lookup reports whether name is a Shoal name visible in scope (ok) and its
// addresses. ok with no addresses is a known name with nothing ready: the
// server answers it with an empty NOERROR. Not ok sends the query to the
// upstream resolvers. The caller may modify the returned slice. Lookup is
// called concurrently from many goroutines and must not block.
type Resolver interface {
	Lookup(scope Scope, name string) (addrs []netip.Addr, ok bool)
}

// Record is one service as seen on one network.
type Record struct {
	// VIP is the service's virtual IP on the network, answered for the
	// service name in VIP mode. Invalid (the zero Addr) when the service
	// has no VIP there yet.
	VIP netip.Addr
	// DNSRR is the dnsrr endpoint mode: the service name answers the ready
	// task addresses instead of a VIP.
	DNSRR bool
	// Tasks are the addresses of the service's ready tasks on the network.
	Tasks []netip.Addr
}

// Answer returns the addresses a query for the record's service answers:
// the ready task addresses for tasks.SERVICE (tasks true) or in dnsrr mode,
// the VIP otherwise. The result is a new slice; it is empty, not nil, when
// nothing is ready.
func (r Record) Answer(tasks bool) []netip.Addr {
	if tasks || r.DNSRR {
		return append([]netip.Addr{}, r.Tasks...)
	}
	if r.VIP.IsValid() {
		return []netip.Addr{r.VIP}
	}
	return []netip.Addr{}
}

// ParseName applies the name rules to a query name: it returns the service
// the name asks about, lower-cased (service names match case-insensitively),
// and whether it asks for the task addresses (tasks.SERVICE). A trailing
// dot is ignored ("tasks." is the service tasks). ok is false for names
// that leave no service name: the root, and "tasks." followed by nothing.
func ParseName(name string) (service string, tasks bool, ok bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if rest, found := strings.CutPrefix(name, tasksPrefix); found {
		name, tasks = rest, true
	}
	if name == "" {
		return "", false, false
	}
	return name, tasks, true
}

// normalizeService returns the key a service name is stored under.
func normalizeService(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// cloneRecord copies r so that the caller's slice may be reused.
func cloneRecord(r Record) Record {
	r.Tasks = slices.Clone(r.Tasks)
	return r
}
