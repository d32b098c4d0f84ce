package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shoal-project/shoal/e2e/bench"
	"github.com/shoal-project/shoal/e2e/harness"
)

const (
	// etcdClientPort and etcdPeerPort are etcd's registered ports; each
	// member has its own namespace and address, so they never collide.
	etcdClientPort = 2379
	etcdPeerPort   = 2380
	// etcdStartTimeout bounds waiting for all three members to report
	// healthy; an election on the shared 2 cores takes a few seconds.
	etcdStartTimeout = 30 * time.Second
	// etcdStopTimeout is how long a member gets to exit on SIGTERM before
	// it is killed.
	etcdStopTimeout = 10 * time.Second
	// etcdValueSize is the value written per put: about the size of a
	// small service or task record, so the figure is not a zero-byte one.
	etcdValueSize = 256
	// etcdRequestTimeout bounds one put; a put stuck that long means the
	// cluster lost quorum, and the benchmark should fail, not hang.
	etcdRequestTimeout = 10 * time.Second
	// etcdSystem names the system and client path in the printed table:
	// JSON over HTTP/1.1 through etcd's grpc-gateway, not the Go gRPC
	// client (which would add go.etcd.io/etcd/client/v3 to go.mod), so
	// each write also pays a JSON encode/decode and the gateway's
	// loopback gRPC hop inside etcd.
	etcdSystem = "etcd 3.4 (HTTP/JSON gateway)"
)

// etcdMember is one etcd process on a simulated host.
type etcdMember struct {
	host   *harness.Host
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
}

func (m *etcdMember) clientURL() string {
	return fmt.Sprintf("http://%s:%d", m.host.Addr, etcdClientPort)
}

// BenchmarkEtcdWrites is the baseline for Shoal's write benchmark: a
// 3-member etcd (Debian's etcd-server), one member per simulated host,
// measured with bench.LowConcurrency and bench.HighConcurrency clients
// for bench.DefaultDuration each. Every write is a put of a fresh key.
// Clients run in the leader's host namespace and send to the leader, as a
// CLI on the leader host would; connections are kept alive.
//
// Each sub-benchmark measures once for a fixed duration, whatever b.N:
// run it with -benchtime 1x.
func BenchmarkEtcdWrites(b *testing.B) {
	if _, err := exec.LookPath("etcd"); err != nil {
		b.Skip("needs etcd on PATH (make deps installs Debian's etcd-server)")
	}
	c := harness.New(b, 3)
	members := startEtcd(b, c)

	ctx := b.Context()
	leader, err := etcdLeader(ctx, members)
	if err != nil {
		b.Fatalf("find etcd leader: %v", err)
	}
	dialer, err := bench.NewNetNSDialer("/run/netns/" + leader.host.NetNS)
	if err != nil {
		b.Fatal(err)
	}
	client := &http.Client{
		Timeout: etcdRequestTimeout,
		Transport: &http.Transport{
			DialContext: dialer.DialContext,
			// One kept-alive connection per benchmark client.
			MaxIdleConnsPerHost: bench.HighConcurrency,
		},
	}
	b.Cleanup(client.CloseIdleConnections)

	value := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("v"), etcdValueSize))
	concurrency := []int{bench.LowConcurrency, bench.HighConcurrency}
	// One row per client count; a sub-benchmark run again (a longer
	// -benchtime) replaces its row.
	rows := make([]bench.Row, len(concurrency))
	for i, clients := range concurrency {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			put := func(ctx context.Context, cl, seq int) error {
				key := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "/bench/%d/%d/%d", clients, cl, seq))
				return etcdPut(ctx, client, leader.clientURL(), key, value)
			}
			b.ResetTimer()
			res, err := bench.Measure(b.Context(), clients, bench.DefaultDuration, put)
			b.StopTimer()
			if err != nil {
				b.Fatalf("measure etcd writes with %d clients: %v", clients, err)
			}
			b.ReportMetric(res.OpsPerSec(), "writes/s")
			b.ReportMetric(float64(res.P50)/float64(time.Millisecond), "p50-ms")
			b.ReportMetric(float64(res.P99)/float64(time.Millisecond), "p99-ms")
			rows[i] = bench.Row{System: etcdSystem, Result: res}
			if i == len(concurrency)-1 {
				// Logged by the last leaf: only a leaf benchmark's log is
				// printed without -v.
				b.Log("\n" + strings.TrimSuffix(bench.Table(rows), "\n"))
			}
		})
	}
}

