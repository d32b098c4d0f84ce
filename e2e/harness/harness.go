// Package harness runs real Shoal binaries on simulated hosts for the
// end-to-end tests: one network namespace per host, joined by a bridge
// that lives in a namespace of its own (the "switch"), so nothing of the
// machine's own network is touched and nothing routes out.
//
// Every namespace, link, cgroup and directory a cluster makes carries a
// prefix unique to the run, and Close (registered with t.Cleanup) removes
// them even when the test fails. Processes are stopped by the PIDs the
// harness started or recorded.
package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// underlayPrefix is the simulated hosts' network. It exists only inside
// the test's own namespaces.
const underlayPrefix = "192.168.240.0/24"

// daemonStartTimeout bounds how long a daemon may take to open its socket.
const daemonStartTimeout = 20 * time.Second

// Cluster is a set of simulated hosts.
type Cluster struct {
	T      testing.TB
	Prefix string // unique to the run: names of namespaces, links, cgroups
	Dir    string
	Bin    string // directory with shoal and shoald
	Hosts  []*Host
	swNS   string
	reg    *registry // started by StartRegistry; nil until then
	// extraNS are the namespaces NewNetNS made, removed by Close.
	extraNS []string
}

// Host is one simulated host.
type Host struct {
	c            *Cluster
	Name         string
	NetNS        string // name under /run/netns
	Addr         netip.Addr
	DataDir      string
	RunDir       string
	CgroupParent string
	LogPath      string
	cmd          *exec.Cmd
	exited       chan struct{}
	args         []string // extra daemon arguments of the last Start, reused by Restart
}

// Requirements skips the test unless it can run real hosts here.
func Requirements(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: simulated hosts are network namespaces and containers run with runc")
	}
	for _, tool := range []string{"ip", "nsenter", "runc", "nft", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s on PATH (make deps installs it)", tool)
		}
	}
}

// Binaries returns the directory holding shoal and shoald: $SHOAL_BIN, or
// a fresh build into a temp dir.
func Binaries(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("SHOAL_BIN"); dir != "" {
		return dir
	}
	dir := t.TempDir()
	root := moduleRoot(t)
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/shoal", "./cmd/shoald")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build binaries: %v\n%s", err, out)
	}
	return dir
}

// Images returns the directory holding the test image archives: $SHOAL_IMAGES,
// or a fresh `mkimages` run into a temp dir.
func Images(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("SHOAL_IMAGES"); dir != "" {
		return dir
	}
	dir := t.TempDir()
	cmd := exec.Command("go", "run", "./e2e/cmd/mkimages", "-out", dir)
	cmd.Dir = moduleRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build test images: %v\n%s", err, out)
	}
	return dir
}

func moduleRoot(t testing.TB) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("find module root: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// New creates n hosts on a fresh underlay; daemons are not started yet.
func New(t testing.TB, n int) *Cluster {
	t.Helper()
	Requirements(t)
	bin := Binaries(t)
	var b [3]byte
	_, _ = rand.Read(b[:])
	prefix := "she" + hex.EncodeToString(b[:])
	dir, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{T: t, Prefix: prefix, Dir: dir, Bin: bin, swNS: prefix + "-sw"}
	t.Cleanup(c.Close)

	under := netip.MustParsePrefix(underlayPrefix)
	c.must("ip", "netns", "add", c.swNS)
	c.must("ip", "-n", c.swNS, "link", "set", "lo", "up")
	c.must("ip", "-n", c.swNS, "link", "add", "br0", "type", "bridge")
	c.must("ip", "-n", c.swNS, "link", "set", "br0", "up")
	addr := under.Addr().Next()
	for i := 1; i <= n; i++ {
		h := &Host{
			c:            c,
			Name:         fmt.Sprintf("h%d", i),
			NetNS:        fmt.Sprintf("%s-h%d", prefix, i),
			Addr:         addr,
			DataDir:      filepath.Join(dir, fmt.Sprintf("h%d", i), "data"),
			RunDir:       filepath.Join(dir, fmt.Sprintf("h%d", i), "run"),
			CgroupParent: fmt.Sprintf("/%s-h%d", prefix, i),
			LogPath:      filepath.Join(dir, fmt.Sprintf("h%d.log", i)),
		}
		addr = addr.Next()
		c.must("ip", "netns", "add", h.NetNS)
		c.must("ip", "-n", h.NetNS, "link", "set", "lo", "up")
		// The host end is created in the switch namespace and moved, so the
		// machine's own namespace never holds one of these links.
		c.must("ip", "-n", c.swNS, "link", "add", "p"+h.Name, "type", "veth", "peer", "name", "eth0", "netns", h.NetNS)
		c.must("ip", "-n", c.swNS, "link", "set", "p"+h.Name, "master", "br0", "up")
		c.must("ip", "-n", h.NetNS, "addr", "add", fmt.Sprintf("%s/%d", h.Addr, under.Bits()), "dev", "eth0")
		c.must("ip", "-n", h.NetNS, "link", "set", "eth0", "up")
		c.Hosts = append(c.Hosts, h)
	}
	return c
}

func (c *Cluster) must(args ...string) {
	c.T.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		c.T.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Socket is the host's CLI socket.
func (h *Host) Socket() string { return filepath.Join(h.RunDir, "shoal.sock") }

// Start starts the host's shoald and waits for its socket.
func (h *Host) Start(extraArgs ...string) {
	t := h.c.T
	t.Helper()
	if h.cmd != nil {
		t.Fatalf("%s: shoald already running", h.Name)
	}
	logf, err := os.OpenFile(h.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--net=/run/netns/" + h.NetNS, "--",
		filepath.Join(h.c.Bin, "shoald"),
		"--data-dir", h.DataDir, "--run-dir", h.RunDir,
		"--cgroup-parent", h.CgroupParent,
		"--advertise-addr", h.Addr.String(),
		"--log-level", "debug",
	}, extraArgs...)
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("%s: start shoald: %v", h.Name, err)
	}
	h.cmd = cmd
	h.args = append([]string(nil), extraArgs...)
	h.exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(h.exited)
	}()
	deadline := time.Now().Add(daemonStartTimeout)
	for time.Now().Before(deadline) {
		if _, err := h.Shoal("info"); err == nil {
			return
		}
		select {
		case <-h.exited:
			t.Fatalf("%s: shoald exited at start:\n%s", h.Name, h.Log())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%s: shoald did not open its socket within %s:\n%s", h.Name, daemonStartTimeout, h.Log())
}

// StartExpectFailure starts shoald and returns its output once it exits;
// it fails the test if the daemon is still running after timeout.
func (h *Host) StartExpectFailure(timeout time.Duration) string {
	t := h.c.T
	t.Helper()
	cmd := exec.Command("nsenter", "--net=/run/netns/"+h.NetNS, "--",
		filepath.Join(h.c.Bin, "shoald"), "--data-dir", h.DataDir, "--run-dir", h.RunDir,
		"--cgroup-parent", h.CgroupParent)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("%s: shoald exited 0, expected a failure:\n%s", h.Name, out.String())
		}
		return out.String()
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%s: shoald still running after %s, expected it to refuse to start:\n%s", h.Name, timeout, out.String())
		return ""
	}
}

