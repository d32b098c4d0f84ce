package dns

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/shoal-project/shoal/overlay/netnsutil"
	"github.com/shoal-project/shoal/overlay/netnsutil/netnstest"
)

// runPrefix starts the name of every netns this test binary creates, unique
// to the run so that concurrent runs and leftovers of a crashed one never
// collide.
var runPrefix = netnstest.Prefix("shdns", 3)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and enters them")
	}
}

// newNetNS creates the named netns runPrefix-suffix, with its loopback
// down as every new one, deletes it at cleanup (even if the test fails),
// and returns its path.
func newNetNS(t *testing.T, suffix string) string {
	t.Helper()
	return netnstest.NewNamed(t, runPrefix+"-"+suffix)
}

// checkNoNetNSLeft fails the test if a netns of this run is left once the
// test's cleanups ran. Register it first, so that it runs last.
func checkNoNetNSLeft(t *testing.T) {
	t.Cleanup(func() {
		left, err := filepath.Glob(filepath.Join("/run/netns", runPrefix+"-*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(left) > 0 {
			t.Errorf("network namespaces left behind: %v", left)
		}
	})
}

// askIn sends a query for name from inside the netns at nsPath to the
// container's resolver, over network: the client runs on a thread that
// entered the namespace.
func askIn(nsPath, network, name string) (*mdns.Msg, error) {
	var resp *mdns.Msg
	err := netnsutil.InNetNS(nsPath, func() error {
		c := &mdns.Client{Net: network, Timeout: ioTimeout}
		var err error
		resp, _, err = c.Exchange(question(name, mdns.TypeA, 0), net.JoinHostPort(ListenAddr, "53"))
		return err
	})
	return resp, err
}

// loUp reports whether the loopback of the netns at nsPath is up.
func loUp(t *testing.T, nsPath string) bool {
	t.Helper()
	lo, err := netnstest.Handle(t, nsPath).LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	return lo.Attrs().Flags&net.FlagUp != 0
}

// TestNetNS serves two containers in real network namespaces and queries
// them from inside.
func TestNetNS(t *testing.T) {
	requireRoot(t)
	checkNoNetNSLeft(t)
	checkGoroutines(t)
	// The upstream listens on the host's loopback, which the containers
	// cannot reach: answers from it prove forwarding from the host netns.
	up := newFakeUpstream(t)
	nsA := newNetNS(t, "a")
	nsB := newNetNS(t, "b")
	s, err := New(Config{Resolver: testTable(), Upstreams: []netip.AddrPort{up.addr}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)

	if loUp(t, nsA) {
		t.Fatalf("lo of a new netns is up; the test cannot check that Add brings it up")
	}
	ctx := t.Context()
	if err := s.Add(ctx, "a", nsA, Scope{Networks: []string{"net-a"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, "b", nsB, Scope{Networks: []string{"net-b"}}); err != nil {
		t.Fatal(err)
	}
	if !loUp(t, nsA) {
		t.Errorf("lo of %s is down after Add", nsA)
	}

	type query struct {
		ns    string
		name  string
		rcode int
		want  []netip.Addr
	}
	expect := func(step string, queries []query) {
		t.Helper()
		for _, q := range queries {
			for _, network := range []string{"udp", "tcp"} {
				resp, err := askIn(q.ns, network, q.name)
				if err != nil {
					t.Errorf("%s: %s over %s from %s: %v", step, q.name, network, filepath.Base(q.ns), err)
					continue
				}
				if resp.Rcode != q.rcode || !slices.Equal(answerAddrs(resp), q.want) {
					t.Errorf("%s: %s over %s from %s: %s; want rcode %s, answers %v", step, q.name, network,
						filepath.Base(q.ns), describe(resp), mdns.RcodeToString[q.rcode], q.want)
				}
			}
		}
	}
	expect("two containers", []query{
		{ns: nsA, name: "web.", want: addrs("10.0.0.2")},
		{ns: nsA, name: "tasks.web.", want: addrs("10.0.0.5", "10.0.0.6")},
		{ns: nsA, name: "secret.", rcode: mdns.RcodeNameError}, // net-b's: forwarded
		{ns: nsA, name: exampleName, want: []netip.Addr{exampleAddr}},
		{ns: nsB, name: "web.", want: addrs("10.1.0.3")},
		{ns: nsB, name: "secret.", want: addrs("10.1.0.2")},
		{ns: nsB, name: "rr.", rcode: mdns.RcodeNameError}, // net-a's: forwarded
	})

	s.Remove("a")
	for _, network := range []string{"udp", "tcp"} {
		if resp, err := askIn(nsA, network, "web."); err == nil {
			t.Errorf("after Remove: web. over %s from a: %s; want no answer", network, describe(resp))
		}
	}
	expect("after Remove of a", []query{{ns: nsB, name: "web.", want: addrs("10.1.0.3")}})

	if err := s.Add(ctx, "a", nsA, Scope{Networks: []string{"net-a", "net-b"}}); err != nil {
		t.Fatalf("Add again after Remove: %v", err)
	}
	expect("added again", []query{
		{ns: nsA, name: "web.", want: addrs("10.0.0.2")},
		{ns: nsA, name: "secret.", want: addrs("10.1.0.2")},
	})

	s.Close()
	for _, ns := range []string{nsA, nsB} {
		if resp, err := askIn(ns, "tcp", "web."); err == nil {
			t.Errorf("after Close: web. from %s: %s; want no answer", filepath.Base(ns), describe(resp))
		}
	}
}

// TestListenNetNSErrors checks that ListenNetNS reports a missing
// namespace and a taken port.
func TestListenNetNSErrors(t *testing.T) {
	requireRoot(t)
	checkNoNetNSLeft(t)
	checkGoroutines(t)
	ctx := t.Context()
	if _, _, err := ListenNetNS(ctx, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("ListenNetNS of a missing netns succeeded")
	}
	ns := newNetNS(t, "busy")
	pc, l, err := ListenNetNS(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	defer pc.Close()
	if got := fmt.Sprint(pc.LocalAddr(), " ", l.Addr()); got != "127.0.0.11:53 127.0.0.11:53" {
		t.Errorf("listening on %s; want 127.0.0.11:53 for both", got)
	}
	if pc2, l2, err := ListenNetNS(ctx, ns); err == nil {
		pc2.Close()
		l2.Close()
		t.Error("second ListenNetNS in the same netns succeeded; want address in use")
	}
}
