package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

const (
	// registryBinary is where Debian's docker-registry package (make deps)
	// installs the distribution registry.
	registryBinary = "/usr/bin/docker-registry"
	// registryPort is the registry's usual port.
	registryPort = 5000
	// registryStartTimeout bounds how long the registry may take to answer
	// GET /v2/; it starts in well under a second here.
	registryStartTimeout = 20 * time.Second
	// registryStopTimeout is how long Close waits after SIGTERM before
	// SIGKILL.
	registryStopTimeout = 5 * time.Second
	// pushTimeout bounds one PushImage; the test images are a few MB.
	pushTimeout = 2 * time.Minute
)

// registry is the cluster's image registry on the underlay.
type registry struct {
	netNS   string
	addr    netip.Addr
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd has been waited for
}

// hostPort is where the registry listens, "<addr>:5000".
func (r *registry) hostPort() string {
	return netip.AddrPortFrom(r.addr, registryPort).String()
}

// StartRegistry starts Debian's docker-registry in a namespace of its own
// ("<prefix>-reg") plugged into the switch bridge with the next free
// underlay address, storing blobs under the cluster dir, without auth or
// TLS, logging to reg.log in the cluster dir. It waits until GET /v2/
// answers from inside that namespace and returns "<addr>:5000", reachable
// only from the cluster's namespaces (daemons must treat it as an insecure
// registry). Calling it again returns the running registry. Close stops it
// by PID and removes its namespace.
func (c *Cluster) StartRegistry() string {
	c.T.Helper()
	if c.reg != nil {
		return c.reg.hostPort()
	}
	if _, err := os.Stat(registryBinary); err != nil {
		c.T.Skipf("needs %s (make deps installs docker-registry): %v", registryBinary, err)
	}
	under := netip.MustParsePrefix(underlayPrefix)
	addr := under.Addr().Next()
	if n := len(c.Hosts); n > 0 {
		addr = c.Hosts[n-1].Addr.Next()
	}
	r := &registry{
		netNS:   c.Prefix + "-reg",
		addr:    addr,
		logPath: filepath.Join(c.Dir, "reg.log"),
	}
	// Recorded before the namespace exists so Close removes whatever part
	// of it was made if a step below fails the test.
	c.reg = r
	c.must("ip", "netns", "add", r.netNS)
	c.must("ip", "-n", r.netNS, "link", "set", "lo", "up")
	c.must("ip", "-n", c.swNS, "link", "add", "preg", "type", "veth", "peer", "name", "eth0", "netns", r.netNS)
	c.must("ip", "-n", c.swNS, "link", "set", "preg", "master", "br0", "up")
	c.must("ip", "-n", r.netNS, "addr", "add", fmt.Sprintf("%s/%d", r.addr, under.Bits()), "dev", "eth0")
	c.must("ip", "-n", r.netNS, "link", "set", "eth0", "up")

	storage := filepath.Join(c.Dir, "registry")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		c.T.Fatalf("registry storage: %v", err)
	}
	config := filepath.Join(c.Dir, "registry.yml")
	if err := os.WriteFile(config, []byte(registryConfig(storage, r.hostPort())), 0o644); err != nil {
		c.T.Fatalf("registry config: %v", err)
	}
	logf, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.T.Fatalf("registry log: %v", err)
	}
	// nsenter with only --net execs the registry in place, so the PID
	// recorded is the registry's own.
	cmd := exec.Command("nsenter", "--net=/run/netns/"+r.netNS, "--", registryBinary, "serve", config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		c.T.Fatalf("start registry: %v", err)
	}
	r.cmd = cmd
	r.exited = make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(r.exited)
	}()

	url := "http://" + r.hostPort() + "/v2/"
	deadline := time.Now().Add(registryStartTimeout)
	for {
		out, err := exec.Command("nsenter", "--net=/run/netns/"+r.netNS, "--",
			"curl", "-sS", "--fail", "--max-time", "2", url).CombinedOutput()
		if err == nil {
			return r.hostPort()
		}
		if time.Now().After(deadline) {
			c.T.Fatalf("registry did not answer %s within %s: %v %s\n%s", url, registryStartTimeout, err, out, c.RegistryLog())
		}
		select {
		case <-r.exited:
			c.T.Fatalf("registry exited at start:\n%s", c.RegistryLog())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// registryConfig is a docker-registry configuration: filesystem storage,
// plain HTTP on hostPort, no auth section (so no auth), text logs.
func registryConfig(storage, hostPort string) string {
	return fmt.Sprintf(`version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, storage, hostPort)
}

// RegistryLog returns the registry's log, or "" if none was started.
func (c *Cluster) RegistryLog() string {
	if c.reg == nil {
		return ""
	}
	b, _ := os.ReadFile(c.reg.logPath)
	return string(b)
}

// PushImage pushes the image in a docker-save archive (such as
// testapp.tar from Images) to the cluster's registry as ref, a repository
// and tag relative to the registry ("shoal/testapp:latest"), and returns
// the full reference ("<addr>:5000/shoal/testapp:latest"). The archive must
// hold one image. StartRegistry must have been called. The push runs in
// this process, but every connection it opens is made from the registry's
// namespace, the only place the address exists.
func (c *Cluster) PushImage(archive, ref string) string {
	c.T.Helper()
	if c.reg == nil {
		c.T.Fatalf("push %s: StartRegistry was not called", ref)
	}
	full := c.reg.hostPort() + "/" + ref
	dst, err := name.ParseReference(full, name.Insecure)
	if err != nil {
		c.T.Fatalf("push: parse reference %s: %v", full, err)
	}
	img, err := tarball.ImageFromPath(archive, nil)
	if err != nil {
		img, err = ociArchiveImage(c.T.TempDir(), archive)
	}
	if err != nil {
		c.T.Fatalf("push %s: read archive %s (docker-save or OCI layout): %v", ref, archive, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pushTimeout)
	defer cancel()
	// No Proxy: the registry exists only inside the test's namespaces.
	tr := &http.Transport{DialContext: netnsDialer("/run/netns/" + c.reg.netNS)}
	defer tr.CloseIdleConnections()
	if err := remote.Write(dst, img, remote.WithContext(ctx), remote.WithTransport(tr)); err != nil {
		c.T.Fatalf("push %s to %s: %v\nregistry log:\n%s", archive, full, err, c.RegistryLog())
	}
	return dst.String()
}

// ociArchiveImage unpacks an OCI layout tar (such as busybox.oci.tar) into
// dir and returns its one image.
func ociArchiveImage(dir, archive string) (v1.Image, error) {
	out, err := exec.Command("tar", "-xf", archive, "-C", dir).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("unpack: %w: %s", err, out)
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, err
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}
	if len(m.Manifests) != 1 {
		return nil, fmt.Errorf("OCI layout holds %d manifests, want 1", len(m.Manifests))
	}
	return idx.Image(m.Manifests[0].Digest)
}

// netnsDialer returns a DialContext that opens each connection from inside
// the network namespace at nsPath. The socket is created by a goroutine
// locked to an OS thread that has entered the namespace; that goroutine
// exits without unlocking, so the runtime discards the thread instead of
// reusing it for other goroutines in the wrong namespace. A socket keeps
// the namespace it was created in, so it may be used from any thread.
func netnsDialer(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			conn net.Conn
			err  error
		}
		done := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			// No UnlockOSThread: this thread's namespace is changed for good.
			fd, err := unix.Open(nsPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				done <- result{err: fmt.Errorf("open %s: %w", nsPath, err)}
				return
			}
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
			if err != nil {
				done <- result{err: fmt.Errorf("enter %s: %w", nsPath, err)}
				return
			}
			// A single literal address: the dialer connects from this
			// goroutine, with no resolver and no racing helper goroutines.
			var d net.Dialer
			conn, err := d.DialContext(ctx, network, addr)
			done <- result{conn, err}
		}()
		select {
		case r := <-done:
			return r.conn, r.err
		case <-ctx.Done():
			// The dial goroutine sees the same ctx and returns soon; close
			// whatever it may still hand over.
			go func() {
				if r := <-done; r.conn != nil {
					r.conn.Close()
				}
			}()
			return nil, ctx.Err()
		}
	}
}

// stopRegistry stops the registry by its PID (SIGTERM, then SIGKILL) and
// removes its namespace. Safe to call more than once.
func (c *Cluster) stopRegistry() {
	r := c.reg
	if r == nil {
		return
	}
	if r.cmd != nil {
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.exited:
		case <-time.After(registryStopTimeout):
			_ = r.cmd.Process.Signal(syscall.SIGKILL)
			<-r.exited
		}
		r.cmd = nil
	}
	_ = exec.Command("ip", "netns", "del", r.netNS).Run()
}

// RegistryPID is the registry's process ID, or 0 if it is not running.
func (c *Cluster) RegistryPID() int {
	if c.reg == nil || c.reg.cmd == nil {
		return 0
	}
	return c.reg.cmd.Process.Pid
}
