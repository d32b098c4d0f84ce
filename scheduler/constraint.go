package scheduler

import (
	"fmt"
	"strings"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Constraint is one parsed placement constraint: KEY==VALUE or KEY!=VALUE.
type Constraint struct {
	Key   string
	Equal bool // == when true, != otherwise
	Value string
	text  string
}

// String returns the constraint as written.
func (c Constraint) String() string { return c.text }

// constraintKeys are the node attributes a constraint may name; labels take
// a name after the prefix.
var constraintKeys = []string{"node.id", "node.hostname", "node.role", "node.ip", "node.platform.os", "node.platform.arch"}

const (
	nodeLabelPrefix   = "node.labels."
	engineLabelPrefix = "engine.labels."
)

// ParseConstraint parses "KEY==VALUE" or "KEY!=VALUE". The error says what
// was expected, for the operator who wrote it.
func ParseConstraint(s string) (Constraint, error) {
	text := strings.TrimSpace(s)
	op, equal := "==", true
	if !strings.Contains(text, "==") {
		op, equal = "!=", false
	}
	key, value, ok := strings.Cut(text, op)
	key, value = strings.TrimSpace(key), strings.TrimSpace(value)
	if !ok || key == "" || value == "" {
		return Constraint{}, fmt.Errorf("invalid constraint %q: expected KEY==VALUE or KEY!=VALUE", s)
	}
	valid := false
	for _, k := range constraintKeys {
		valid = valid || key == k
	}
	for _, p := range []string{nodeLabelPrefix, engineLabelPrefix} {
		valid = valid || (strings.HasPrefix(key, p) && len(key) > len(p))
	}
	if !valid {
		return Constraint{}, fmt.Errorf("invalid constraint %q: unknown key %q, expected one of %s, %sNAME, %sNAME",
			s, key, strings.Join(constraintKeys, ", "), nodeLabelPrefix, engineLabelPrefix)
	}
	if key == "node.role" && value != "manager" && value != "worker" {
		return Constraint{}, fmt.Errorf("invalid constraint %q: node.role is manager or worker", s)
	}
	return Constraint{Key: key, Equal: equal, Value: value, text: text}, nil
}

// attribute returns the node's value for key, and whether it has one.
func attribute(n *shoalpb.Node, key string) (string, bool) {
	switch key {
	case "node.id":
		return n.GetId(), true
	case "node.hostname":
		return n.GetDescription().GetHostname(), true
	case "node.role":
		if n.GetRole() == shoalpb.NodeRole_NODE_ROLE_MANAGER {
			return "manager", true
		}
		return "worker", true
	case "node.ip":
		return n.GetStatus().GetAddr(), n.GetStatus().GetAddr() != ""
	case "node.platform.os":
		return n.GetDescription().GetPlatform().GetOs(), true
	case "node.platform.arch":
		return n.GetDescription().GetPlatform().GetArchitecture(), true
	}
	if name, ok := strings.CutPrefix(key, nodeLabelPrefix); ok {
		v, ok := n.GetSpec().GetLabels()[name]
		return v, ok
	}
	if name, ok := strings.CutPrefix(key, engineLabelPrefix); ok {
		v, ok := n.GetDescription().GetEngineLabels()[name]
		return v, ok
	}
	return "", false
}

// Matches reports whether the node meets the constraint. A node without
// the attribute meets only != constraints, as in Swarm.
func (c Constraint) Matches(n *shoalpb.Node) bool {
	v, ok := attribute(n, c.Key)
	if !ok {
		return !c.Equal
	}
	if c.Key == "node.hostname" || c.Key == "node.role" || strings.HasPrefix(c.Key, "node.platform.") {
		// Host names and platform names are case-insensitive.
		return strings.EqualFold(v, c.Value) == c.Equal
	}
	return (v == c.Value) == c.Equal
}

// ConstraintFilter keeps nodes that meet every constraint of the task's
// service. Each constraint is a rule: a node is counted against the first
// constraint it does not meet, so the reason names it.
type ConstraintFilter struct {
	constraints []Constraint
}

// SetTask implements Filter: it applies to tasks with constraints. Invalid
// constraints were refused when the service was created; any left here
// match no node rather than all of them.
func (f *ConstraintFilter) SetTask(t *shoalpb.Task) bool {
	f.constraints = f.constraints[:0]
	for _, s := range t.GetSpec().GetPlacement().GetConstraints() {
		c, err := ParseConstraint(s)
		if err != nil {
			c = Constraint{Key: "node.id", Equal: true, Value: "", text: s}
		}
		f.constraints = append(f.constraints, c)
	}
	return len(f.constraints) > 0
}

// Check implements Filter.
func (f *ConstraintFilter) Check(n *NodeInfo) bool { return f.FailedRule(n) < 0 }

// FailedRule implements RuleFilter: the index of the first constraint n
// does not meet.
func (f *ConstraintFilter) FailedRule(n *NodeInfo) int {
	for i, c := range f.constraints {
		if !c.Matches(n.Node) {
			return i
		}
	}
	return -1
}

// ExplainRule implements RuleFilter: "constraint node.labels.zone==b not
// met on 3 nodes".
func (f *ConstraintFilter) ExplainRule(rule, nodes int) string {
	return fmt.Sprintf("constraint %s not met on %s", f.constraints[rule], nodeCount(nodes))
}

// Explain implements Filter, for callers without the rule: it names every
// constraint.
func (f *ConstraintFilter) Explain(nodes int) string {
	texts := make([]string, len(f.constraints))
	for i, c := range f.constraints {
		texts[i] = c.String()
	}
	word := "constraint"
	if len(texts) > 1 {
		word = "constraints"
	}
	return fmt.Sprintf("%s %s not met on %s", word, strings.Join(texts, ", "), nodeCount(nodes))
}
