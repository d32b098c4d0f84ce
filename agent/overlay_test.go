package agent

import (
	"github.com/shoal-project/shoal/overlay/dns"
	"net"
	"net/netip"
	"reflect"
	"testing"

	"github.com/shoal-project/shoal/overlay/wg"
)

func TestRemotesOf(t *testing.T) {
	key := func(b byte) [32]byte { return [32]byte{b} }
	mac, _ := net.ParseMAC("02:42:0a:0a:00:02")
	vtep2, vtep3 := netip.MustParseAddr("192.168.240.2"), netip.MustParseAddr("192.168.240.3")
	wg2, wg3 := netip.MustParseAddrPort("192.168.240.2:51820"), netip.MustParseAddrPort("192.168.240.3:51820")
	ep := func(node, network, addr string) OverlayEndpoint {
		e := OverlayEndpoint{NodeID: node, NetworkID: network, Addr: netip.MustParseAddr(addr), MAC: mac}
		switch node {
		case "n2":
			e.VTEP, e.WireGuardKey, e.WireGuardEndpoint = vtep2, key(2), wg2
		case "n3":
			e.VTEP, e.WireGuardKey, e.WireGuardEndpoint = vtep3, key(3), wg3
		case "n4": // a host without WireGuard
			e.VTEP = netip.MustParseAddr("192.168.240.4")
		}
		return e
	}
	p32 := netip.MustParsePrefix
	tests := []struct {
		name        string
		all         []OverlayEndpoint
		local, encr map[string]bool
		wantRemotes map[string][]string
		wantPeers   []wg.Peer
	}{
		{
			name:        "plain network: remotes by VTEP, no peers",
			all:         []OverlayEndpoint{ep("n1", "plain", "10.10.0.2"), ep("n2", "plain", "10.10.0.3")},
			local:       map[string]bool{"plain": true},
			wantRemotes: map[string][]string{"plain": {"10.10.0.3"}},
			wantPeers:   []wg.Peer{},
		},
		{
			name: "encrypted: one peer per host, allowed only its tasks on encrypted networks",
			all: []OverlayEndpoint{
				ep("n1", "sec", "10.10.1.2"),
				ep("n3", "sec", "10.10.1.9"), ep("n2", "sec", "10.10.1.4"), ep("n2", "sec", "10.10.1.3"),
				ep("n2", "sec2", "10.10.2.3"),
				ep("n2", "plain", "10.10.0.3"),
			},
			local: map[string]bool{"sec": true, "sec2": true, "plain": true},
			encr:  map[string]bool{"sec": true, "sec2": true},
			wantRemotes: map[string][]string{
				"sec": {"10.10.1.9", "10.10.1.4", "10.10.1.3"}, "sec2": {"10.10.2.3"}, "plain": {"10.10.0.3"},
			},
			wantPeers: []wg.Peer{
				{PublicKey: key(2), Endpoint: wg2, AllowedIPs: []netip.Prefix{p32("10.10.1.3/32"), p32("10.10.1.4/32"), p32("10.10.2.3/32")}},
				{PublicKey: key(3), Endpoint: wg3, AllowedIPs: []netip.Prefix{p32("10.10.1.9/32")}},
			},
		},
		{
			name:        "a host without WireGuard is never reached on an encrypted network",
			all:         []OverlayEndpoint{ep("n4", "sec", "10.10.1.5")},
			local:       map[string]bool{"sec": true},
			encr:        map[string]bool{"sec": true},
			wantRemotes: map[string][]string{},
			wantPeers:   []wg.Peer{},
		},
		{
			name:        "networks this host does not have are ignored",
			all:         []OverlayEndpoint{ep("n2", "sec", "10.10.1.4")},
			local:       map[string]bool{},
			encr:        map[string]bool{"sec": true},
			wantRemotes: map[string][]string{},
			wantPeers:   []wg.Peer{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			remotes, peers := remotesOf(tt.all, "n1", tt.local, tt.encr)
			got := map[string][]string{}
			for n, rs := range remotes {
				for _, r := range rs {
					got[n] = append(got[n], r.Addr.String())
				}
			}
			if !reflect.DeepEqual(got, tt.wantRemotes) {
				t.Errorf("remotes = %v, want %v", got, tt.wantRemotes)
			}
			if !reflect.DeepEqual(peers, tt.wantPeers) {
				t.Errorf("peers = %v, want %v", peers, tt.wantPeers)
			}
		})
	}
}

func TestAddAttachmentNames(t *testing.T) {
	a := netip.MustParseAddr
	att := func(name, network, addr string, ready bool) OverlayEndpoint {
		return OverlayEndpoint{ServiceName: name, NetworkID: network, Addr: a(addr), Ready: ready}
	}
	webVIP := dns.Record{VIP: a("10.10.0.2")}
	byNet := map[string]map[string]dns.Record{"n1": {"web": webVIP}}
	all := []OverlayEndpoint{
		att("debug", "n1", "10.10.0.9", true),
		att("debug", "n2", "10.10.1.9", true),                                                     // a network without local containers
		att("web", "n1", "10.10.0.10", true),                                                      // a service's name
		att("late", "n1", "10.10.0.11", false),                                                    // not plugged in yet
		att("debug", "n1", "10.10.0.12", true),                                                    // the name is taken
		{ServiceID: "s1", ServiceName: "api", NetworkID: "n1", Addr: a("10.10.0.3"), Ready: true}, // a service task
	}
	addAttachmentNames(byNet, all, map[string]bool{"n1": true})
	want := map[string]map[string]dns.Record{"n1": {
		"web":   webVIP,
		"debug": {DNSRR: true, Tasks: []netip.Addr{a("10.10.0.9")}},
	}}
	if !reflect.DeepEqual(byNet, want) {
		t.Errorf("names:\n got  %v\n want %v", byNet, want)
	}
}
