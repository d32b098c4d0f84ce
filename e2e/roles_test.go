package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/e2e/harness"
)

// managerCount counts the managers node ls shows (leader and reachable).
func managerCount(out string) int {
	return strings.Count(out, "Leader") + strings.Count(out, "Reachable")
}

// TestPromoteDemote promotes workers to managers and demotes a manager,
// and refuses a demotion that would leave the managers without a quorum.
func TestPromoteDemote(t *testing.T) {
	c := harness.New(t, 4)
	for _, h := range c.Hosts {
		h.Start()
	}
	h1, h2, h3, h4 := c.Hosts[0], c.Hosts[1], c.Hosts[2], c.Hosts[3]
	h1.MustShoal("cluster", "init")
	addr := h1.Addr.String() + ":4242"
	h2.MustShoal("cluster", "join", "--token", strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "manager")), addr)
	wtok := strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "worker"))
	h3.MustShoal("cluster", "join", "--token", wtok, addr)
	h4.MustShoal("cluster", "join", "--token", wtok, addr)
	waitManagers := func(what string, n int, via *harness.Host) {
		t.Helper()
		c.Eventually(waitConverge, what, func() error {
			out, err := via.Shoal("node", "ls")
			if err != nil {
				return err
			}
			if got := managerCount(out); got != n || strings.Count(out, "Ready") != 4 {
				return fmt.Errorf("%d managers, want %d, all 4 ready:\n%s", got, n, out)
			}
			return nil
		})
	}
	waitManagers("2 managers", 2, h1)

	// Promote h3: it gets a manager certificate, joins Raft, serves the API.
	h1.MustShoal("node", "promote", nodeID(t, h3))
	waitManagers("h3 promoted", 3, h1)
	c.Eventually(waitConverge, "h3 serves the control API", func() error {
		_, err := h3.Shoal("service", "ls")
		return err
	})

	// Demote h2: it leaves Raft and works on as a worker.
	h1.MustShoal("node", "demote", nodeID(t, h2))
	c.Eventually(waitConverge, "h2 is a worker", func() error {
		_, err := h2.Shoal("service", "ls")
		if err == nil || !strings.Contains(err.Error(), "worker") {
			return fmt.Errorf("service ls on h2: %v", err)
		}
		return nil
	})
	waitManagers("h2 demoted", 2, h1)

	// With three managers and one of them down, demoting another would
	// leave one of two reachable: refused.
	h1.MustShoal("node", "promote", nodeID(t, h4))
	waitManagers("h4 promoted", 3, h1)
	h3ID, h4ID := nodeID(t, h3), nodeID(t, h4)
	h4.Kill()
	// The leader's view of which managers are alive lags by up to an
	// election timeout; wait until the cluster sees h4 down, as an operator
	// would, before asking for a demotion.
	c.Eventually(waitConverge, "h4 seen down", func() error {
		out, err := h1.Shoal("node", "inspect", h4ID)
		if err != nil {
			return err
		}
		if strings.Contains(out, "NODE_STATE_READY") {
			return fmt.Errorf("h4 still ready")
		}
		return nil
	})
	_, err := h1.Shoal("node", "demote", h3ID)
	if err == nil || !strings.Contains(err.Error(), "quorum") {
		t.Errorf("demote with a manager down: %v, want a refusal naming the quorum", err)
	}

	// h4 comes back. A manager leaves only with --force; the remaining two
	// keep their quorum, demote and remove it, and take writes.
	h4.Start()
	c.Eventually(waitConverge, "h4 ready again", func() error {
		out, err := h1.Shoal("node", "inspect", h4ID)
		if err != nil {
			return err
		}
		if !strings.Contains(out, "NODE_STATE_READY") {
			return fmt.Errorf("h4 not ready yet")
		}
		return nil
	})
	if _, err := h3.Shoal("cluster", "leave"); err == nil || !strings.Contains(err.Error(), "demote it first") {
		t.Errorf("leave on a manager: %v, want a refusal saying to demote it first", err)
	}
	h3.MustShoal("cluster", "leave", "--force")
	c.Eventually(waitConverge, "h3 demoted and removed after leaving", func() error {
		if _, err := h1.Shoal("node", "demote", h3ID); err != nil && !strings.Contains(err.Error(), "not a manager") {
			return err
		}
		_, err := h1.Shoal("node", "rm", h3ID)
		return err
	})
	if out := h1.MustShoal("node", "ls"); managerCount(out) != 2 {
		t.Errorf("managers after h3 left:\n%s", out)
	}
	h1.MustShoal("service", "create", "-d", "--name", "alone", "--replicas", "0", "shoal/testapp:latest")

	// Demote the leader through its own socket: it hands leadership to the
	// other manager, which removes it; the survivor takes writes alone.
	leader, other := h1, h4
	if !isLeader(t, h1) {
		leader, other = h4, h1
	}
	t.Logf("demoting the leader, %s, through its own socket", leader.Name)
	leader.MustShoal("node", "demote", nodeID(t, leader))
	c.Eventually(waitConverge, "the old leader is a worker", func() error {
		_, err := leader.Shoal("service", "ls")
		if err == nil || !strings.Contains(err.Error(), "worker") {
			return fmt.Errorf("service ls on the old leader: %v", err)
		}
		return nil
	})
	if out := other.MustShoal("node", "ls"); managerCount(out) != 1 || !strings.Contains(out, "Leader") {
		t.Errorf("managers after demoting the leader:\n%s", out)
	}
	other.MustShoal("service", "scale", "alone=0")
}

// isLeader reports whether h's node is the Raft leader, per node inspect.
func isLeader(t *testing.T, h *harness.Host) bool {
	t.Helper()
	out := h.MustShoal("node", "inspect", "self")
	return strings.Contains(out, `"leader": true`) || strings.Contains(out, `"leader":true`)
}
