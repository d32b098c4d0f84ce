package agent

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/shoal-project/shoal/overlay/bridge"
	shoalpb "github.com/shoal-project/shoal/proto"
)

// fakePortTable records what the publisher writes.
type fakePortTable struct {
	content []bridge.PortMapping // the last successful write
	writes  int
	fail    error // returned by the next Apply, then cleared
}

func (f *fakePortTable) Apply(_ context.Context, ms []bridge.PortMapping) error {
	if err := f.fail; err != nil {
		f.fail = nil
		return err
	}
	f.writes++
	f.content = slices.Clone(ms)
	return nil
}

func TestPortPublisher(t *testing.T) {
	m := func(port uint16, target string) bridge.PortMapping {
		return bridge.PortMapping{Protocol: bridge.TCP, HostPort: port, Target: netip.MustParseAddrPort(target)}
	}
	a80, a443 := m(8080, "172.29.0.2:80"), m(8443, "172.29.0.2:443")
	b81 := m(8081, "172.29.0.3:80")
	errWrite := errors.New("netlink: permission denied")

	type step struct {
		name      string
		failWrite bool // the table refuses this step's write
		do        func(ctx context.Context, p *portPublisher) error
		wantErr   bool
		want      []bridge.PortMapping // table content after the step
		wantWrote bool
	}
	publish := func(id string, ms ...bridge.PortMapping) func(context.Context, *portPublisher) error {
		return func(ctx context.Context, p *portPublisher) error { return p.publish(ctx, id, ms) }
	}
	unpublish := func(id string) func(context.Context, *portPublisher) error {
		return func(ctx context.Context, p *portPublisher) error { return p.unpublish(ctx, id) }
	}
	stale := []bridge.PortMapping{m(9999, "172.29.0.9:80")} // left by an earlier process
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "tasks come and go; the table always holds the full set",
			steps: []step{
				{name: "a publishes", do: publish("a", a80, a443), want: []bridge.PortMapping{a80, a443}, wantWrote: true},
				{name: "b publishes", do: publish("b", b81), want: []bridge.PortMapping{a80, a443, b81}, wantWrote: true},
				{name: "a again, same ports", do: publish("a", a80, a443), want: []bridge.PortMapping{a80, a443, b81}},
				{name: "a stops", do: unpublish("a"), want: []bridge.PortMapping{b81}, wantWrote: true},
				{name: "a stops twice", do: unpublish("a"), want: []bridge.PortMapping{b81}},
				{name: "a task without ports", do: publish("c"), want: []bridge.PortMapping{b81}},
				{name: "b removed", do: unpublish("b"), want: nil, wantWrote: true},
			},
		},
		{
			name: "a new process: the first publish replaces what an earlier one left",
			steps: []step{
				{name: "task without ports adopted", do: publish("c"), want: stale},
				{name: "a adopted", do: publish("a", a80), want: []bridge.PortMapping{a80}, wantWrote: true},
			},
		},
		{
			name: "a new process: the first removal clears stale mappings",
			steps: []step{
				{name: "orphan removed", do: unpublish("orphan"), want: nil, wantWrote: true},
				{name: "nothing to do once synced", do: unpublish("other"), want: nil},
			},
		},
		{
			name: "a failed write is retried by the next call, whatever it changes",
			steps: []step{
				{name: "a publishes", do: publish("a", a80), want: []bridge.PortMapping{a80}, wantWrote: true},
				{name: "b's write fails", failWrite: true, do: publish("b", b81), wantErr: true, want: []bridge.PortMapping{a80}},
				{name: "an unrelated removal writes b too", do: unpublish("nobody"), want: []bridge.PortMapping{a80, b81}, wantWrote: true},
			},
		},
		{
			name: "a host port of another task is refused, the others stay",
			steps: []step{
				{name: "a publishes", do: publish("a", a80), want: []bridge.PortMapping{a80}, wantWrote: true},
				{name: "b wants a's port", do: publish("b", b81, m(8080, "172.29.0.3:80")), wantErr: true, want: []bridge.PortMapping{a80}},
				{name: "b with its own port only", do: publish("b", b81), want: []bridge.PortMapping{a80, b81}, wantWrote: true},
				{name: "a changes its own port's target", do: publish("a", m(8080, "172.29.0.2:81")), want: []bridge.PortMapping{m(8080, "172.29.0.2:81"), b81}, wantWrote: true},
			},
		},
		{
			name: "a failed withdrawal is retried by the same call",
			steps: []step{
				{name: "a publishes", do: publish("a", a80), want: []bridge.PortMapping{a80}, wantWrote: true},
				{name: "withdrawal fails", failWrite: true, do: unpublish("a"), wantErr: true, want: []bridge.PortMapping{a80}},
				{name: "withdrawn again", do: unpublish("a"), want: nil, wantWrote: true},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			table := &fakePortTable{content: stale}
			p := newPortPublisher(table, discard)
			for _, s := range tc.steps {
				if s.failWrite {
					table.fail = errWrite
				}
				before := table.writes
				err := s.do(context.Background(), p)
				if (err != nil) != s.wantErr {
					t.Fatalf("%s: err %v, want error %v", s.name, err, s.wantErr)
				}
				if wrote := table.writes > before; wrote != s.wantWrote {
					t.Errorf("%s: wrote the table: %v, want %v", s.name, wrote, s.wantWrote)
				}
				if !slices.Equal(table.content, s.want) {
					t.Fatalf("%s: table holds %v, want %v", s.name, table.content, s.want)
				}
			}
		})
	}
}

