package controlapi

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/shoal-project/shoal/manager/store"
	shoalpb "github.com/shoal-project/shoal/proto"
)

func createNetwork(t *testing.T, srv *Server, spec *shoalpb.NetworkSpec) *shoalpb.Network {
	t.Helper()
	resp, err := srv.CreateNetwork(context.Background(), &shoalpb.CreateNetworkRequest{Spec: spec})
	if err != nil {
		t.Fatalf("CreateNetwork(%v): %v", spec, err)
	}
	return resp.GetNetwork()
}

func TestCreateNetworkAllocates(t *testing.T) {
	srv, _ := newServer(t)
	a := createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "front"})
	b := createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "back", Encrypted: true})
	c := createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "mine", Subnet: "192.168.50.0/24", Gateway: "192.168.50.254"})
	tests := []struct {
		got                  *shoalpb.Network
		vni                  uint32
		subnet, gateway, drv string
	}{
		{a, 4096, "10.10.0.0/24", "10.10.0.1", "overlay"},
		{b, 4097, "10.10.1.0/24", "10.10.1.1", "overlay"},
		{c, 4098, "192.168.50.0/24", "192.168.50.254", "overlay"},
	}
	for _, tt := range tests {
		if tt.got.GetVni() != tt.vni || tt.got.GetSubnet() != tt.subnet || tt.got.GetGateway() != tt.gateway || tt.got.GetSpec().GetDriver() != tt.drv {
			t.Errorf("network %s: vni %d subnet %s gateway %s driver %s; want %d %s %s %s", tt.got.GetSpec().GetName(),
				tt.got.GetVni(), tt.got.GetSubnet(), tt.got.GetGateway(), tt.got.GetSpec().GetDriver(), tt.vni, tt.subnet, tt.gateway, tt.drv)
		}
	}
	// Removing a network frees its subnet and VNI for the next one.
	if _, err := srv.RemoveNetwork(context.Background(), &shoalpb.RemoveNetworkRequest{Network: "front"}); err != nil {
		t.Fatalf("RemoveNetwork: %v", err)
	}
	d := createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "again"})
	if d.GetVni() != 4096 || d.GetSubnet() != "10.10.0.0/24" {
		t.Errorf("after removing front: vni %d subnet %s, want 4096 10.10.0.0/24 reused", d.GetVni(), d.GetSubnet())
	}
}

func TestCreateNetworkPools(t *testing.T) {
	srv, st := newServer(t)
	seed(t, st, func(b *store.Batch) {
		b.CreateCluster(&shoalpb.Cluster{Id: "c", Spec: &shoalpb.ClusterSpec{DefaultAddressPools: []string{"10.77.0.0/24"}, SubnetSize: 26}})
	})
	var got []string
	for _, name := range []string{"a", "b", "c", "d"} {
		got = append(got, createNetwork(t, srv, &shoalpb.NetworkSpec{Name: name}).GetSubnet())
	}
	want := []string{"10.77.0.0/26", "10.77.0.64/26", "10.77.0.128/26", "10.77.0.192/26"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("subnets %v, want %v", got, want)
		}
	}
	_, err := srv.CreateNetwork(context.Background(), &shoalpb.CreateNetworkRequest{Spec: &shoalpb.NetworkSpec{Name: "e"}})
	wantCode(t, err, codes.ResourceExhausted, "no free /26 subnet")
}

