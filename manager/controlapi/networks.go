package controlapi

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-project/shoal/manager/ipam"
	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

const (
	// driverOverlay is the only network driver so far.
	driverOverlay = "overlay"
	// minSubnetBits and maxSubnetBits bound a network's subnet: a /8 is
	// more than any cluster needs, and a /29 leaves room for a gateway,
	// a VIP and a few tasks.
	minSubnetBits = 8
	maxSubnetBits = 29
)

// CreateNetwork validates the spec, allocates a subnet (unless given), a
// gateway and a VNI, and stores the network.
func (s *Server) CreateNetwork(ctx context.Context, req *shoalpb.CreateNetworkRequest) (*shoalpb.CreateNetworkResponse, error) {
	spec := proto.Clone(req.GetSpec()).(*shoalpb.NetworkSpec)
	if req.GetSpec() == nil {
		return nil, status.Error(codes.InvalidArgument, "invalid spec: a network spec is required")
	}
	subnet, gateway, err := normalizeNetworkSpec(spec)
	if err != nil {
		return nil, err
	}
	n := &shoalpb.Network{Id: store.NewID(), Spec: spec}
	err = s.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		if other := tx.NetworkByName(spec.GetName()); other != nil {
			return status.Errorf(codes.AlreadyExists, "network name %q is already in use by network %s", spec.GetName(), other.GetId())
		}
		var used []netip.Prefix
		vnis := make(map[uint32]bool)
		for _, o := range tx.ListNetworks() {
			vnis[o.GetVni()] = true
			p, err := netip.ParsePrefix(o.GetSubnet())
			if err != nil {
				continue
			}
			if subnet.IsValid() && p.Overlaps(subnet) {
				return status.Errorf(codes.AlreadyExists, "subnet %s overlaps network %s (%s); choose another", subnet, o.GetSpec().GetName(), p)
			}
			used = append(used, p)
		}
		sub := subnet
		if !sub.IsValid() {
			pools, size, err := addressPools(tx.GetCluster())
			if err != nil {
				return status.Errorf(codes.FailedPrecondition, "cluster address pools: %v", err)
			}
			if sub, err = ipam.AllocateSubnet(pools, size, used); err != nil {
				return status.Errorf(codes.ResourceExhausted, "allocate a subnet for network %s: %v", spec.GetName(), err)
			}
		}
		vni, err := ipam.AllocateVNI(vnis)
		if err != nil {
			return status.Errorf(codes.ResourceExhausted, "allocate a VNI for network %s: %v", spec.GetName(), err)
		}
		gw := gateway
		if !gw.IsValid() {
			gw = ipam.Gateway(sub)
		}
		n.Vni, n.Subnet, n.Gateway = vni, sub.String(), gw.String()
		b.CreateNetwork(n)
		return nil
	})
	if errors.Is(err, store.ErrNameConflict) {
		return nil, status.Errorf(codes.AlreadyExists, "network name %q is already in use", spec.GetName())
	}
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("create network %s", spec.GetName()), err)
	}
	var created *shoalpb.Network
	s.store.View(func(tx store.ReadTx) { created = tx.GetNetwork(n.GetId()) })
	if created == nil {
		return nil, status.Errorf(codes.NotFound, "network %s was removed right after it was created", spec.GetName())
	}
	s.logger.Info("network created", "network", spec.GetName(), "id", n.GetId(), "subnet", created.GetSubnet(), "vni", created.GetVni())
	return &shoalpb.CreateNetworkResponse{Network: proto.Clone(created).(*shoalpb.Network)}, nil
}

