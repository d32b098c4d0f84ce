package ipam

import (
	"errors"
	"net/netip"
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
)

func TestAllocateSubnet(t *testing.T) {
	p := netip.MustParsePrefix
	tests := []struct {
		name    string
		pools   []netip.Prefix
		size    int
		used    []netip.Prefix
		want    string
		wantErr error
	}{
		{name: "first", pools: []netip.Prefix{p("10.10.0.0/16")}, size: 24, want: "10.10.0.0/24"},
		{name: "skips used", pools: []netip.Prefix{p("10.10.0.0/16")}, size: 24,
			used: []netip.Prefix{p("10.10.0.0/24"), p("10.10.1.0/24")}, want: "10.10.2.0/24"},
		{name: "skips a user subnet overlapping", pools: []netip.Prefix{p("10.10.0.0/16")}, size: 24,
			used: []netip.Prefix{p("10.10.0.128/25")}, want: "10.10.1.0/24"},
		{name: "skips a larger user subnet", pools: []netip.Prefix{p("10.10.0.0/16")}, size: 24,
			used: []netip.Prefix{p("10.10.0.0/23")}, want: "10.10.2.0/24"},
		{name: "next pool", pools: []netip.Prefix{p("10.10.0.0/24"), p("10.20.0.0/16")}, size: 24,
			used: []netip.Prefix{p("10.10.0.0/24")}, want: "10.20.0.0/24"},
		{name: "exhausted", pools: []netip.Prefix{p("10.10.0.0/23")}, size: 24,
			used: []netip.Prefix{p("10.10.0.0/24"), p("10.10.1.0/24")}, wantErr: ErrExhausted},
		{name: "pool at the end of the space", pools: []netip.Prefix{p("255.255.255.0/24")}, size: 25,
			used: []netip.Prefix{p("255.255.255.0/25"), p("255.255.255.128/25")}, wantErr: ErrExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AllocateSubnet(tt.pools, tt.size, tt.used)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, %v; want %v", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.String() != tt.want {
				t.Fatalf("got %v, %v; want %s", got, err, tt.want)
			}
		})
	}
	if _, err := AllocateSubnet([]netip.Prefix{p("10.10.0.0/16")}, 8, nil); err == nil {
		t.Errorf("a /8 from a /16 pool was allowed")
	}
}

func TestAllocateVNI(t *testing.T) {
	if v, err := AllocateVNI(nil); err != nil || v != MinVNI {
		t.Errorf("first VNI = %d, %v; want %d", v, err, MinVNI)
	}
	if v, err := AllocateVNI(map[uint32]bool{4096: true, 4098: true}); err != nil || v != 4097 {
		t.Errorf("VNI with 4096 and 4098 used = %d, %v; want 4097", v, err)
	}
}

func TestAddrSet(t *testing.T) {
	subnet := netip.MustParsePrefix("10.10.5.0/29") // .1 gateway, .2-.6 hosts, .7 broadcast
	s := NewAddrSet(subnet, Gateway(subnet))
	s.Reserve(netip.MustParseAddr("10.10.5.3"))
	s.Reserve(netip.MustParseAddr("10.99.0.1")) // outside: ignored
	var got []string
	for {
		a, err := s.Allocate()
		if err != nil {
			if !errors.Is(err, ErrExhausted) {
				t.Fatalf("Allocate: %v", err)
			}
			break
		}
		got = append(got, a.String())
	}
	want := []string{"10.10.5.2/29", "10.10.5.4/29", "10.10.5.5/29", "10.10.5.6/29"}
	if len(got) != len(want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("allocated %v, want %v", got, want)
		}
	}
}

func TestMAC(t *testing.T) {
	if got := MAC(netip.MustParseAddr("10.10.1.2")).String(); got != "02:42:0a:0a:01:02" {
		t.Errorf("MAC = %s", got)
	}
}

func TestUsage(t *testing.T) {
	nets := []*shoalpb.Network{{Id: "n1", Subnet: "10.10.0.0/29", Gateway: "10.10.0.1"}}
	svcs := []*shoalpb.Service{{Id: "s1", Endpoint: &shoalpb.ServiceEndpoint{VirtualIps: []*shoalpb.VirtualIP{{NetworkId: "n1", Addr: "10.10.0.2/29"}}}}}
	attached := func(state shoalpb.TaskState, addr string) *shoalpb.Task {
		return &shoalpb.Task{
			Status:   &shoalpb.TaskStatus{State: state},
			Networks: []*shoalpb.NetworkAttachment{{NetworkId: "n1", Addresses: []string{addr}}},
		}
	}
	tasks := []*shoalpb.Task{
		attached(shoalpb.TaskState_TASK_STATE_RUNNING, "10.10.0.3/29"),
		attached(shoalpb.TaskState_TASK_STATE_PENDING, "10.10.0.4/29"),
		attached(shoalpb.TaskState_TASK_STATE_FAILED, "10.10.0.5/29"), // finished: free again
	}
	set := Usage(nets, svcs, tasks)["n1"]
	got, err := set.Allocate()
	if err != nil || got.String() != "10.10.0.5/29" {
		t.Fatalf("first free address = %v, %v; want 10.10.0.5/29", got, err)
	}
	if got, err := set.Allocate(); err != nil || got.String() != "10.10.0.6/29" {
		t.Fatalf("second free address = %v, %v; want 10.10.0.6/29", got, err)
	}
	if _, err := set.Allocate(); !errors.Is(err, ErrExhausted) {
		t.Fatalf("a /29 with 6 addresses taken still allocates: %v", err)
	}
}
