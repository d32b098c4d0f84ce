package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/e2e/harness"
)

// TestNetworkAllocation creates overlay networks through the CLI and checks
// what the managers allocate: subnets from the cluster's pool, VNIs, a VIP
// per service and an address and MAC per task; a network in use cannot be
// removed. (The data plane that attaches containers is issue #5's next
// step.)
func TestNetworkAllocation(t *testing.T) {
	c := harness.New(t, 1)
	h := c.Hosts[0]
	h.Start()
	h.MustShoal("image", "load", "-i", filepath.Join(harness.Images(t), "testapp.tar"))
	h.MustShoal("cluster", "init", "--default-addr-pool", "10.123.0.0/16", "--default-addr-pool-mask-len", "24")

	h.MustShoal("network", "create", "front")
	h.MustShoal("network", "create", "--subnet", "10.50.0.0/24", "--encrypted", "secure")
	if _, err := h.Shoal("network", "create", "--subnet", "10.50.0.0/25", "clash"); err == nil || !strings.Contains(err.Error(), "overlaps network secure") {
		t.Errorf("overlapping subnet: %v, want a refusal naming network secure", err)
	}
	if _, err := h.Shoal("network", "create", "--subnet", "10.50.1.0", "bad"); err == nil || !strings.Contains(err.Error(), "CIDR") {
		t.Errorf("subnet without a prefix length: %v, want a CIDR hint", err)
	}
	out := h.MustShoal("network", "ls")
	for _, want := range []string{"front", "10.123.0.0/24", "4096", "secure", "10.50.0.0/24", "4097", "encrypted"} {
		if !strings.Contains(out, want) {
			t.Errorf("network ls does not show %q:\n%s", want, out)
		}
	}

	h.MustShoal("service", "create", "-d", "--name", "web", "--replicas", "2", "--network", "front", "shoal/testapp:latest")
	var svcs []struct {
		Endpoint struct {
			VirtualIps []struct {
				Addr string `json:"addr"`
			} `json:"virtualIps"`
		} `json:"endpoint"`
	}
	if err := json.Unmarshal([]byte(h.MustShoal("service", "inspect", "web")), &svcs); err != nil || len(svcs) != 1 {
		t.Fatalf("service inspect web: %v", err)
	}
	if v := svcs[0].Endpoint.VirtualIps; len(v) != 1 || v[0].Addr != "10.123.0.2/24" {
		t.Errorf("web's virtual IPs: %+v, want 10.123.0.2/24", v)
	}
	c.Eventually(waitConverge, "tasks of web have addresses on front", func() error {
		var ts []struct {
			Networks []struct {
				Addresses []string `json:"addresses"`
				Mac       string   `json:"mac"`
			} `json:"networks"`
		}
		if err := json.Unmarshal([]byte(h.MustShoal("service", "ps", "--format", "json", "web")), &ts); err != nil {
			return err
		}
		got := map[string]bool{}
		for _, tk := range ts {
			for _, n := range tk.Networks {
				got[strings.Join(n.Addresses, ",")+" "+n.Mac] = true
			}
		}
		for _, want := range []string{"10.123.0.3/24 02:42:0a:7b:00:03", "10.123.0.4/24 02:42:0a:7b:00:04"} {
			if !got[want] {
				return fmt.Errorf("attachments %v, want %q among them", got, want)
			}
		}
		return nil
	})

	if _, err := h.Shoal("network", "rm", "front"); err == nil || !strings.Contains(err.Error(), "in use by service web") {
		t.Errorf("rm of a network in use: %v, want a refusal naming service web", err)
	}
	h.MustShoal("service", "rm", "web")
	c.Eventually(waitConverge, "front removable once web is gone", func() error {
		_, err := h.Shoal("network", "rm", "front")
		return err
	})
	if out := h.MustShoal("network", "ls", "-q"); strings.Count(out, "\n") != 1 {
		t.Errorf("networks left: %q, want only secure", out)
	}
}
