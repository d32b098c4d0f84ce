package bridge

import (
	"errors"
	"net/netip"
	"path/filepath"
	"testing"
)

func TestAllocate(t *testing.T) {
	sub := netip.MustParsePrefix("10.1.2.0/29") // .0 net, .1 gw, .2-.6 usable, .7 bcast
	addr := netip.MustParseAddr
	tests := []struct {
		name     string
		last     netip.Addr
		used     map[string]netip.Addr
		want     netip.Addr
		wantFull bool
	}{
		{name: "first skips network and gateway", want: addr("10.1.2.2")},
		{name: "sequential after last", last: addr("10.1.2.3"), want: addr("10.1.2.4")},
		{name: "wraps before broadcast", last: addr("10.1.2.6"), want: addr("10.1.2.2")},
		{name: "skips used", last: addr("10.1.2.2"),
			used: map[string]netip.Addr{"x": addr("10.1.2.3"), "y": addr("10.1.2.4")}, want: addr("10.1.2.5")},
		{name: "wraps past used to the only hole", last: addr("10.1.2.5"),
			used: map[string]netip.Addr{"a": addr("10.1.2.6"), "b": addr("10.1.2.2"), "c": addr("10.1.2.4"), "d": addr("10.1.2.5")},
			want: addr("10.1.2.3")},
		{name: "last outside subnet restarts at first", last: addr("192.168.0.9"), want: addr("10.1.2.2")},
		{name: "full", used: map[string]netip.Addr{"a": addr("10.1.2.2"), "b": addr("10.1.2.3"),
			"c": addr("10.1.2.4"), "d": addr("10.1.2.5"), "e": addr("10.1.2.6")}, wantFull: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := &state{Version: stateVersion, Last: tc.last, Endpoints: map[string]netip.Addr{}}
			for id, a := range tc.used {
				st.Endpoints[id] = a
			}
			got, err := st.allocate(sub, "new")
			if tc.wantFull {
				if !errors.Is(err, ErrSubnetFull) {
					t.Fatalf("allocate = %v, %v; want ErrSubnetFull", got, err)
				}
				if _, ok := st.Endpoints["new"]; ok {
					t.Fatal("failed allocation was recorded")
				}
				return
			}
			if err != nil {
				t.Fatalf("allocate: %v", err)
			}
			if got != tc.want {
				t.Fatalf("allocate = %v, want %v", got, tc.want)
			}
			if st.Endpoints["new"] != got || st.Last != got {
				t.Fatalf("state not updated: endpoints %v last %v", st.Endpoints, st.Last)
			}
		})
	}
}

// A released address is not handed out again before the others have been.
func TestAllocateDoesNotReuseReleasedAtOnce(t *testing.T) {
	sub := netip.MustParsePrefix("10.9.0.0/24")
	st := &state{Version: stateVersion, Endpoints: map[string]netip.Addr{}}
	a, err := st.allocate(sub, "a")
	if err != nil {
		t.Fatal(err)
	}
	delete(st.Endpoints, "a")
	b, err := st.allocate(sub, "b")
	if err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Fatalf("released address %v reused immediately", a)
	}
}

func TestStateRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), stateFile)
	empty, err := loadState(path)
	if err != nil {
		t.Fatalf("load missing state: %v", err)
	}
	if len(empty.Endpoints) != 0 {
		t.Fatalf("missing file gave endpoints %v", empty.Endpoints)
	}
	sub := netip.MustParsePrefix("172.29.0.0/16")
	for _, id := range []string{"a", "b", "c"} {
		if _, err := empty.allocate(sub, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := empty.save(path); err != nil {
		t.Fatalf("save: %v", err)
	}
	got, err := loadState(path)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if got.Subnet != sub.String() || got.Last != empty.Last || len(got.Endpoints) != 3 {
		t.Fatalf("loaded %+v, saved %+v", got, empty)
	}
	for id, a := range empty.Endpoints {
		if got.Endpoints[id] != a {
			t.Errorf("endpoint %s: loaded %v, saved %v", id, got.Endpoints[id], a)
		}
	}
	// The next allocation after a reload continues, not restarts.
	next, err := got.allocate(sub, "d")
	if err != nil {
		t.Fatal(err)
	}
	if next != netip.MustParseAddr("172.29.0.5") {
		t.Fatalf("allocation after reload = %v, want 172.29.0.5", next)
	}
}

func TestNewConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr error
		check   func(t *testing.T, d *Driver)
	}{
		{name: "defaults", check: func(t *testing.T, d *Driver) {
			if d.cfg.Name != DefaultName || d.cfg.MTU != DefaultMTU || d.Subnet().String() != "172.29.0.0/16" {
				t.Errorf("defaults: %+v", d.cfg)
			}
			if d.Gateway().String() != "172.29.0.1" {
				t.Errorf("gateway %v, want 172.29.0.1", d.Gateway())
			}
			if d.TableName() != "shoal-bridge-shoal0" {
				t.Errorf("table %q", d.TableName())
			}
		}},
		{name: "host bits masked", cfg: Config{Subnet: netip.MustParsePrefix("10.5.5.77/24")},
			check: func(t *testing.T, d *Driver) {
				if d.Subnet().String() != "10.5.5.0/24" || d.Gateway().String() != "10.5.5.1" {
					t.Errorf("subnet %v gateway %v", d.Subnet(), d.Gateway())
				}
			}},
		{name: "name too long", cfg: Config{Name: "abcdefghijklmnop"}, wantErr: ErrInvalidConfig},
		{name: "name with slash", cfg: Config{Name: "a/b"}, wantErr: ErrInvalidConfig},
		{name: "ipv6 subnet", cfg: Config{Subnet: netip.MustParsePrefix("fd00::/64")}, wantErr: ErrInvalidConfig},
		{name: "subnet too small", cfg: Config{Subnet: netip.MustParsePrefix("10.0.0.0/31")}, wantErr: ErrInvalidConfig},
		{name: "mtu too small", cfg: Config{MTU: 20}, wantErr: ErrInvalidConfig},
		{name: "no state dir", cfg: Config{StateDir: "-"}, wantErr: ErrInvalidConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			switch cfg.StateDir {
			case "-":
				cfg.StateDir = ""
			case "":
				cfg.StateDir = t.TempDir()
			}
			d, err := New(cfg)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("New = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			tc.check(t, d)
		})
	}
}

// A restart with another subnet must not silently orphan existing endpoints.
func TestNewRejectsChangedSubnetWithEndpoints(t *testing.T) {
	dir := t.TempDir()
	st, err := loadState(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.allocate(netip.MustParsePrefix("10.3.0.0/24"), "a"); err != nil {
		t.Fatal(err)
	}
	if err := st.save(filepath.Join(dir, stateFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{StateDir: dir, Subnet: netip.MustParsePrefix("10.4.0.0/24")}); !errors.Is(err, ErrSubnetChanged) {
		t.Fatalf("New with other subnet = %v, want ErrSubnetChanged", err)
	}
	if _, err := New(Config{StateDir: dir, Subnet: netip.MustParsePrefix("10.3.0.0/24")}); err != nil {
		t.Fatalf("New with same subnet: %v", err)
	}
}

func TestVethNameAndIDs(t *testing.T) {
	tests := []struct {
		id      string
		validID bool
	}{
		{id: "a", validID: true},
		{id: "task-7f3a9c.1_x", validID: true},
		{id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", validID: true},
		{id: "", validID: false},
		{id: "..", validID: false},
		{id: "a/b", validID: false},
		{id: "-rf", validID: false},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			if err := validateID(tc.id); (err == nil) != tc.validID {
				t.Fatalf("validateID(%q) = %v, want valid %v", tc.id, err, tc.validID)
			}
			if !tc.validID {
				return
			}
			n := VethName(tc.id)
			if len(n) > 15 || n != VethName(tc.id) || n[:2] != "vs" {
				t.Fatalf("VethName(%q) = %q: want stable, vs-prefixed, <= 15 bytes", tc.id, n)
			}
		})
	}
	if VethName("a") == VethName("b") {
		t.Fatal("different ids share a veth name")
	}
}
