package dns

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
)

func TestParseName(t *testing.T) {
	tests := []struct {
		name    string
		service string
		tasks   bool
		ok      bool
	}{
		{name: "web", service: "web", ok: true},
		{name: "web.", service: "web", ok: true},
		{name: "WeB.", service: "web", ok: true},
		{name: "tasks.web", service: "web", tasks: true, ok: true},
		{name: "TASKS.Web.", service: "web", tasks: true, ok: true},
		{name: "tasks.tasks.", service: "tasks", tasks: true, ok: true},
		{name: "tasks", service: "tasks", ok: true},
		{name: "stack_web.", service: "stack_web", ok: true},
		{name: "example.com.", service: "example.com", ok: true},
		{name: "tasks.", service: "tasks", ok: true},
		{name: "tasks.."},
		{name: "."},
		{name: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			service, tasks, ok := ParseName(tt.name)
			if service != tt.service || tasks != tt.tasks || ok != tt.ok {
				t.Errorf("ParseName(%q) = %q, %v, %v; want %q, %v, %v",
					tt.name, service, tasks, ok, tt.service, tt.tasks, tt.ok)
			}
		})
	}
}

// testTable holds, on net-a: web (VIP), rr (dnsrr), idle and rridle (VIP
// and dnsrr with no ready task),
// novip (VIP mode, no VIP yet), Mixed (a capitalised name); on net-b:
// secret, and web with another VIP.
func testTable() *Table {
	var tb Table
	tb.Set("net-a", "web", Record{VIP: netip.MustParseAddr("10.0.0.2"), Tasks: addrs("10.0.0.5", "10.0.0.6")})
	tb.Set("net-a", "rr", Record{DNSRR: true, Tasks: addrs("10.0.0.7", "10.0.0.8")})
	tb.Set("net-a", "idle", Record{VIP: netip.MustParseAddr("10.0.0.3")})
	tb.Set("net-a", "rridle", Record{DNSRR: true})
	tb.Set("net-a", "novip", Record{Tasks: addrs("10.0.0.9")})
	tb.Set("net-a", "Mixed.", Record{VIP: netip.MustParseAddr("10.0.0.4")})
	tb.Set("net-b", "secret", Record{VIP: netip.MustParseAddr("10.1.0.2"), Tasks: addrs("10.1.0.5")})
	tb.Set("net-b", "web", Record{VIP: netip.MustParseAddr("10.1.0.3")})
	return &tb
}

