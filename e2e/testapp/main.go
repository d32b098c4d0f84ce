// Command testapp is the workload of Shoal's tests: a small static HTTP
// server that tells which task answered, has a switchable health endpoint
// and drains gracefully on SIGTERM. Two flag modes serve restart and
// logging tests instead:
//
//	testapp                       serve HTTP on $PORT (default 8080)
//	testapp -exit N -after D      exit with code N after duration D
//	testapp -print-lines N        print N numbered lines, alternately to
//	                              stdout and stderr, then sleep until signalled
//
// Endpoints:
//
//	GET  /            "hostname=<hostname> task=<$SHOAL_TASK_ID> slot=<$SHOAL_TASK_SLOT>\n"
//	GET  /healthz     200 "ok" or 503 "failing"
//	POST /healthz/fail, POST /healthz/ok   switch /healthz
//	GET  /delay?ms=N  answer after N milliseconds (drain tests)
//	GET  /env         the environment, one variable a line, sorted
//	GET  /udp         the datagrams received on $UDP_PORT (when set), one a
//	                  line as `<sender> "<payload>"`, the last 100
//
// Build it static (CGO_ENABLED=0): it runs in a busybox image.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// defaultPort is where the app listens without $PORT: the port the test
// image exposes.
const defaultPort = "8080"

// shutdownGrace bounds how long in-flight requests may finish after
// SIGTERM; shorter than Shoal's default stop grace period so the app exits
// 0 on its own rather than being killed.
const shutdownGrace = 10 * time.Second

// maxDelay caps /delay so a typo cannot park a connection for hours.
const maxDelay = 10 * time.Minute

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("testapp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	exitCode := fs.Int("exit", -1, "exit with this code after -after (restart tests); -1 serves HTTP")
	after := fs.Duration("after", 0, "how long to run before -exit")
	printLines := fs.Int("print-lines", -1, "print this many numbered lines, alternating stdout and stderr, then sleep")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	switch {
	case *exitCode >= 0:
		fmt.Fprintf(stdout, "will exit with code %d after %s task=%s\n", *exitCode, *after, os.Getenv("SHOAL_TASK_ID"))
		select {
		case <-time.After(*after):
			fmt.Fprintf(stdout, "exiting with code %d\n", *exitCode)
			return *exitCode
		case <-ctx.Done():
			fmt.Fprintln(stdout, "shutting down")
			return 0
		}
	case *printLines >= 0:
		for i := 1; i <= *printLines; i++ {
			w := stdout
			if i%2 == 0 {
				w = stderr
			}
			fmt.Fprintf(w, "line %d\n", i)
		}
		<-ctx.Done()
		fmt.Fprintln(stdout, "shutting down")
		return 0
	}
	return serve(ctx, stdout, stderr)
}

// serve runs the HTTP server until ctx is cancelled, then drains.
func serve(ctx context.Context, stdout, stderr io.Writer) int {
	port := os.Getenv("PORT")
	if port == "" {
		port = defaultPort
	}
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		fmt.Fprintf(stderr, "listen: %v\n", err)
		return 1
	}
	a := newApp()
	if udpPort := os.Getenv("UDP_PORT"); udpPort != "" {
		pc, err := net.ListenPacket("udp", ":"+udpPort)
		if err != nil {
			fmt.Fprintf(stderr, "listen udp: %v\n", err)
			return 1
		}
		defer pc.Close()
		fmt.Fprintf(stdout, "receiving UDP on :%d\n", pc.LocalAddr().(*net.UDPAddr).Port)
		go a.receiveUDP(pc)
	}
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 10 * time.Second}
	// The bound port, not $PORT: "0" asks for any free port (tests).
	fmt.Fprintf(stdout, "listening on :%d task=%s slot=%s\n", ln.Addr().(*net.TCPAddr).Port, os.Getenv("SHOAL_TASK_ID"), os.Getenv("SHOAL_TASK_SLOT"))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 1
	case <-ctx.Done():
	}
	fmt.Fprintln(stdout, "shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		fmt.Fprintf(stderr, "shutdown: %v\n", err)
		srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "serve: %v\n", err)
	}
	fmt.Fprintln(stdout, "stopped")
	return 0
}

// maxDatagrams bounds how many received UDP datagrams /udp remembers.
const maxDatagrams = 100

// app holds the state the endpoints share.
type app struct {
	failing atomic.Bool

	mu        sync.Mutex // guards datagrams
	datagrams []string   // received on $UDP_PORT, oldest first
	hostname  func() (string, error)
	getenv    func(string) string
	environ   func() []string
}

func newApp() *app {
	return &app{hostname: os.Hostname, getenv: os.Getenv, environ: os.Environ}
}

// receiveUDP records every datagram pc receives (as "from payload"), until
// pc is closed: tests check which packets reached the container.
func (a *app) receiveUDP(pc net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		a.mu.Lock()
		a.datagrams = append(a.datagrams, fmt.Sprintf("%s %q", from, buf[:n]))
		if len(a.datagrams) > maxDatagrams {
			a.datagrams = a.datagrams[1:]
		}
		a.mu.Unlock()
	}
}

func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		host, err := a.hostname()
		if err != nil {
			host = "unknown"
		}
		fmt.Fprintf(w, "hostname=%s task=%s slot=%s\n", host, a.getenv("SHOAL_TASK_ID"), a.getenv("SHOAL_TASK_SLOT"))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if a.failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "failing")
			return
		}
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("POST /healthz/fail", func(w http.ResponseWriter, r *http.Request) {
		a.failing.Store(true)
		io.WriteString(w, "healthz now failing\n")
	})
	mux.HandleFunc("POST /healthz/ok", func(w http.ResponseWriter, r *http.Request) {
		a.failing.Store(false)
		io.WriteString(w, "healthz now ok\n")
	})
	mux.HandleFunc("GET /delay", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 {
			http.Error(w, "ms must be a non-negative integer", http.StatusBadRequest)
			return
		}
		d := min(time.Duration(ms)*time.Millisecond, maxDelay)
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		}
		host, _ := a.hostname()
		fmt.Fprintf(w, "delayed %d ms hostname=%s task=%s\n", ms, host, a.getenv("SHOAL_TASK_ID"))
	})
	mux.HandleFunc("GET /udp", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, d := range a.datagrams {
			fmt.Fprintln(w, d)
		}
	})
	mux.HandleFunc("GET /env", func(w http.ResponseWriter, r *http.Request) {
		env := a.environ()
		sort.Strings(env)
		for _, e := range env {
			fmt.Fprintln(w, e)
		}
	})
	return mux
}