// Kill kills the host's shoald with SIGKILL (containers keep running).
func (h *Host) Kill() {
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Signal(syscall.SIGKILL)
	<-h.exited
	h.cmd = nil
}

// Stop stops the host's shoald with SIGTERM (containers keep running).
func (h *Host) Stop() {
	if h.cmd == nil {
		return
	}
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(15 * time.Second):
		_ = h.cmd.Process.Signal(syscall.SIGKILL)
		<-h.exited
	}
	h.cmd = nil
}

// Log returns the host's daemon log.
func (h *Host) Log() string {
	b, _ := os.ReadFile(h.LogPath)
	return string(b)
}

// Shoal runs the CLI against this host's socket and returns its stdout;
// the error carries stderr.
func (h *Host) Shoal(args ...string) (string, error) {
	return h.ShoalContext(context.Background(), args...)
}

// ShoalContext is Shoal with a context.
func (h *Host) ShoalContext(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(h.c.Bin, "shoal"), append([]string{"--host", "unix://" + h.Socket()}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("shoal %s: %w: %s%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String(), nil
}

// ShoalOutput runs the CLI and returns stdout and stderr separately, for
// checks of warnings printed on success.
func (h *Host) ShoalOutput(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(filepath.Join(h.c.Bin, "shoal"), append([]string{"--host", "unix://" + h.Socket()}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// MustShoal runs the CLI and fails the test on error.
func (h *Host) MustShoal(args ...string) string {
	h.c.T.Helper()
	out, err := h.Shoal(args...)
	if err != nil {
		h.c.T.Fatalf("%s: %v", h.Name, err)
	}
	return out
}

// Exec runs a command inside the host's network namespace.
func (h *Host) Exec(args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.NetNS, "--"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// HTTPGet fetches url from inside the host's network namespace.
func (h *Host) HTTPGet(url string) (string, error) {
	return h.Exec("curl", "-sS", "--fail", "--max-time", "5", url)
}

// RuncCmd returns a runc command against the host's runc root, not started.
func (h *Host) RuncCmd(args ...string) *exec.Cmd {
	return exec.Command("runc", append([]string{"--root", filepath.Join(h.RunDir, "runc")}, args...)...)
}

// Runc runs runc against the host's runc root.
func (h *Host) Runc(args ...string) (string, error) {
	cmd := exec.Command("runc", append([]string{"--root", filepath.Join(h.RunDir, "runc")}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("runc %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Eventually polls cond every interval until it returns nil or timeout
// passes, then fails the test with cond's last error.
func (c *Cluster) Eventually(timeout time.Duration, what string, cond func() error) {
	c.T.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.T.Fatalf("%s: not true within %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Dial connects (or, for UDP, binds and aims) a socket from inside the
// host's network namespace, as a process on that host would.
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return netnsDialer("/run/netns/"+h.NetNS)(ctx, network, addr)
}

// NewNetNS makes an empty network namespace of the test's own (lo up),
// named with the run's prefix and removed by Close, and returns its path:
// a namespace no Shoal service runs, as `ip netns add` makes one.
func (c *Cluster) NewNetNS(name string) string {
	c.T.Helper()
	ns := c.Prefix + "-" + name
	c.must("ip", "netns", "add", ns)
	c.extraNS = append(c.extraNS, ns)
	c.must("ip", "-n", ns, "link", "set", "lo", "up")
	return "/run/netns/" + ns
}

// DialFrom connects (or, for UDP, binds and aims) a socket from inside
// the network namespace at nsPath.
func DialFrom(ctx context.Context, nsPath, network, addr string) (net.Conn, error) {
	return netnsDialer(nsPath)(ctx, network, addr)
}
