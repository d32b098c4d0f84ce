package wg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// testKey returns a fixed, distinct key per n, ordered by n.
func testKey(n byte) wgtypes.Key {
	var k wgtypes.Key
	k[0] = n
	return k
}

// selfBelowAll is a device key smaller than every testKey: the device
// keeps its peers alive (see keepaliveFor).
var selfBelowAll = wgtypes.Key{1: 1}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// wgPeer is a peer as the device reports it.
func wgPeer(key byte, endpoint string, keepalive time.Duration, allowed ...string) wgtypes.Peer {
	p := wgtypes.Peer{PublicKey: testKey(key), PersistentKeepaliveInterval: keepalive}
	if endpoint != "" {
		p.Endpoint = net.UDPAddrFromAddrPort(ap(endpoint))
	}
	for _, a := range allowed {
		p.AllowedIPs = append(p.AllowedIPs, ipNet(a))
	}
	return p
}

func ipNet(s string) net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return *n
}

// describe renders peer changes as one line each, for comparison.
func describe(pcs []wgtypes.PeerConfig) []string {
	var out []string
	for _, pc := range pcs {
		s := fmt.Sprintf("key%d", pc.PublicKey[0])
		switch {
		case pc.Remove:
			s += " remove"
		case pc.UpdateOnly:
			s += " update"
		default:
			s += " add"
		}
		if pc.Endpoint != nil {
			s += " ep=" + pc.Endpoint.String()
		}
		if pc.PersistentKeepaliveInterval != nil {
			s += " ka=" + pc.PersistentKeepaliveInterval.String()
		}
		if pc.ReplaceAllowedIPs {
			s += " allowed="
			for i, n := range pc.AllowedIPs {
				if i > 0 {
					s += ","
				}
				s += n.String()
			}
		}
		out = append(out, s)
	}
	return out
}