// startEtcd starts one member per host, in the host's namespace, listening
// on its underlay address, and waits until all report healthy. Members are
// stopped by PID when the benchmark ends.
func startEtcd(b *testing.B, c *harness.Cluster) []*etcdMember {
	b.Helper()
	var initial []string
	for _, h := range c.Hosts {
		initial = append(initial, fmt.Sprintf("%s=http://%s:%d", h.Name, h.Addr, etcdPeerPort))
	}
	dataRoot := b.TempDir()
	var members []*etcdMember
	for _, h := range c.Hosts {
		m := &etcdMember{host: h, log: filepath.Join(dataRoot, h.Name+".log")}
		logf, err := os.Create(m.log)
		if err != nil {
			b.Fatal(err)
		}
		peer := fmt.Sprintf("http://%s:%d", h.Addr, etcdPeerPort)
		m.cmd = exec.Command("nsenter", "--net=/run/netns/"+h.NetNS, "--", "etcd",
			"--name", h.Name,
			"--data-dir", filepath.Join(dataRoot, h.Name),
			"--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer,
			"--listen-client-urls", m.clientURL(),
			"--advertise-client-urls", m.clientURL(),
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-token", c.Prefix,
			"--initial-cluster-state", "new",
			"--logger", "zap", "--log-outputs", "stderr",
		)
		m.cmd.Stdout, m.cmd.Stderr = logf, logf
		// nsenter execs etcd, so the PID is etcd's; its own process group
		// keeps a terminal's signals from reaching it mid-benchmark.
		m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := m.cmd.Start(); err != nil {
			logf.Close()
			b.Fatalf("%s: start etcd: %v", h.Name, err)
		}
		m.exited = make(chan struct{})
		go func() {
			_ = m.cmd.Wait()
			logf.Close()
			close(m.exited)
		}()
		b.Cleanup(m.stop)
		members = append(members, m)
	}

	deadline := time.Now().Add(etcdStartTimeout)
	for _, m := range members {
		for {
			err := etcdHealthy(b.Context(), m)
			if err == nil {
				break
			}
			select {
			case <-m.exited:
				b.Fatalf("%s: etcd exited at start:\n%s", m.host.Name, m.logTail())
			default:
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s: etcd not healthy within %s: %v\n%s", m.host.Name, etcdStartTimeout, err, m.logTail())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return members
}

// stop ends the member with SIGTERM, then SIGKILL, by the PID we started.
func (m *etcdMember) stop() {
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.exited:
	case <-time.After(etcdStopTimeout):
		_ = m.cmd.Process.Kill()
		<-m.exited
	}
}

// logTail returns the end of the member's log for failure messages.
func (m *etcdMember) logTail() string {
	const tailBytes = 4000 // enough for the last few zap lines
	data, _ := os.ReadFile(m.log)
	if len(data) > tailBytes {
		data = data[len(data)-tailBytes:]
	}
	return string(data)
}

// etcdHealthy asks the member itself (from inside its namespace, with
// curl) whether it is part of a cluster with a leader.
func etcdHealthy(ctx context.Context, m *etcdMember) error {
	out, err := m.host.Exec("curl", "-sS", "--max-time", "2", m.clientURL()+"/health")
	if err != nil {
		return err
	}
	var health struct {
		Health string `json:"health"`
	}
	if err := json.Unmarshal([]byte(out), &health); err != nil {
		return fmt.Errorf("parse /health %q: %w", out, err)
	}
	if health.Health != "true" {
		return fmt.Errorf("/health = %q", out)
	}
	return ctx.Err()
}

// etcdLeader returns the member that reports itself as leader.
func etcdLeader(ctx context.Context, members []*etcdMember) (*etcdMember, error) {
	for _, m := range members {
		// The gateway encodes uint64 fields as JSON strings.
		out, err := m.host.Exec("curl", "-sS", "--fail", "--max-time", "5",
			"-X", "POST", "-d", "{}", m.clientURL()+"/v3/maintenance/status")
		if err != nil {
			return nil, err
		}
		var st struct {
			Header struct {
				MemberID string `json:"member_id"`
			} `json:"header"`
			Leader string `json:"leader"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return nil, fmt.Errorf("%s: parse status %q: %w", m.host.Name, out, err)
		}
		if st.Leader != "" && st.Leader == st.Header.MemberID {
			return m, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("no member reports itself leader")
}

// etcdPut writes key=value (both base64, as the gateway wants) and returns
// once etcd answers, i.e. once the write is committed by a quorum.
func etcdPut(ctx context.Context, client *http.Client, url, key, value string) error {
	body := fmt.Sprintf(`{"key":%q,"value":%q}`, key, value)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v3/kv/put", strings.NewReader(body))
	if err != nil {
		return fmt.Errorf("put: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("put: %w", err)
	}
	defer resp.Body.Close()
	// Read to the end so the connection is reused.
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("put: read response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("put: %s: %s", resp.Status, data)
	}
	var r struct {
		Header struct {
			Revision string `json:"revision"`
		} `json:"header"`
	}
	if err := json.Unmarshal(data, &r); err != nil || r.Header.Revision == "" {
		return fmt.Errorf("put: unexpected response %q (%v)", data, err)
	}
	return nil
}
