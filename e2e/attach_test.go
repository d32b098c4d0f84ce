package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/harness"
)

// TestAttachableNetwork connects a network namespace that no service runs
// (as `ip netns add` makes one) on a worker to an attachable network whose
// service runs on the two other hosts: the namespace reaches each task by
// IP and the service by name through the resolver and VIP Shoal serves in it
// (and web's tasks resolve the attachment by its name),
// stays connected across a kill -9 of its host's daemon, and is unplugged
// by disconnect and when the namespace goes. A network that is not
// attachable refuses it.
func TestAttachableNetwork(t *testing.T) {
	c := harness.New(t, 3)
	images := harness.Images(t)
	reg := c.StartRegistry()
	app := c.PushImage(filepath.Join(images, "testapp.tar"), "shoal/testapp:latest")
	for _, h := range c.Hosts {
		h.Start("--insecure-registry", reg)
	}
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]
	h1.MustShoal("cluster", "init")
	tok := strings.TrimSpace(h1.MustShoal("cluster", "join-token", "-q", "worker"))
	for _, h := range []*harness.Host{h2, h3} {
		h.MustShoal("cluster", "join", "--token", tok, h1.Addr.String()+":4242")
	}
	waitReady(c, h1, 3)
	token := strings.TrimSpace(h1.MustShoal("cluster", "operator-token"))

	h1.MustShoal("network", "create", "--attachable", "tools")
	h1.MustShoal("network", "create", "appnet")
	h1.MustShoal("service", "create", "--name", "web", "--replicas", "2", "--replicas-max-per-node", "1",
		"--network", "tools", "--constraint", "node.id!="+nodeID(t, h3), app)
	web := waitRunning(c, h1, "web", 2)
	webIP := make(map[string]string) // task id -> overlay address
	for _, w := range web {
		for _, a := range w.Status.Addresses {
			if strings.HasPrefix(a, "10.10.") {
				webIP[w.ID] = strings.Split(a, "/")[0]
			}
		}
		if webIP[w.ID] == "" {
			t.Fatalf("web task %s has no overlay address: %v", w.ID, w.Status.Addresses)
		}
	}

	debug := c.NewNetNS("debug")
	name := filepath.Base(debug)
	// h3 is a worker: the CLI there speaks to the managers with the
	// operator token.
	onH3 := func(args ...string) (string, error) {
		return h3.Shoal(append([]string{"--token", token}, args...)...)
	}

	// Refusals: a network that is not attachable, a namespace that is not
	// there.
	if out, err := onH3("network", "connect", "--netns", debug, "appnet"); err == nil || !strings.Contains(err.Error(), "not attachable") {
		t.Errorf("connect to a network that is not attachable: %q, %v; want it refused as not attachable", out, err)
	}
	if out, err := onH3("network", "connect", "--netns", debug+"-missing", "tools"); err == nil || !strings.Contains(err.Error(), "does not exist on this node") {
		t.Errorf("connect a namespace that does not exist: %q, %v; want the node to say so", out, err)
	}

	out, err := onH3("network", "connect", "--netns", debug, "tools")
	if err != nil {
		t.Fatal(err)
	}
	attIP := ""
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == name && f[1] == "eth1" && f[3] == "tools" {
			attIP = strings.Split(f[2], "/")[0]
		}
	}
	if attIP == "" {
		t.Fatalf("connect printed no eth1 row for %s on tools:\n%s", name, out)
	}
	if got, err := exec.Command("ip", "-n", filepath.Base(debug), "-4", "-o", "addr", "show", "dev", "eth1").CombinedOutput(); err != nil || !strings.Contains(string(got), attIP+"/") {
		t.Fatalf("eth1 in the namespace: %q, %v; want address %s", got, err, attIP)
	}

	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return harness.DialFrom(ctx, debug, network, addr)
		},
	}}
	// get fetches url and returns which web task answered.
	get := func(url string) (string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return "", err
		}
		for id := range webIP {
			if strings.Contains(string(body), id) {
				return id, nil
			}
		}
		return "", fmt.Errorf("GET %s: %q names no web task", url, body)
	}
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return harness.DialFrom(ctx, debug, "udp", "127.0.0.11:53")
	}}
	reachesWeb := func(what string) {
		t.Helper()
		for id, ip := range webIP {
			c.Eventually(waitConverge, what+": the namespace reaches web task "+id[:8]+" by IP across hosts", func() error {
				got, err := get("http://" + ip + ":8080/")
				if err == nil && got != id {
					err = fmt.Errorf("%s answered at %s, want %s", got, ip, id)
				}
				return err
			})
		}
		c.Eventually(waitConverge, what+": the namespace reaches web by name through its VIP", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			addrs, err := resolver.LookupHost(ctx, "web")
			if err != nil {
				return fmt.Errorf("resolve web at 127.0.0.11 in the namespace: %w", err)
			}
			if len(addrs) != 1 {
				return fmt.Errorf("web resolves to %v, want its one VIP", addrs)
			}
			for _, ip := range webIP {
				if addrs[0] == ip {
					return fmt.Errorf("web resolves to task address %s, want its VIP", ip)
				}
			}
			_, err = get("http://" + addrs[0] + ":8080/")
			return err
		})
	}
	reachesWeb("connected")

	// The services' tasks find the attachment by its name.
	hostOf := map[string]*harness.Host{nodeID(t, h1): h1, nodeID(t, h2): h2}
	c.Eventually(waitConverge, "web's tasks resolve the attachment by its name", func() error {
		for _, w := range web {
			out, err := hostOf[w.NodeID].Runc("exec", w.ID, "nslookup", name)
			if err != nil {
				return err
			}
			if !strings.Contains(out, attIP) {
				return fmt.Errorf("nslookup %s in web task %s: %q lacks %s", name, w.ID[:8], out, attIP)
			}
		}
		return nil
	})

	// The network is in use, and says by what.
	if out, err := h1.Shoal("network", "rm", "tools"); err == nil || !strings.Contains(err.Error(), "attachment "+name) {
		t.Errorf("network rm tools while connected: %q, %v; want it refused naming attachment %s", out, err, name)
	}

	// The attachment outlives its daemon: kill -9, restart, adopted.
	h3.Kill()
	h3.Start("--insecure-registry", reg)
	waitReady(c, h1, 3)
	reachesWeb("after kill -9 and restart of the namespace's daemon")

	// Disconnect (from the manager) unplugs it; the namespace stays.
	h1.MustShoal("network", "disconnect", name)
	if out, err := exec.Command("ip", "-n", filepath.Base(debug), "link", "show", "eth1").CombinedOutput(); err == nil {
		t.Errorf("eth1 still in the namespace after disconnect: %s", out)
	}
	for _, ip := range webIP {
		if _, err := get("http://" + ip + ":8080/"); err == nil {
			t.Errorf("the namespace still reaches web at %s after disconnect", ip)
		}
	}
	c.Eventually(waitConverge, "the disconnected attachment is gone", func() error {
		for _, a := range attachments(t, h1) {
			if a.Name == name {
				return fmt.Errorf("attachment %s is still there: %s", name, a.State)
			}
		}
		return nil
	})

	// Connected again, then the namespace deleted: the attachment
	// finishes and its address is free, so the network can go.
	onH3Must := func(args ...string) {
		if out, err := onH3(args...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	onH3Must("network", "connect", "--netns", debug, "--name", "again", "tools")
	if out, err := exec.Command("ip", "netns", "del", filepath.Base(debug)).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del: %v: %s", err, out)
	}
	c.Eventually(waitConverge, "an attachment whose namespace went finishes", func() error {
		got := attachments(t, h1)
		for _, a := range got {
			if a.Name == "again" && a.State == "TASK_STATE_COMPLETE" {
				return nil
			}
		}
		return fmt.Errorf("attachments %v, want again COMPLETE", got)
	})
	h1.MustShoal("service", "rm", "web")
	c.Eventually(waitConverge, "tools removable once web and the attachment are gone", func() error {
		_, err := h1.Shoal("network", "rm", "tools")
		return err
	})
}

// attachmentState is one row of `shoal network attachments`.
type attachmentState struct {
	Name, State string
}

func attachments(t *testing.T, h *harness.Host) []attachmentState {
	t.Helper()
	out := h.MustShoal("network", "attachments", "--format", "json")
	var ts []struct {
		Attachment struct {
			Name string `json:"name"`
		} `json:"attachment"`
		Status struct {
			State string `json:"state"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &ts); err != nil {
		t.Fatalf("parse network attachments: %v\n%s", err, out)
	}
	var got []attachmentState
	for _, x := range ts {
		got = append(got, attachmentState{x.Attachment.Name, x.Status.State})
	}
	return got
}