// normalizeNetworkSpec validates spec, fills in its driver, and returns
// its subnet and gateway when given (invalid values otherwise).
func normalizeNetworkSpec(spec *shoalpb.NetworkSpec) (netip.Prefix, netip.Addr, error) {
	var subnet netip.Prefix
	var gateway netip.Addr
	if !serviceNamePattern.MatchString(spec.GetName()) {
		return subnet, gateway, invalid("name", "%q must be 1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit", spec.GetName())
	}
	switch spec.GetDriver() {
	case "":
		spec.Driver = driverOverlay
	case driverOverlay:
	default:
		return subnet, gateway, invalid("driver", "%q: only %q is supported", spec.GetDriver(), driverOverlay)
	}
	if err := validateLabels(spec.GetLabels()); err != nil {
		return subnet, gateway, err
	}
	if s := spec.GetSubnet(); s != "" {
		p, err := netip.ParsePrefix(s)
		switch {
		case err != nil || !p.Addr().Is4():
			return subnet, gateway, invalid("subnet", "%q: expected an IPv4 CIDR like 10.20.0.0/24", s)
		case p.Bits() < minSubnetBits || p.Bits() > maxSubnetBits:
			return subnet, gateway, invalid("subnet", "%s: the prefix length must be /%d to /%d", s, minSubnetBits, maxSubnetBits)
		case p != p.Masked():
			return subnet, gateway, invalid("subnet", "%s has host bits set; did you mean %s?", s, p.Masked())
		}
		subnet = p
	}
	if g := spec.GetGateway(); g != "" {
		a, err := netip.ParseAddr(g)
		switch {
		case err != nil || !a.Is4():
			return subnet, gateway, invalid("gateway", "%q: expected an IPv4 address", g)
		case !subnet.IsValid():
			return subnet, gateway, invalid("gateway", "a gateway needs a subnet (--subnet)")
		case !subnet.Contains(a) || a == subnet.Addr():
			return subnet, gateway, invalid("gateway", "%s is not a host address of subnet %s", g, subnet)
		}
		gateway = a
	}
	return subnet, gateway, nil
}

// addressPools returns the cluster's pools and subnet size, or the
// defaults.
func addressPools(c *shoalpb.Cluster) ([]netip.Prefix, int, error) {
	texts := c.GetSpec().GetDefaultAddressPools()
	if len(texts) == 0 {
		texts = []string{ipam.DefaultPool}
	}
	pools := make([]netip.Prefix, 0, len(texts))
	for _, t := range texts {
		p, err := netip.ParsePrefix(t)
		if err != nil {
			return nil, 0, fmt.Errorf("pool %q: %w", t, err)
		}
		pools = append(pools, p)
	}
	size := int(c.GetSpec().GetSubnetSize())
	if size == 0 {
		size = ipam.DefaultSubnetSize
	}
	return pools, size, nil
}

func networkName(n *shoalpb.Network) string { return n.GetSpec().GetName() }

// findNetwork resolves a network reference in tx.
func findNetwork(tx store.ReadTx, ref string) (*shoalpb.Network, error) {
	if n := tx.GetNetwork(ref); n != nil {
		return n, nil
	}
	if n := tx.NetworkByName(ref); n != nil {
		return n, nil
	}
	return lookup("network", ref, tx.ListNetworks(), networkName)
}

// GetNetwork returns a network by full id, name or unique id prefix.
func (s *Server) GetNetwork(_ context.Context, req *shoalpb.GetNetworkRequest) (*shoalpb.GetNetworkResponse, error) {
	var n *shoalpb.Network
	var err error
	s.store.View(func(tx store.ReadTx) { n, err = findNetwork(tx, req.GetNetwork()) })
	if err != nil {
		return nil, err
	}
	return &shoalpb.GetNetworkResponse{Network: proto.Clone(n).(*shoalpb.Network)}, nil
}

// ListNetworks returns the networks, by id.
func (s *Server) ListNetworks(context.Context, *shoalpb.ListNetworksRequest) (*shoalpb.ListNetworksResponse, error) {
	resp := &shoalpb.ListNetworksResponse{}
	s.store.View(func(tx store.ReadTx) {
		for _, n := range tx.ListNetworks() {
			resp.Networks = append(resp.Networks, proto.Clone(n).(*shoalpb.Network))
		}
	})
	return resp, nil
}

// RemoveNetwork deletes a network nothing uses: no service names it and no
// task holds an address on it.
func (s *Server) RemoveNetwork(ctx context.Context, req *shoalpb.RemoveNetworkRequest) (*shoalpb.RemoveNetworkResponse, error) {
	var n *shoalpb.Network
	err := s.store.Update(ctx, func(tx store.ReadTx, b *store.Batch) error {
		var err error
		if n, err = findNetwork(tx, req.GetNetwork()); err != nil {
			return err
		}
		if users := networkUsers(tx, n.GetId()); users != "" {
			return status.Errorf(codes.FailedPrecondition, "network %s is in use by %s; remove them first", networkName(n), users)
		}
		b.DeleteNetwork(n.GetId(), n.GetMeta().GetVersion())
		return nil
	})
	if err != nil {
		return nil, s.toStatus(fmt.Sprintf("remove network %s", req.GetNetwork()), err)
	}
	s.logger.Info("network removed", "network", networkName(n), "id", n.GetId())
	return &shoalpb.RemoveNetworkResponse{}, nil
}