func TestHostMappings(t *testing.T) {
	addr := netip.MustParseAddr("172.29.0.7")
	host := shoalpb.PortConfig_PUBLISH_MODE_HOST
	udp := shoalpb.PortConfig_PROTOCOL_UDP
	tests := []struct {
		name        string
		ports       []*shoalpb.PortConfig
		want        []bridge.PortMapping
		wantSkipped int
	}{
		{name: "no ports"},
		{
			name: "host ports, tcp and udp",
			ports: []*shoalpb.PortConfig{
				{PublishedPort: 8080, TargetPort: 80, PublishMode: host},
				{PublishedPort: 5353, TargetPort: 53, PublishMode: host, Protocol: udp},
			},
			want: []bridge.PortMapping{
				{Protocol: bridge.TCP, HostPort: 8080, Target: netip.AddrPortFrom(addr, 80)},
				{Protocol: bridge.UDP, HostPort: 5353, Target: netip.AddrPortFrom(addr, 53)},
			},
		},
		{
			name: "ingress ports are left to the routing mesh",
			ports: []*shoalpb.PortConfig{
				{PublishedPort: 8080, TargetPort: 80},
				{PublishedPort: 8081, TargetPort: 81, PublishMode: host},
			},
			want:        []bridge.PortMapping{{Protocol: bridge.TCP, HostPort: 8081, Target: netip.AddrPortFrom(addr, 81)}},
			wantSkipped: 1,
		},
		{
			name:        "a host port without a published port is skipped",
			ports:       []*shoalpb.PortConfig{{TargetPort: 80, PublishMode: host}},
			wantSkipped: 1,
		},
		{
			name:        "out of range",
			ports:       []*shoalpb.PortConfig{{PublishedPort: 70000, TargetPort: 80, PublishMode: host}},
			wantSkipped: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			task := &shoalpb.Task{Spec: &shoalpb.ServiceSpec{Endpoint: &shoalpb.EndpointSpec{Ports: tc.ports}}}
			got, skipped := hostMappings(task, addr)
			if !slices.Equal(got, tc.want) || len(skipped) != tc.wantSkipped {
				t.Errorf("hostMappings = %v, %d skipped; want %v, %d skipped", got, len(skipped), tc.want, tc.wantSkipped)
			}
		})
	}
}
