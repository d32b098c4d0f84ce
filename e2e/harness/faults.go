package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// partitionTable is the nftables table (family inet) Partition installs in
// each host's namespace and Heal removes. Its name is fixed because each
// namespace belongs to one cluster; the daemons' own tables use other names.
const partitionTable = "shoal-harness"

// CutLink sets the host's switch-side veth ("p<name>" in the switch
// namespace) down, as if its cable were pulled. The host's own namespace is
// not touched: its eth0 keeps its address and routes, but the kernel sees
// the peer go away (carrier lost, operstate LOWERLAYERDOWN, routes flagged
// linkdown), so every packet it sends is dropped at once and nothing
// arrives. No ICMP error and no RST is generated: open TCP connections
// retransmit until they time out, exactly as on a dead wire.
func (h *Host) CutLink() {
	h.c.T.Helper()
	h.c.must("ip", "-n", h.c.swNS, "link", "set", "p"+h.Name, "down")
}

// RestoreLink undoes CutLink: the switch-side veth comes up, the host's
// eth0 regains carrier and traffic flows again (the bridge runs no STP, so
// the port forwards immediately). Connections that have not timed out yet
// resume with their next retransmission.
func (h *Host) RestoreLink() {
	h.c.T.Helper()
	h.c.must("ip", "-n", h.c.swNS, "link", "set", "p"+h.Name, "up")
}

// Restart stops the host's shoald with SIGTERM (as Stop) and starts it
// again with the extra arguments of its last Start, waiting for its socket.
// Containers keep running across it; the daemon must find them again.
func (h *Host) Restart() {
	h.c.T.Helper()
	args := h.args
	h.Stop()
	h.Start(args...)
}

// KillDaemon kills the host's shoald with SIGKILL, as a crash would: no
// shutdown code runs, its socket file and locks are left behind, and its
// containers keep running. It is Kill under the name the fault tests use.
func (h *Host) KillDaemon() { h.Kill() }

// Partition splits the underlay into the given groups: every host in a
// group drops all IP traffic to and from the underlay addresses of the
// hosts in the other groups, in its input, output and forward hooks (an
// nftables table "shoal-harness", family inet, loaded in one atomic
// `nft -f` per host). The kernel sees links up and ARP answered (the inet
// family does not filter ARP), but matching packets silently vanish: no
// ICMP error, no RST, so connections hang and time out. Hosts named in no
// group, and the registry, stay reachable from everyone. A later Partition
// replaces the previous one; Heal removes it. A host in two groups fails
// the test.
func (c *Cluster) Partition(groups ...[]*Host) {
	c.T.Helper()
	groupOf := make(map[*Host]int)
	for i, g := range groups {
		for _, h := range g {
			if h == nil || h.c != c {
				c.T.Fatalf("partition: group %d holds a host of another cluster", i)
			}
			if j, ok := groupOf[h]; ok && j != i {
				c.T.Fatalf("partition: %s is in groups %d and %d", h.Name, j, i)
			}
			groupOf[h] = i
		}
	}
	for _, h := range c.Hosts {
		gi, in := groupOf[h]
		var peers []string
		if in {
			for _, o := range c.Hosts {
				if gj, ok := groupOf[o]; ok && gj != gi {
					peers = append(peers, o.Addr.String())
				}
			}
		}
		if len(peers) == 0 {
			h.nftApply(partitionRemoveRules)
			continue
		}
		h.nftApply(partitionRules(peers))
	}
}

// Heal removes every partition: each host's "shoal-harness" table is
// deleted (hosts without one are fine). Packets flow again at once; TCP
// connections that have not timed out resume with their next
// retransmission.
func (c *Cluster) Heal() {
	c.T.Helper()
	for _, h := range c.Hosts {
		h.nftApply(partitionRemoveRules)
	}
}

// partitionRemoveRules deletes the partition table whether or not it
// exists: declaring a table is a no-op when it is already there, so the
// delete that follows never fails.
const partitionRemoveRules = "table inet " + partitionTable + "\n" +
	"delete table inet " + partitionTable + "\n"

// partitionRules is the nft script that replaces the host's partition
// table with one dropping traffic to and from peers. Declaring, deleting
// and re-creating the table in one file makes the swap a single
// transaction: no packet sees a half-written rule set.
func partitionRules(peers []string) string {
	var b strings.Builder
	b.WriteString(partitionRemoveRules)
	fmt.Fprintf(&b, "table inet %s {\n", partitionTable)
	fmt.Fprintf(&b, "\tset peers {\n\t\ttype ipv4_addr\n\t\telements = { %s }\n\t}\n", strings.Join(peers, ", "))
	// Priority filter (0) runs after NAT in output, so a connection DNATed
	// to a cut-off peer is dropped too.
	for _, ch := range []struct{ name, rules string }{
		{"input", "\t\tip saddr @peers drop\n"},
		{"output", "\t\tip daddr @peers drop\n"},
		{"forward", "\t\tip saddr @peers drop\n\t\tip daddr @peers drop\n"},
	} {
		fmt.Fprintf(&b, "\tchain %s {\n\t\ttype filter hook %s priority filter; policy accept;\n%s\t}\n", ch.name, ch.name, ch.rules)
	}
	b.WriteString("}\n")
	return b.String()
}

// nftApply loads an nft script in the host's namespace from a file in the
// cluster dir, failing the test if nft rejects it.
func (h *Host) nftApply(script string) {
	t := h.c.T
	t.Helper()
	f, err := os.CreateTemp(h.c.Dir, h.Name+"-nft-*.nft")
	if err != nil {
		t.Fatalf("%s: write nft rules: %v", h.Name, err)
	}
	path := f.Name()
	defer os.Remove(path)
	_, werr := f.WriteString(script)
	cerr := f.Close()
	if werr != nil || cerr != nil {
		t.Fatalf("%s: write nft rules %s: %v %v", h.Name, filepath.Base(path), werr, cerr)
	}
	out, err := exec.Command("nsenter", "--net=/run/netns/"+h.NetNS, "--", "nft", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: nft -f: %v\n%s\nscript:\n%s", h.Name, err, out, script)
	}
}