// networkUsers names what uses a network ("services web, api; 3 tasks of
// removed services"), "" when nothing does.
func networkUsers(tx store.ReadTx, networkID string) string {
	var services []string
	for _, svc := range tx.ListServices() {
		for _, a := range svc.GetSpec().GetNetworks() {
			if a.GetTarget() == networkID {
				services = append(services, serviceName(svc))
				break
			}
		}
	}
	tasks := 0
	var attachments []string
	for _, t := range tx.ListTasks() {
		if tx.GetService(t.GetServiceId()) != nil || !ipam.HoldsAddresses(t) {
			continue // counted with its service, or finished
		}
		for _, a := range t.GetSpec().GetNetworks() {
			switch {
			case a.GetTarget() != networkID:
				continue
			case t.GetAttachment() != nil:
				attachments = append(attachments, t.GetAttachment().GetName())
			default:
				tasks++
			}
			break
		}
	}
	var parts []string
	if len(services) > 0 {
		sort.Strings(services)
		word := "service"
		if len(services) > 1 {
			word = "services"
		}
		parts = append(parts, word+" "+strings.Join(services, ", "))
	}
	if len(attachments) > 0 {
		sort.Strings(attachments)
		word := "attachment"
		if len(attachments) > 1 {
			word = "attachments"
		}
		parts = append(parts, word+" "+strings.Join(attachments, ", ")+" (shoal network disconnect)")
	}
	if tasks > 0 {
		parts = append(parts, fmt.Sprintf("%d stopping tasks of removed services", tasks))
	}
	return strings.Join(parts, "; ")
}

// attachNetworks resolves the service's network targets to ids (refusing
// unknown and repeated ones) and allocates its virtual IPs: one per network
// in VIP mode, kept across updates; none in DNSRR mode. cur is the stored
// service being updated, nil on create.
func attachNetworks(tx store.ReadTx, spec *shoalpb.ServiceSpec, cur *shoalpb.Service) (*shoalpb.ServiceEndpoint, error) {
	seen := make(map[string]bool)
	for i, a := range spec.GetNetworks() {
		n, err := findNetwork(tx, a.GetTarget())
		if err != nil {
			return nil, invalid(fmt.Sprintf("networks[%d]", i), "%v", status.Convert(err).Message())
		}
		if seen[n.GetId()] {
			return nil, invalid(fmt.Sprintf("networks[%d]", i), "network %s is given twice", networkName(n))
		}
		seen[n.GetId()] = true
		a.Target = n.GetId()
	}
	if len(spec.GetNetworks()) == 0 || spec.GetEndpoint().GetMode() == shoalpb.EndpointSpec_MODE_DNSRR {
		return nil, nil
	}
	kept := make(map[string]*shoalpb.VirtualIP)
	for _, v := range cur.GetEndpoint().GetVirtualIps() {
		kept[v.GetNetworkId()] = v
	}
	var usage map[string]*ipam.AddrSet
	ep := &shoalpb.ServiceEndpoint{}
	for _, a := range spec.GetNetworks() {
		if v := kept[a.GetTarget()]; v != nil {
			ep.VirtualIps = append(ep.VirtualIps, v)
			continue
		}
		if usage == nil {
			usage = ipam.Usage(tx.ListNetworks(), tx.ListServices(), tx.ListTasks())
		}
		set := usage[a.GetTarget()]
		if set == nil {
			return nil, status.Errorf(codes.Internal, "network %s has no valid subnet", a.GetTarget())
		}
		addr, err := set.Allocate()
		if err != nil {
			return nil, status.Errorf(codes.ResourceExhausted, "allocate a virtual IP on network %s: %v", networkName(tx.GetNetwork(a.GetTarget())), err)
		}
		ep.VirtualIps = append(ep.VirtualIps, &shoalpb.VirtualIP{NetworkId: a.GetTarget(), Addr: addr.String()})
	}
	return ep, nil
}
