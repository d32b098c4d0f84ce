package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/shoal-project/shoal/e2e/harness"
)

// nodeStatus reads a node's state and status message with
// `shoal node inspect` on h.
func nodeStatus(h *harness.Host, id string) (state, message string, err error) {
	out, err := h.Shoal("node", "inspect", id)
	if err != nil {
		return "", "", err
	}
	var nodes []struct {
		Status struct {
			State   string `json:"state"`
			Message string `json:"message"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		return "", "", fmt.Errorf("parse node inspect json: %w\n%s", err, out)
	}
	if len(nodes) != 1 {
		return "", "", fmt.Errorf("node inspect %s: %d nodes", id, len(nodes))
	}
	return nodes[0].Status.State, nodes[0].Status.Message, nil
}

// livenessLog returns the lines of a daemon log about a node's liveness
// (gossip events and the dispatcher marking it down), each prefixed with
// its time relative to since when it can be read.
func livenessLog(h *harness.Host, nodeID string, since time.Time) []string {
	var lines []string
	for _, l := range strings.Split(h.Log(), "\n") {
		if !strings.Contains(l, nodeID) || !(strings.Contains(l, "gossip: node") || strings.Contains(l, "node down")) {
			continue
		}
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "time=") {
			if ts, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(f[0], "time=")); err == nil {
				if ts.Before(since) {
					continue
				}
				l = fmt.Sprintf("+%.2fs %s", ts.Sub(since).Seconds(), l)
			}
		}
		lines = append(lines, l)
	}
	return lines
}
