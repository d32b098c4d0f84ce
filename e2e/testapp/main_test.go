package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// childEnv makes the test binary run the app itself (see TestMain), so the
// process tests need no separate build.
const childEnv = "TESTAPP_RUN_AS_APP"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func TestHandler(t *testing.T) {
	a := &app{
		hostname: func() (string, error) { return "box1", nil },
		getenv: func(k string) string {
			return map[string]string{"SHOAL_TASK_ID": "t123", "SHOAL_TASK_SLOT": "2"}[k]
		},
		environ: func() []string { return []string{"B=2", "A=1"} },
	}
	srv := httptest.NewServer(a.handler())
	t.Cleanup(srv.Close)

	// Steps run in order: the health switch is state.
	steps := []struct {
		name, method, path string
		wantCode           int
		wantBody           string
	}{
		{"identity", "GET", "/", 200, "hostname=box1 task=t123 slot=2\n"},
		{"healthy", "GET", "/healthz", 200, "ok"},
		{"switch to failing", "POST", "/healthz/fail", 200, "healthz now failing\n"},
		{"failing", "GET", "/healthz", 503, "failing"},
		{"still serves while failing", "GET", "/", 200, "hostname=box1 task=t123 slot=2\n"},
		{"switch back", "POST", "/healthz/ok", 200, "healthz now ok\n"},
		{"healthy again", "GET", "/healthz", 200, "ok"},
		{"environment sorted", "GET", "/env", 200, "A=1\nB=2\n"},
		{"delay", "GET", "/delay?ms=20", 200, "delayed 20 ms hostname=box1 task=t123\n"},
		{"bad delay", "GET", "/delay?ms=soon", 400, "ms must be a non-negative integer\n"},
		{"switch needs POST", "GET", "/healthz/fail", 405, "Method Not Allowed\n"},
		{"unknown path", "GET", "/nope", 404, "404 page not found\n"},
	}
	for _, st := range steps {
		req, err := http.NewRequest(st.method, srv.URL+st.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != st.wantCode || string(body) != st.wantBody {
			t.Errorf("%s: %s %s = %d %q, want %d %q", st.name, st.method, st.path, resp.StatusCode, body, st.wantCode, st.wantBody)
		}
	}
}

// startApp runs the app as a child process with the given arguments.
func startApp(t *testing.T, env []string, args ...string) (cmd *exec.Cmd, stdout, stderr *bufio.Reader) {
	t.Helper()
	cmd = exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), childEnv+"=1"), env...)
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, bufio.NewReader(outPipe), bufio.NewReader(errPipe)
}

// waitExit waits for the child, bounded so a hung app fails the test.
func waitExit(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
		return 0
	case <-time.After(30 * time.Second):
		t.Fatal("app did not exit")
		return -1
	}
}

func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	cmd, stdout, _ := startApp(t, []string{"PORT=0", "SHOAL_TASK_ID=t9"})
	line, err := stdout.ReadString('\n')
	if err != nil {
		t.Fatalf("read start line: %v", err)
	}
	m := regexp.MustCompile(`^listening on :(\d+) task=t9 `).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("start line %q, want \"listening on :<port> task=t9 ...\"", line)
	}
	base := "http://127.0.0.1:" + m[1]

	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := http.Get(base + "/delay?ms=700")
		if err != nil {
			res <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		res <- result{resp.StatusCode, string(b), err}
	}()
	time.Sleep(200 * time.Millisecond) // let the request reach the handler
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil || r.code != 200 || !strings.HasPrefix(r.body, "delayed 700 ms") {
		t.Errorf("in-flight request during shutdown = %d %q, %v; want it answered", r.code, r.body, r.err)
	}
	rest, _ := io.ReadAll(stdout)
	if code := waitExit(t, cmd); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if !strings.Contains(string(rest), "shutting down") {
		t.Errorf("stdout after start %q lacks \"shutting down\"", rest)
	}
}

func TestFlagModes(t *testing.T) {
	t.Run("exit after", func(t *testing.T) {
		cmd, _, _ := startApp(t, nil, "-exit", "3", "-after", "50ms")
		if code := waitExit(t, cmd); code != 3 {
			t.Errorf("exit code %d, want 3", code)
		}
	})
	t.Run("print lines", func(t *testing.T) {
		cmd, stdout, stderr := startApp(t, nil, "-print-lines", "4")
		for _, want := range []struct {
			r    *bufio.Reader
			line string
		}{{stdout, "line 1\n"}, {stderr, "line 2\n"}, {stdout, "line 3\n"}, {stderr, "line 4\n"}} {
			if got, err := want.r.ReadString('\n'); err != nil || got != want.line {
				t.Fatalf("read %q, %v; want %q", got, err, want.line)
			}
		}
		// It keeps running after the lines, until told to stop.
		time.Sleep(100 * time.Millisecond)
		if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
			t.Fatalf("app exited after printing: %v", err)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		io.ReadAll(stdout)
		if code := waitExit(t, cmd); code != 0 {
			t.Errorf("exit code %d after SIGTERM, want 0", code)
		}
	})
}

// With $UDP_PORT the app records the datagrams it receives; /udp lists them.
func TestUDPDatagramsListed(t *testing.T) {
	a := newApp()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go a.receiveUDP(pc)
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := httptest.NewServer(a.handler())
	t.Cleanup(srv.Close)
	want := fmt.Sprintf("%s %q\n", c.LocalAddr(), "marker-1")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := c.Write([]byte("marker-1")); err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get(srv.URL + "/udp")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.HasPrefix(string(body), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/udp = %q, want it to start with %q", body, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
