package scheduler

import (
	"fmt"
	"strings"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// hostPort is a port published in host mode: bound on the node that runs
// the task, so two tasks on one node cannot both publish it.
type hostPort struct {
	protocol shoalpb.PortConfig_Protocol
	port     uint32
}

// String returns "8080/tcp".
func (p hostPort) String() string {
	proto := "tcp"
	if p.protocol == shoalpb.PortConfig_PROTOCOL_UDP {
		proto = "udp"
	}
	return fmt.Sprintf("%d/%s", p.port, proto)
}

// publishedOnHost returns the host port p binds on its task's node. A
// host-mode port without a published port gets one chosen on the node,
// which cannot conflict; an ingress port is published by the routing mesh
// on every node, not by the task.
func publishedOnHost(p *shoalpb.PortConfig) (hostPort, bool) {
	if p.GetPublishMode() != shoalpb.PortConfig_PUBLISH_MODE_HOST || p.GetPublishedPort() == 0 {
		return hostPort{}, false
	}
	return hostPort{protocol: p.GetProtocol(), port: p.GetPublishedPort()}, true
}

// HostPortFilter keeps nodes where none of the task's host-mode ports is
// published already, by an active task or one placed so far (of any
// service, this one included: two replicas cannot share a host port). Each
// port is a rule, so the reason names the port in use.
type HostPortFilter struct {
	ports []hostPort
}

// SetTask implements Filter: it applies to tasks publishing ports in host
// mode.
func (f *HostPortFilter) SetTask(t *shoalpb.Task) bool {
	f.ports = f.ports[:0]
	for _, p := range t.GetSpec().GetEndpoint().GetPorts() {
		if hp, ok := publishedOnHost(p); ok {
			f.ports = append(f.ports, hp)
		}
	}
	return len(f.ports) > 0
}

// Check implements Filter.
func (f *HostPortFilter) Check(n *NodeInfo) bool { return f.FailedRule(n) < 0 }

// FailedRule implements RuleFilter: the index of the first port in use.
func (f *HostPortFilter) FailedRule(n *NodeInfo) int {
	for i, p := range f.ports {
		if n.HostPortInUse(p.protocol, p.port) {
			return i
		}
	}
	return -1
}

// ExplainRule implements RuleFilter: "host port 8080/tcp in use on 1 node".
func (f *HostPortFilter) ExplainRule(rule, nodes int) string {
	return fmt.Sprintf("host port %s in use on %s", f.ports[rule], nodeCount(nodes))
}

// Explain implements Filter, for callers without the rule.
func (f *HostPortFilter) Explain(nodes int) string {
	if len(f.ports) == 1 {
		return f.ExplainRule(0, nodes)
	}
	texts := make([]string, len(f.ports))
	for i, p := range f.ports {
		texts[i] = p.String()
	}
	return fmt.Sprintf("one of host ports %s in use on %s", strings.Join(texts, ", "), nodeCount(nodes))
}
