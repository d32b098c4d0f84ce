package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/harness"
)

// TestOverlaySurvivesRestartAndQuorumLoss checks that the overlay data
// plane needs neither a live daemon for a moment nor the managers: a
// restarted daemon reconciles and traffic flows; with two of three
// managers killed, an established connection keeps working and new
// connections between existing containers, by IP and by name, succeed.
func TestOverlaySurvivesRestartAndQuorumLoss(t *testing.T) {
	c := harness.New(t, 5)
	images := harness.Images(t)
	reg := c.StartRegistry()
	app := c.PushImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest")
	bb := c.PushImage(filepath.Join(images, "busybox.oci.tar"), "shoal/busybox:latest")
	for _, h := range c.Hosts {
		h.Start("--insecure-registry", reg)
	}
	m1, m2, m3, w1, w2 := c.Hosts[0], c.Hosts[1], c.Hosts[2], c.Hosts[3], c.Hosts[4]
	m1.MustShoal("cluster", "init")
	addr := m1.Addr.String() + ":4242"
	mtok := strings.TrimSpace(m1.MustShoal("cluster", "join-token", "-q", "manager"))
	wtok := strings.TrimSpace(m1.MustShoal("cluster", "join-token", "-q", "worker"))
	m2.MustShoal("cluster", "join", "--token", mtok, addr)
	m3.MustShoal("cluster", "join", "--token", mtok, addr)
	w1.MustShoal("cluster", "join", "--token", wtok, addr)
	w2.MustShoal("cluster", "join", "--token", wtok, addr)
	waitReady(c, m1, 5)
	w1ID, w2ID := nodeID(t, w1), nodeID(t, w2)

	m1.MustShoal("network", "create", "appnet")
	m1.MustShoal("service", "create", "--name", "web", "--network", "appnet", "--constraint", "node.id=="+w2ID, app)
	m1.MustShoal("service", "create", "--name", "client", "--network", "appnet", "--constraint", "node.id=="+w1ID, bb, "sleep", "3600")
	web := waitRunning(c, m1, "web", 1)[0]
	client := waitRunning(c, m1, "client", 1)[0]
	webIP := overlayAddr(t, web)
	get := func(target string) error {
		out, err := w1.Runc("exec", client.ID, "timeout", "3", "wget", "-qO-", "http://"+target+":8080/")
		if err != nil {
			return err
		}
		if !strings.Contains(out, web.ID) {
			return fmt.Errorf("answer %q does not name task %s", out, web.ID)
		}
		return nil
	}
	c.Eventually(waitConverge, "client reaches web by IP and by name", func() error {
		if err := get(webIP); err != nil {
			return err
		}
		return get("web")
	})

	// Rotate the gossip key: every host switches, and gossip carries a new
	// endpoint to the others under the new key.
	keyOf := func(h *harness.Host) string {
		k, err := os.ReadFile(filepath.Join(h.DataDir, "gossip.key"))
		if err != nil {
			return ""
		}
		return string(k)
	}
	old := keyOf(m1)
	m1.MustShoal("cluster", "rotate-gossip-key")
	c.Eventually(waitConverge, "every host has the new gossip key", func() error {
		k := keyOf(m1)
		if k == "" || k == old {
			return fmt.Errorf("m1 still has the old key")
		}
		for _, h := range c.Hosts {
			if keyOf(h) != k {
				return fmt.Errorf("%s has another key", h.Name)
			}
		}
		return nil
	})
	m1.MustShoal("service", "scale", "web=2")
	c.Eventually(waitConverge, "the new web task is announced by gossip after the rotation", func() error {
		out, err := w1.Runc("exec", client.ID, "nslookup", "tasks.web")
		if err != nil {
			return err
		}
		if n := strings.Count(out, "10.10.0."); n < 2 {
			return fmt.Errorf("tasks.web answers %d addresses, want 2: %q", n, out)
		}
		return nil
	})
	m1.MustShoal("service", "scale", "web=1")

	// kill -9 the daemons of both hosts and start them again: the
	// containers ran on, and after reconciling traffic flows.
	w1.Kill()
	w2.Kill()
	w1.Start("--insecure-registry", reg)
	w2.Start("--insecure-registry", reg)
	c.Eventually(waitConverge, "traffic after the daemons restarted", func() error {
		if err := get(webIP); err != nil {
			return err
		}
		return get("web")
	})

	// A long-lived connection: nc in the client keeps a TCP session to the
	// web task open; the test app answers each request line.
	conn := startStream(t, w1, client.ID, webIP)

	// Two of three managers die: no quorum. The data plane does not care.
	m2.Kill()
	m3.Kill()
	if _, err := m1.Shoal("service", "create", "-d", "--name", "nope", app); err == nil {
		t.Errorf("a write succeeded without a quorum")
	}
	for i := range 3 {
		if err := conn.roundTrip(fmt.Sprintf("ping-%d", i)); err != nil {
			t.Errorf("established connection after losing quorum: %v", err)
		}
		if err := get(webIP); err != nil {
			t.Errorf("new connection by IP after losing quorum: %v", err)
		}
		if err := get("web"); err != nil {
			t.Errorf("new connection by name after losing quorum: %v", err)
		}
		time.Sleep(time.Second)
	}
}

// overlayAddr is the task's overlay address (the 10.10/16 pool).
func overlayAddr(t *testing.T, tk task) string {
	t.Helper()
	for _, a := range tk.Status.Addresses {
		if strings.HasPrefix(a, "10.10.") {
			return strings.Split(a, "/")[0]
		}
	}
	t.Fatalf("task %s has no overlay address: %v", tk.ID, tk.Status.Addresses)
	return ""
}

// stream is an HTTP/1.1 keep-alive session from inside a container.
type stream struct {
	in  *bufio.Writer
	out *bufio.Reader
	ip  string
}

// startStream opens a keep-alive TCP session from the container to
// ip:8080 with busybox nc, through runc exec.
func startStream(t *testing.T, h *harness.Host, containerID, ip string) *stream {
	t.Helper()
	cmd := h.RuncCmd("exec", containerID, "nc", ip, "8080")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nc: %v", err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	s := &stream{in: bufio.NewWriter(stdin), out: bufio.NewReader(stdout), ip: ip}
	if err := s.roundTrip("first"); err != nil {
		t.Fatalf("keep-alive session to %s: %v", ip, err)
	}
	return s
}

// roundTrip sends one keep-alive request and reads its answer's status.
func (s *stream) roundTrip(tag string) error {
	fmt.Fprintf(s.in, "GET /?%s HTTP/1.1\r\nHost: %s\r\n\r\n", tag, s.ip)
	if err := s.in.Flush(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		line, err := s.out.ReadString('\n')
		if err == nil && !strings.HasPrefix(line, "HTTP/1.1 200") {
			err = fmt.Errorf("status line %q", line)
		}
		length := 0
		for err == nil {
			var h string
			if h, err = s.out.ReadString('\n'); err != nil || h == "\r\n" {
				break
			}
			if v, ok := strings.CutPrefix(strings.ToLower(h), "content-length:"); ok {
				fmt.Sscanf(strings.TrimSpace(v), "%d", &length)
			}
		}
		if err == nil {
			_, err = s.out.Discard(length)
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		return fmt.Errorf("no answer within 5s")
	}
}