func TestDiffPeers(t *testing.T) {
	ka := PersistentKeepalive
	tests := []struct {
		name    string
		current []wgtypes.Peer
		desired []Peer
		want    []string
	}{
		{
			name: "nothing to nothing",
		},
		{
			name: "add to empty device",
			desired: []Peer{{PublicKey: testKey(1), Endpoint: ap("192.0.2.1:51820"),
				AllowedIPs: []netip.Prefix{pfx("10.99.0.1/32"), pfx("10.10.1.0/24")}}},
			want: []string{"key1 add ep=192.0.2.1:51820 ka=25s allowed=10.10.1.0/24,10.99.0.1/32"},
		},
		{
			name:    "unchanged peer is left alone",
			current: []wgtypes.Peer{wgPeer(1, "192.0.2.1:51820", ka, "10.99.0.1/32")},
			desired: []Peer{{PublicKey: testKey(1), Endpoint: ap("192.0.2.1:51820"), AllowedIPs: []netip.Prefix{pfx("10.99.0.1/32")}}},
		},
		{
			name:    "unordered, unmasked and duplicate allowed IPs equal the device's",
			current: []wgtypes.Peer{wgPeer(1, "192.0.2.1:51820", ka, "10.10.1.0/24", "10.99.0.1/32")},
			desired: []Peer{{PublicKey: testKey(1), Endpoint: ap("192.0.2.1:51820"),
				AllowedIPs: []netip.Prefix{pfx("10.99.0.1/32"), pfx("10.10.1.7/24"), pfx("10.99.0.1/32")}}},
		},
		{
			name:    "IPv4-mapped endpoint equals the plain one",
			current: []wgtypes.Peer{wgPeer(1, "192.0.2.1:51820", ka, "10.99.0.1/32")},
			desired: []Peer{{PublicKey: testKey(1), Endpoint: ap("[::ffff:192.0.2.1]:51820"), AllowedIPs: []netip.Prefix{pfx("10.99.0.1/32")}}},
		},
		{
			name:    "removed peer",
			current: []wgtypes.Peer{wgPeer(1, "192.0.2.1:51820", ka, "10.99.0.1/32"), wgPeer(2, "192.0.2.2:51820", ka, "10.99.0.2/32")},
			desired: []Peer{{PublicKey: testKey(2), Endpoint: ap("192.0.2.2:51820"), AllowedIPs: []netip.Prefix{pfx("10.99.0.2/32")}}},
			want:    []string{"key1 remove"},
		},
		{
			name:    "all removed",
			current: []wgtypes.Peer{wgPeer(2, "192.0.2.2:51820", ka), wgPeer(1, "192.0.2.1:51820", ka)},
			want:    []string{"key1 remove", "key2 remove"},
		},
		{
			name:    "changed allowed IPs are replaced, endpoint untouched",
			current: []wgtypes.Peer{wgPeer(1, "192.0.2.1:51820", ka, "10.99.0.1/32")},
			desired: []Peer{{PublicKey: testKey(1), Endpoint: ap("192.0.2.1:51820"),
				AllowedIPs: []netip.Prefix{pfx("10.99.0.1/32"), pfx("10.10.1.5/32")}}},
			want: []string{"key1 update allowed=10.10.1.5/32,10.99.0.1/32"},
		},
		{
			name:    "allowed IPs emptied",
			current: []wgtypes.Peer{wgPeer(1, "192.0.2.1:51820", ka, "10.99.0.1/32")},
			desired: []Peer{{PublicKey: testKey(1), Endpoint: ap("192.0.2.1:51820")}},
			want:    []string{"key1 update allowed="},
		},
		{
			name:    "moved endpoint",
			current: []wgtypes.Peer{wgPeer(1, "192.0.2.1:51820", ka, "10.99.0.1/32")},
			desired: []Peer{{PublicKey: testKey(1), Endpoint: ap("192.0.2.9:51821"), AllowedIPs: []netip.Prefix{pfx("10.99.0.1/32")}}},
			want:    []string{"key1 update ep=192.0.2.9:51821"},
		},
		{
			name:    "unknown endpoint keeps the learnt one",
			current: []wgtypes.Peer{wgPeer(1, "198.51.100.7:40000", ka, "10.99.0.1/32")},
			desired: []Peer{{PublicKey: testKey(1), AllowedIPs: []netip.Prefix{pfx("10.99.0.1/32")}}},
		},
		{
			name:    "keepalive restored on a peer configured by someone else",
			current: []wgtypes.Peer{wgPeer(1, "192.0.2.1:51820", 0, "10.99.0.1/32")},
			desired: []Peer{{PublicKey: testKey(1), Endpoint: ap("192.0.2.1:51820"), AllowedIPs: []netip.Prefix{pfx("10.99.0.1/32")}}},
			want:    []string{"key1 update ka=25s"},
		},
		{
			name: "prefix moving between peers, one removed, one added: removals first, then by key",
			current: []wgtypes.Peer{
				wgPeer(3, "192.0.2.3:51820", ka, "10.99.0.3/32", "10.10.1.9/32"),
				wgPeer(1, "192.0.2.1:51820", ka, "10.99.0.1/32"),
				wgPeer(4, "192.0.2.4:51820", ka, "10.99.0.4/32"),
			},
			desired: []Peer{
				{PublicKey: testKey(5), Endpoint: ap("192.0.2.5:51820"), AllowedIPs: []netip.Prefix{pfx("10.99.0.5/32")}},
				{PublicKey: testKey(3), Endpoint: ap("192.0.2.3:51820"), AllowedIPs: []netip.Prefix{pfx("10.99.0.3/32")}},
				{PublicKey: testKey(1), Endpoint: ap("192.0.2.1:51820"), AllowedIPs: []netip.Prefix{pfx("10.99.0.1/32"), pfx("10.10.1.9/32")}},
			},
			want: []string{
				"key4 remove",
				"key1 update allowed=10.10.1.9/32,10.99.0.1/32",
				"key3 update allowed=10.99.0.3/32",
				"key5 add ep=192.0.2.5:51820 ka=25s allowed=10.99.0.5/32",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			desired, err := normalizePeers(selfBelowAll, tt.desired, nil)
			if err != nil {
				t.Fatalf("normalizePeers: %v", err)
			}
			got := describe(diffPeers(currentPeers(tt.current), desired))
			if !slices.Equal(got, tt.want) {
				t.Errorf("changes:\n got  %q\n want %q", got, tt.want)
			}
		})
	}
}

