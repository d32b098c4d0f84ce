package ipam

import (
	"net/netip"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Usage returns, per network id, the addresses in use: the gateway, every
// service's virtual IP, and the addresses of tasks whose container may still
// hold them (any task not finished; a finished task's container is gone, so
// its address is free again although the task keeps it on record).
func Usage(networks []*shoalpb.Network, services []*shoalpb.Service, tasks []*shoalpb.Task) map[string]*AddrSet {
	sets := make(map[string]*AddrSet, len(networks))
	for _, n := range networks {
		subnet, err := netip.ParsePrefix(n.GetSubnet())
		if err != nil {
			continue
		}
		gw, _ := netip.ParseAddr(n.GetGateway())
		sets[n.GetId()] = NewAddrSet(subnet, gw)
	}
	reserve := func(networkID, cidr string) {
		s := sets[networkID]
		if s == nil {
			return
		}
		if p, err := netip.ParsePrefix(cidr); err == nil {
			s.Reserve(p.Addr())
		}
	}
	for _, svc := range services {
		for _, v := range svc.GetEndpoint().GetVirtualIps() {
			reserve(v.GetNetworkId(), v.GetAddr())
		}
	}
	for _, t := range tasks {
		if HoldsAddresses(t) {
			for _, a := range t.GetNetworks() {
				for _, addr := range a.GetAddresses() {
					reserve(a.GetNetworkId(), addr)
				}
			}
		}
	}
	return sets
}

// HoldsAddresses reports whether a task's container may still use its
// network addresses: until it has finished (COMPLETE, SHUTDOWN, FAILED,
// REJECTED or ORPHANED).
func HoldsAddresses(t *shoalpb.Task) bool {
	return t.GetStatus().GetState() < shoalpb.TaskState_TASK_STATE_COMPLETE
}