func TestTableLookup(t *testing.T) {
	onA := Scope{Networks: []string{"net-a"}}
	onB := Scope{Networks: []string{"net-b"}}
	onBA := Scope{Networks: []string{"net-b", "net-a"}}
	tests := []struct {
		desc  string
		scope Scope
		name  string
		want  []netip.Addr
		ok    bool
	}{
		{desc: "service is its VIP", scope: onA, name: "web.", want: addrs("10.0.0.2"), ok: true},
		{desc: "without trailing dot", scope: onA, name: "web", want: addrs("10.0.0.2"), ok: true},
		{desc: "case-insensitive query", scope: onA, name: "WEB.", want: addrs("10.0.0.2"), ok: true},
		{desc: "case-insensitive record", scope: onA, name: "mixed.", want: addrs("10.0.0.4"), ok: true},
		{desc: "tasks are the ready tasks", scope: onA, name: "tasks.web.", want: addrs("10.0.0.5", "10.0.0.6"), ok: true},
		{desc: "tasks case-insensitive", scope: onA, name: "Tasks.Web", want: addrs("10.0.0.5", "10.0.0.6"), ok: true},
		{desc: "dnsrr service is its tasks", scope: onA, name: "rr.", want: addrs("10.0.0.7", "10.0.0.8"), ok: true},
		{desc: "dnsrr tasks", scope: onA, name: "tasks.rr.", want: addrs("10.0.0.7", "10.0.0.8"), ok: true},
		{desc: "no ready task: known, empty", scope: onA, name: "tasks.idle.", want: addrs(), ok: true},
		{desc: "dnsrr with no ready task: known, empty", scope: onA, name: "rridle.", want: addrs(), ok: true},
		{desc: "VIP of a service with no ready task", scope: onA, name: "idle.", want: addrs("10.0.0.3"), ok: true},
		{desc: "no VIP yet: known, empty", scope: onA, name: "novip.", want: addrs(), ok: true},
		{desc: "other network not visible", scope: onA, name: "secret.", ok: false},
		{desc: "other network's tasks not visible", scope: onA, name: "tasks.secret.", ok: false},
		{desc: "same name, own network's VIP", scope: onB, name: "web.", want: addrs("10.1.0.3"), ok: true},
		{desc: "first network of the scope wins", scope: onBA, name: "web.", want: addrs("10.1.0.3"), ok: true},
		{desc: "later network still consulted", scope: onBA, name: "rr.", want: addrs("10.0.0.7", "10.0.0.8"), ok: true},
		{desc: "no network", scope: Scope{}, name: "web.", ok: false},
		{desc: "unknown name is forwarded", scope: onA, name: "example.com.", ok: false},
		{desc: "unknown service's tasks are forwarded", scope: onA, name: "tasks.nothing.", ok: false},
		{desc: "root is forwarded", scope: onA, name: ".", ok: false},
	}
	tb := testTable()
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got, ok := tb.Lookup(tt.scope, tt.name)
			slices.SortFunc(got, netip.Addr.Compare)
			if ok != tt.ok || !slices.Equal(got, tt.want) || (ok && got == nil) {
				t.Errorf("Lookup(%v, %q) = %v, %v; want %v, %v", tt.scope.Networks, tt.name, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestTableUpdates(t *testing.T) {
	onA := Scope{Networks: []string{"net-a"}}
	tb := testTable()

	tb.Delete("net-a", "WEB")
	if got, ok := tb.Lookup(onA, "web."); ok {
		t.Errorf("after Delete: Lookup(web) = %v, true; want not found", got)
	}
	tb.Delete("net-a", "web") // deleting what is absent is fine

	// Set copies the record: reusing the caller's slice changes nothing.
	tasks := addrs("10.0.0.20")
	tb.Set("net-a", "web", Record{DNSRR: true, Tasks: tasks})
	tasks[0] = netip.MustParseAddr("10.9.9.9")
	if got, _ := tb.Lookup(onA, "web."); !slices.Equal(got, addrs("10.0.0.20")) {
		t.Errorf("after Set and reuse of the slice: Lookup(web) = %v; want [10.0.0.20]", got)
	}
	// Lookup's result belongs to the caller.
	got, _ := tb.Lookup(onA, "web.")
	got[0] = netip.MustParseAddr("10.9.9.9")
	if again, _ := tb.Lookup(onA, "web."); !slices.Equal(again, addrs("10.0.0.20")) {
		t.Errorf("after changing a result: Lookup(web) = %v; want [10.0.0.20]", again)
	}

	// SetNetwork replaces the whole network.
	tb.SetNetwork("net-a", map[string]Record{"API": {VIP: netip.MustParseAddr("10.0.0.30")}})
	if got, ok := tb.Lookup(onA, "rr."); ok {
		t.Errorf("after SetNetwork: Lookup(rr) = %v, true; want not found", got)
	}
	if got, _ := tb.Lookup(onA, "api."); !slices.Equal(got, addrs("10.0.0.30")) {
		t.Errorf("after SetNetwork: Lookup(api) = %v; want [10.0.0.30]", got)
	}
	nets := tb.Networks()
	slices.Sort(nets)
	if !slices.Equal(nets, []string{"net-a", "net-b"}) {
		t.Errorf("Networks() = %v; want [net-a net-b]", nets)
	}
	tb.SetNetwork("net-a", nil)
	tb.Delete("net-b", "secret")
	tb.Delete("net-b", "web")
	if nets := tb.Networks(); len(nets) != 0 {
		t.Errorf("after emptying every network: Networks() = %v; want none", nets)
	}
}

// TestTableConcurrent is for the race detector: updates and lookups at once.
func TestTableConcurrent(t *testing.T) {
	var tb Table
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 500 {
				name := fmt.Sprintf("svc%d", i%10)
				tb.Set("net", name, Record{DNSRR: true, Tasks: addrs("10.0.0.1", "10.0.0.2")})
				if got, ok := tb.Lookup(Scope{Networks: []string{"net"}}, name); ok && len(got) != 2 {
					t.Errorf("writer %d: Lookup(%s) = %v; want two addresses", w, name, got)
				}
				tb.Delete("net", name)
			}
		})
	}
	wg.Wait()
}