func TestCreateNetworkValidation(t *testing.T) {
	tests := []struct {
		name  string
		spec  *shoalpb.NetworkSpec
		code  codes.Code
		parts []string
	}{
		{"no spec", nil, codes.InvalidArgument, []string{"spec"}},
		{"no name", &shoalpb.NetworkSpec{}, codes.InvalidArgument, []string{"name"}},
		{"bad driver", &shoalpb.NetworkSpec{Name: "n", Driver: "bridge"}, codes.InvalidArgument, []string{"driver", `"overlay"`}},
		{"bad subnet", &shoalpb.NetworkSpec{Name: "n", Subnet: "10.0.0.0"}, codes.InvalidArgument, []string{"subnet", "CIDR"}},
		{"host bits", &shoalpb.NetworkSpec{Name: "n", Subnet: "10.0.0.5/24"}, codes.InvalidArgument, []string{"10.0.0.0/24"}},
		{"too small", &shoalpb.NetworkSpec{Name: "n", Subnet: "10.0.0.0/30"}, codes.InvalidArgument, []string{"/8 to /29"}},
		{"ipv6", &shoalpb.NetworkSpec{Name: "n", Subnet: "fd00::/64"}, codes.InvalidArgument, []string{"IPv4"}},
		{"gateway outside", &shoalpb.NetworkSpec{Name: "n", Subnet: "10.0.0.0/24", Gateway: "10.0.1.1"}, codes.InvalidArgument, []string{"gateway", "not a host address"}},
		{"gateway without subnet", &shoalpb.NetworkSpec{Name: "n", Gateway: "10.0.1.1"}, codes.InvalidArgument, []string{"gateway", "--subnet"}},
		{"overlap", &shoalpb.NetworkSpec{Name: "n", Subnet: "10.10.0.0/16"}, codes.AlreadyExists, []string{"overlaps network taken", "10.10.0.0/24"}},
		{"name taken", &shoalpb.NetworkSpec{Name: "taken"}, codes.AlreadyExists, []string{`"taken"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := newServer(t)
			createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "taken"})
			_, err := srv.CreateNetwork(context.Background(), &shoalpb.CreateNetworkRequest{Spec: tt.spec})
			wantCode(t, err, tt.code, tt.parts...)
		})
	}
}

func TestServiceNetworksAndVIPs(t *testing.T) {
	srv, st := newServer(t)
	front := createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "front"})
	back := createNetwork(t, srv, &shoalpb.NetworkSpec{Name: "back"})

	sp := spec("web", "busybox")
	sp.Networks = []*shoalpb.NetworkAttachmentConfig{{Target: "front"}, {Target: back.GetId()}}
	resp, err := srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: sp})
	if err != nil {
		t.Fatalf("CreateService: %v", err)
	}
	web := resp.GetService()
	if got := web.GetSpec().GetNetworks()[0].GetTarget(); got != front.GetId() {
		t.Errorf("network target stored as %q, want the id %s", got, front.GetId())
	}
	vips := web.GetEndpoint().GetVirtualIps()
	if len(vips) != 2 || vips[0].GetAddr() != "10.10.0.2/24" || vips[1].GetAddr() != "10.10.1.2/24" {
		t.Fatalf("virtual IPs %v, want 10.10.0.2/24 on front and 10.10.1.2/24 on back", vips)
	}

	// A second service gets the next address; DNSRR gets none.
	sp2 := spec("api", "busybox")
	sp2.Networks = []*shoalpb.NetworkAttachmentConfig{{Target: "front"}}
	resp, err = srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: sp2})
	if err != nil || resp.GetService().GetEndpoint().GetVirtualIps()[0].GetAddr() != "10.10.0.3/24" {
		t.Fatalf("second service: %v, %v; want VIP 10.10.0.3/24", resp.GetService().GetEndpoint(), err)
	}
	sp3 := spec("rr", "busybox")
	sp3.Networks = []*shoalpb.NetworkAttachmentConfig{{Target: "front"}}
	sp3.Endpoint = &shoalpb.EndpointSpec{Mode: shoalpb.EndpointSpec_MODE_DNSRR}
	if resp, err = srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: sp3}); err != nil || resp.GetService().GetEndpoint() != nil {
		t.Fatalf("dnsrr service: %v, %v; want no VIP", resp.GetService().GetEndpoint(), err)
	}

	// An update keeps the VIP of a network it keeps and drops the other.
	upd := web.GetSpec()
	upd.Networks = upd.Networks[:1]
	uresp, err := srv.UpdateService(context.Background(), &shoalpb.UpdateServiceRequest{ServiceId: web.GetId(), Version: web.GetMeta().GetVersion(), Spec: upd})
	if err != nil {
		t.Fatalf("UpdateService: %v", err)
	}
	if v := uresp.GetService().GetEndpoint().GetVirtualIps(); len(v) != 1 || v[0].GetAddr() != "10.10.0.2/24" {
		t.Errorf("after update: VIPs %v, want only 10.10.0.2/24", v)
	}

	// Unknown and repeated networks are refused.
	bad := spec("bad", "busybox")
	bad.Networks = []*shoalpb.NetworkAttachmentConfig{{Target: "nope"}}
	_, err = srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: bad})
	wantCode(t, err, codes.InvalidArgument, "networks[0]", "no such network: nope")
	bad.Networks = []*shoalpb.NetworkAttachmentConfig{{Target: "front"}, {Target: front.GetId()}}
	_, err = srv.CreateService(context.Background(), &shoalpb.CreateServiceRequest{Spec: bad})
	wantCode(t, err, codes.InvalidArgument, "networks[1]", "given twice")

	// A network in use cannot be removed, and says by what.
	_, err = srv.RemoveNetwork(context.Background(), &shoalpb.RemoveNetworkRequest{Network: "front"})
	wantCode(t, err, codes.FailedPrecondition, "network front is in use by services api, rr, web")
	st.View(func(tx store.ReadTx) {
		if tx.GetNetwork(front.GetId()) == nil {
			t.Errorf("network front removed although in use")
		}
	})
}