func TestNormalizePeersRejects(t *testing.T) {
	self := testKey(200)
	tests := []struct {
		name  string
		peers []Peer
	}{
		{"zero key", []Peer{{}}},
		{"own key", []Peer{{PublicKey: self}}},
		{"duplicate key", []Peer{{PublicKey: testKey(1)}, {PublicKey: testKey(1)}}},
		{"endpoint without port", []Peer{{PublicKey: testKey(1), Endpoint: ap("192.0.2.1:0")}}},
		{"unspecified endpoint", []Peer{{PublicKey: testKey(1), Endpoint: ap("0.0.0.0:51820")}}},
		{"invalid prefix", []Peer{{PublicKey: testKey(1), AllowedIPs: []netip.Prefix{{}}}}},
		{"prefix given to two peers", []Peer{
			{PublicKey: testKey(1), AllowedIPs: []netip.Prefix{pfx("10.10.1.0/24")}},
			{PublicKey: testKey(2), AllowedIPs: []netip.Prefix{pfx("10.10.1.1/24")}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := normalizePeers(self, tt.peers, nil); !errors.Is(err, ErrInvalid) {
				t.Errorf("normalizePeers = %v, want ErrInvalid", err)
			}
		})
	}
}

// fakeClient is a wgctrl stand-in that applies configurations the way
// WireGuard does, for SetPeers without a device.
type fakeClient struct {
	dev     wgtypes.Device
	applied []wgtypes.Config
}

func (f *fakeClient) Device(name string) (*wgtypes.Device, error) {
	d := f.dev
	d.Name = name
	d.Peers = slices.Clone(f.dev.Peers)
	return &d, nil
}

func (f *fakeClient) ConfigureDevice(_ string, cfg wgtypes.Config) error {
	f.applied = append(f.applied, cfg)
	if cfg.ReplacePeers {
		f.dev.Peers = nil
	}
	for _, pc := range cfg.Peers {
		i := slices.IndexFunc(f.dev.Peers, func(p wgtypes.Peer) bool { return p.PublicKey == pc.PublicKey })
		switch {
		case pc.Remove:
			if i >= 0 {
				f.dev.Peers = slices.Delete(f.dev.Peers, i, i+1)
			}
			continue
		case i < 0 && pc.UpdateOnly:
			continue
		case i < 0:
			f.dev.Peers = append(f.dev.Peers, wgtypes.Peer{PublicKey: pc.PublicKey})
			i = len(f.dev.Peers) - 1
		}
		p := &f.dev.Peers[i]
		if pc.Endpoint != nil {
			p.Endpoint = pc.Endpoint
		}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if pc.ReplaceAllowedIPs {
			p.AllowedIPs = nil
		}
		p.AllowedIPs = append(p.AllowedIPs, pc.AllowedIPs...)
	}
	return nil
}

func (f *fakeClient) Close() error { return nil }

func TestSetPeersIncremental(t *testing.T) {
	fc := &fakeClient{}
	d := &Device{name: "wgfake", pub: selfBelowAll, client: fc, log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	one := Peer{PublicKey: testKey(1), Endpoint: ap("192.0.2.1:51820"), AllowedIPs: []netip.Prefix{pfx("10.99.0.1/32")}}
	two := Peer{PublicKey: testKey(2), Endpoint: ap("192.0.2.2:51820"), AllowedIPs: []netip.Prefix{pfx("10.99.0.2/32")}}

	steps := []struct {
		name  string
		peers []Peer
		want  []string // the changes sent; nil when nothing is sent
	}{
		{"first set", []Peer{one, two}, []string{
			"key1 add ep=192.0.2.1:51820 ka=25s allowed=10.99.0.1/32",
			"key2 add ep=192.0.2.2:51820 ka=25s allowed=10.99.0.2/32",
		}},
		{"same again sends nothing", []Peer{two, one}, nil},
		{"drop one", []Peer{two}, []string{"key1 remove"}},
	}
	for _, s := range steps {
		fc.applied = nil
		if err := d.SetPeers(ctx, s.peers); err != nil {
			t.Fatalf("%s: SetPeers: %v", s.name, err)
		}
		var got []string
		for _, cfg := range fc.applied {
			if cfg.ReplacePeers {
				t.Errorf("%s: ReplacePeers set: it would drop every session", s.name)
			}
			got = append(got, describe(cfg.Peers)...)
		}
		if !slices.Equal(got, s.want) {
			t.Errorf("%s: sent\n got  %q\n want %q", s.name, got, s.want)
		}
	}

	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.SetPeers(ctx, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("SetPeers after Close = %v, want ErrClosed", err)
	}
}

// fakeTimers records the timers a Device schedules, for the test to fire.
type fakeTimers struct {
	fns     []func()
	stopped int
}

func (f *fakeTimers) afterFunc(_ time.Duration, fn func()) func() bool {
	i := len(f.fns)
	f.fns = append(f.fns, fn)
	return func() bool {
		if f.fns[i] == nil {
			return false
		}
		f.fns[i] = nil
		f.stopped++
		return true
	}
}

// fire runs every pending timer.
func (f *fakeTimers) fire() {
	for i, fn := range f.fns {
		if fn != nil {
			f.fns[i] = nil
			fn()
		}
	}
}

// Two hosts given each other at once must not both start a handshake
// (crossed initiations stall both for WireGuard's 5 s retry): the device
// with the smaller key keeps its peer alive from the start, the other only
// KeepaliveGrace later, and a peer removed before then is never armed.
func TestKeepaliveArming(t *testing.T) {
	small, large := testKey(1), testKey(2)
	peer := Peer{PublicKey: small, Endpoint: ap("192.0.2.9:51820"), AllowedIPs: []netip.Prefix{pfx("10.99.0.9/32")}}
	if got, err := normalizePeers(small, []Peer{{PublicKey: large, Endpoint: peer.Endpoint, AllowedIPs: peer.AllowedIPs}}, nil); err != nil || got[large].keepalive != PersistentKeepalive {
		t.Errorf("smaller key: keepalive %v, %v; want %v from the start", got[large].keepalive, err, PersistentKeepalive)
	}

	fc := &fakeClient{}
	timers := &fakeTimers{}
	d := &Device{name: "wgfake", pub: large, client: fc, log: slog.New(slog.DiscardHandler), afterFunc: timers.afterFunc}
	ctx := context.Background()
	steps := []struct {
		name string
		do   func()
		want []string // the changes sent
	}{
		{"added without keepalive", func() { _ = d.SetPeers(ctx, []Peer{peer}) }, []string{"key1 add ep=192.0.2.9:51820 ka=0s allowed=10.99.0.9/32"}},
		{"armed after the grace", timers.fire, []string{"key1 update ka=25s"}},
		{"kept armed", func() { _ = d.SetPeers(ctx, []Peer{peer}) }, nil},
		{"removed", func() { _ = d.SetPeers(ctx, nil) }, []string{"key1 remove"}},
		{"added again: not armed", func() { _ = d.SetPeers(ctx, []Peer{peer}) }, []string{"key1 add ep=192.0.2.9:51820 ka=0s allowed=10.99.0.9/32"}},
		{"removed before the grace", func() { _ = d.SetPeers(ctx, nil) }, []string{"key1 remove"}},
		{"its timer stopped", timers.fire, nil},
	}
	for _, s := range steps {
		fc.applied = nil
		s.do()
		var got []string
		for _, cfg := range fc.applied {
			got = append(got, describe(cfg.Peers)...)
		}
		if !slices.Equal(got, s.want) {
			t.Errorf("%s: sent %q, want %q", s.name, got, s.want)
		}
	}
	if timers.stopped != 1 {
		t.Errorf("%d timers stopped, want the one of the peer removed before its grace", timers.stopped)
	}
}
