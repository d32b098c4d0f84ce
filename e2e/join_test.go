package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/e2e/harness"
)

// nodeID asks a host's daemon for its node id.
func nodeID(t *testing.T, h *harness.Host) string {
	t.Helper()
	var info struct {
		NodeID string `json:"nodeId"`
	}
	out := h.MustShoal("info", "--format", "json")
	if err := json.Unmarshal([]byte(out), &info); err != nil || info.NodeID == "" {
		t.Fatalf("shoal info --format json: %v: %s", err, out)
	}
	return info.NodeID
}

// TestWorkerJoin joins a second host as a worker over mutual TLS and runs a
// service across both hosts, its image pulled from the test's registry.
func TestWorkerJoin(t *testing.T) {
	c := harness.New(t, 2)
	images := harness.Images(t)
	reg := c.StartRegistry()
	ref := c.PushImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest")
	mgr, wrk := c.Hosts[0], c.Hosts[1]
	mgr.Start("--insecure-registry", reg)
	wrk.Start("--insecure-registry", reg)
	mgr.MustShoal("cluster", "init")
	managerAddr := mgr.Addr.String() + ":4242"

	out := mgr.MustShoal("cluster", "join-token", "worker")
	if !strings.Contains(out, "shoal cluster join --token SHOALTKN-1-") || !strings.Contains(out, managerAddr) {
		t.Errorf("join-token output does not show the join command for %s:\n%s", managerAddr, out)
	}
	tok := strings.TrimSpace(mgr.MustShoal("cluster", "join-token", "-q", "worker"))

	// Bad tokens are refused and say why.
	wrongSecret := tok[:len(tok)-1] + map[bool]string{true: "b", false: "a"}[strings.HasSuffix(tok, "a")]
	for _, bad := range []struct{ tok, want string }{
		{"nonsense", "malformed"},
		{wrongSecret, "refused"},
	} {
		if _, err := wrk.Shoal("cluster", "join", "--token", bad.tok, managerAddr); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("join with token %q: %v, want an error saying %q", bad.tok, err, bad.want)
		}
	}

	out = wrk.MustShoal("cluster", "join", "--token", tok, managerAddr)
	if !strings.Contains(out, "as a worker") {
		t.Errorf("join said %q", out)
	}

	c.Eventually(waitConverge, "both nodes ready", func() error {
		out, err := mgr.Shoal("node", "ls")
		if err != nil {
			return err
		}
		if n := strings.Count(out, "Ready"); n != 2 {
			return fmt.Errorf("%d nodes ready:\n%s", n, out)
		}
		return nil
	})

	// Both hosts gossip with the cluster's key (AES-256), kept root-only
	// so a restarted host gossips before the managers answer.
	c.Eventually(waitConverge, "the gossip key on both hosts", func() error {
		var keys [][]byte
		for _, h := range []*harness.Host{mgr, wrk} {
			p := filepath.Join(h.DataDir, "gossip.key")
			st, err := os.Stat(p)
			if err != nil {
				return err
			}
			if st.Mode().Perm() != 0o600 {
				return fmt.Errorf("%s has mode %v, want 0600", p, st.Mode().Perm())
			}
			k, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			keys = append(keys, k)
		}
		if len(keys[0]) != 32 || !bytes.Equal(keys[0], keys[1]) {
			return fmt.Errorf("gossip keys of %d and %d bytes, want the same 32", len(keys[0]), len(keys[1]))
		}
		return nil
	})
	if !strings.Contains(wrk.Log(), "gossip") || strings.Contains(wrk.Log(), "gossip is not encrypted") {
		t.Errorf("worker log does not show encrypted gossip")
	}

	// The control API over the network: a manager's certificate may call
	// it; a worker's may not; a forged "manager" certificate is refused at
	// the handshake. The CLI runs inside the worker host's namespace.
	remote := func(tlsDir string, args ...string) (string, error) {
		return wrk.Exec(append([]string{filepath.Join(c.Bin, "shoal"), "--host", "tcp://" + managerAddr, "--tls-dir", tlsDir}, args...)...)
	}
	if out, err := remote(filepath.Join(mgr.DataDir, "certificates"), "node", "ls"); err != nil || strings.Count(out, "Ready") != 2 {
		t.Errorf("node ls over mTLS with a manager's certificate: %v\n%s", err, out)
	}
	if out, err := remote(filepath.Join(wrk.DataDir, "certificates"), "service", "ls"); err == nil || !strings.Contains(out, "requires manager") {
		t.Errorf("service ls with a worker's certificate: %v\n%s; want a refusal saying it requires a manager", err, out)
	}
	forged := forgeCredentials(t, filepath.Join(mgr.DataDir, "certificates", "ca.crt"))
	if out, err := remote(forged, "service", "ls"); err == nil {
		t.Errorf("service ls with a forged manager certificate succeeded:\n%s", out)
	}

	// Through the worker's own socket: an operator with the operator token
	// uses the cluster API (the worker relays it to a manager); without the
	// token, or with a wrong one, the worker refuses.
	opTok := strings.TrimSpace(mgr.MustShoal("cluster", "operator-token"))
	for _, tok := range []string{"", "SHOALOPS-1-00112233"} {
		if _, err := wrk.Shoal("--token", tok, "service", "ls"); err == nil || !strings.Contains(err.Error(), "operator token") {
			t.Errorf("service ls on the worker with token %q: %v, want a refusal naming the operator token", tok, err)
		}
	}
	wrk.MustShoal("--token", opTok, "service", "create", "-d", "--name", "viaworker", "--replicas", "0", ref)
	if out := mgr.MustShoal("service", "ls"); !strings.Contains(out, "viaworker") {
		t.Errorf("service created through the worker's socket is not on the manager:\n%s", out)
	}
	mgr.MustShoal("service", "rm", "viaworker")

	// A service spreads over both hosts; every replica answers on its host.
	mgr.MustShoal("service", "create", "--name", "web", "--replicas", "4", ref)
	ts := waitRunning(c, mgr, "web", 4)
	hosts := map[string]*harness.Host{nodeID(t, mgr): mgr, nodeID(t, wrk): wrk}
	perNode := map[string]int{}
	for _, x := range ts {
		perNode[x.NodeID]++
		h := hosts[x.NodeID]
		if h == nil {
			t.Fatalf("task %s on unknown node %s", x.ID, x.NodeID)
		}
		checkServes(t, h, []task{x})
	}
	for id, n := range perNode {
		if n != 2 {
			t.Errorf("node %s runs %d tasks, want 2 (spread): %v", id, n, perNode)
		}
	}

	// The worker's daemon dies and comes back: it reconnects with its saved
	// certificate and adopts its containers.
	before, err := runningContainers(wrk)
	if err != nil {
		t.Fatal(err)
	}
	wrk.Kill()
	wrk.Start("--insecure-registry", reg)
	after := waitRunning(c, mgr, "web", 4)
	if ids(after) != ids(ts) {
		t.Errorf("tasks after the worker restarted %s, want the same %s", ids(after), ids(ts))
	}
	now, err := runningContainers(wrk)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(now, ",") != strings.Join(before, ",") {
		t.Errorf("worker containers after restart %v, want %v", now, before)
	}

	// Certificates renew in place, through a manager (the manager through
	// its own listener); after both daemons restart on the renewed
	// certificates, the cluster is whole.
	certs := map[*harness.Host][]byte{}
	for _, h := range []*harness.Host{wrk, mgr} {
		certs[h] = readFile(t, filepath.Join(h.DataDir, "certificates", "node.crt"))
		if out := h.MustShoal("node", "renew-cert"); !strings.Contains(out, "renewed") {
			t.Errorf("%s renew-cert said %q", h.Name, out)
		}
		if bytes.Equal(certs[h], readFile(t, filepath.Join(h.DataDir, "certificates", "node.crt"))) {
			t.Errorf("%s: node.crt unchanged after renew-cert", h.Name)
		}
	}
	mgr.Kill()
	mgr.Start("--insecure-registry", reg)
	wrk.Kill()
	wrk.Start("--insecure-registry", reg)
	c.Eventually(waitConverge, "both nodes ready on renewed certificates", func() error {
		out, err := mgr.Shoal("node", "ls")
		if err != nil {
			return err
		}
		if n := strings.Count(out, "Ready"); n != 2 {
			return fmt.Errorf("%d ready:\n%s", n, out)
		}
		return nil
	})

	// The worker leaves: its containers go, the managers see it down, it is
	// removed there, and it can join again. A manager cannot leave.
	if _, err := mgr.Shoal("cluster", "leave"); err == nil || !strings.Contains(err.Error(), "manager") {
		t.Errorf("cluster leave on the manager: %v, want a refusal", err)
	}
	if out := wrk.MustShoal("cluster", "leave"); !strings.Contains(out, "left the cluster") {
		t.Errorf("leave said %q", out)
	}
	if ids, err := runningContainers(wrk); err != nil || len(ids) > 0 {
		t.Errorf("containers on the worker after leave: %v %v", ids, err)
	}
	wrkID := nodeID(t, wrk)
	c.Eventually(waitConverge, "the manager sees the worker gone and removes it", func() error {
		_, err := mgr.Shoal("node", "rm", wrkID)
		return err
	})
	wrk.MustShoal("cluster", "join", "--token", tok, managerAddr)

	mgr.MustShoal("service", "rm", "web")
	c.Eventually(waitConverge, "containers removed on both hosts", func() error {
		for _, h := range c.Hosts {
			if ids, err := runningContainers(h); err != nil || len(ids) > 0 {
				return fmt.Errorf("%s: %v %v", h.Name, ids, err)
			}
		}
		return nil
	})
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
