package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// cliResult is what one run of the CLI produced.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs the CLI against host with stdin, bounded so that a hang fails
// the test instead of stalling it.
func runCLI(t *testing.T, host string, stdin io.Reader, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	getenv := func(k string) string {
		if k == envHost {
			return host
		}
		return ""
	}
	code := run(ctx, args, getenv, stdin, &out, &errOut)
	return cliResult{code: code, stdout: out.String(), stderr: errOut.String()}
}

func TestUsageAndDaemonErrors(t *testing.T) {
	// No daemon listens here: commands that validate first must never get
	// as far as dialling.
	missing := filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr []string
	}{
		{
			name:     "negative replicas",
			args:     []string{"service", "create", "--replicas", "-1", "img"},
			wantCode: exitUsage,
			wantStderr: []string{
				"Error: --replicas must be 0 or more, got -1\n",
				"Usage:  shoal service create [flags] IMAGE [ARG...]",
				"Run 'shoal service create --help' for more information.",
			},
		},
		{
			name:       "replicas with global",
			args:       []string{"service", "create", "--mode", "global", "--replicas", "2", "img"},
			wantCode:   exitUsage,
			wantStderr: []string{"Error: --replicas cannot be used with --mode global"},
		},
		{
			name:       "env without value",
			args:       []string{"service", "create", "--env", "FOO", "img"},
			wantCode:   exitUsage,
			wantStderr: []string{`Error: --env "FOO" must be KEY=VALUE`},
		},
		{
			name:       "replicas not a number",
			args:       []string{"service", "create", "--replicas", "three", "img"},
			wantCode:   exitUsage,
			wantStderr: []string{`invalid argument "three" for "--replicas" flag`},
		},
		{
			name:       "unknown flag",
			args:       []string{"service", "create", "--bogus", "img"},
			wantCode:   exitUsage,
			wantStderr: []string{"Error: unknown flag: --bogus"},
		},
		{
			name:       "missing image",
			args:       []string{"service", "create"},
			wantCode:   exitUsage,
			wantStderr: []string{`Error: "shoal service create" requires at least 1 argument (IMAGE)`},
		},
		{
			name:       "bad scale argument",
			args:       []string{"service", "scale", "web=3", "web=x"},
			wantCode:   exitUsage,
			wantStderr: []string{`Error: scale: "web=x": expected SERVICE=REPLICAS`},
		},
		{
			name:       "bad availability",
			args:       []string{"node", "update", "--availability", "off", "n1"},
			wantCode:   exitUsage,
			wantStderr: []string{`Error: --availability must be active, pause or drain, got "off"`},
		},
		{
			name:       "node update with nothing to change",
			args:       []string{"node", "update", "n1"},
			wantCode:   exitUsage,
			wantStderr: []string{"Error: nothing to change"},
		},
		{
			name:       "bad label",
			args:       []string{"node", "update", "--label-add", "zone", "n1"},
			wantCode:   exitUsage,
			wantStderr: []string{`Error: --label-add "zone" must be KEY=VALUE`},
		},
		{
			name:       "mistyped command",
			args:       []string{"serivce", "ls"},
			wantCode:   exitUsage,
			wantStderr: []string{`Error: unknown command "serivce" for "shoal"; did you mean service?`, "Usage:  shoal COMMAND"},
		},
		{
			name:       "unknown subcommand",
			args:       []string{"node", "frob"},
			wantCode:   exitUsage,
			wantStderr: []string{`Error: unknown command "frob" for "shoal node"`},
		},
		{
			name:       "bad format",
			args:       []string{"service", "ls", "--format", "yaml"},
			wantCode:   exitUsage,
			wantStderr: []string{`Error: --format must be table or json, got "yaml"`},
		},
		{
			name:       "tcp host without credentials",
			args:       []string{"--host", "tcp://manager:4242", "--tls-dir", "/nonexistent", "node", "ls"},
			wantCode:   exitFailure,
			wantStderr: []string{"load TLS credentials from /nonexistent (set --tls-dir)"},
		},
		{
			name:       "unknown host scheme",
			args:       []string{"--host", "ftp://manager", "node", "ls"},
			wantCode:   exitUsage,
			wantStderr: []string{`--host "ftp://manager": expected unix:///path/to/shoal.sock, a socket path, or tcp://MANAGER:PORT`},
		},
		{
			name:       "daemon not running",
			args:       []string{"node", "ls"},
			wantCode:   exitFailure,
			wantStderr: []string{"Error: cannot reach shoald at " + missing + ": is the daemon running? (set --host or SHOAL_HOST)\n"},
		},
		{
			name:       "daemon not running, --host as a unix URL",
			args:       []string{"--host", "unix://" + missing, "service", "ls"},
			wantCode:   exitFailure,
			wantStderr: []string{"Error: cannot reach shoald at " + missing + ":"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, missing, nil, tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("exit code %d, want %d; stderr:\n%s", r.code, tt.wantCode, r.stderr)
			}
			for _, w := range tt.wantStderr {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "rpc error") {
				t.Errorf("stderr has gRPC noise:\n%s", r.stderr)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{name: "root lists command groups", args: []string{"--help"}, want: []string{"cluster", "node", "service", "image", "version", "info"}},
		{name: "bare shoal shows help", args: nil, want: []string{"Available Commands:", "service"}},
		{name: "service lists its commands", args: []string{"service", "--help"}, want: []string{"create", "ls", "ps", "inspect", "scale", "rm", "logs"}},
		{name: "image lists its commands", args: []string{"image"}, want: []string{"load", "pull", "ls"}},
		{name: "create explains flags", args: []string{"service", "create", "--help"}, want: []string{"--replicas", "--stop-grace-period", "--detach", "Examples:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCLI(t, missing, nil, tt.args...)
			if r.code != exitOK {
				t.Fatalf("exit code %d; stderr:\n%s", r.code, r.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("help lacks %q:\n%s", w, r.stdout)
				}
			}
		})
	}
}

// Every runnable command documents itself with an example.
func TestEveryCommandHasExample(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.HasSubCommands() {
				walk(sub)
				continue
			}
			if sub.Name() == "help" || sub.Hidden {
				continue
			}
			if sub.Example == "" || sub.Long == "" {
				t.Errorf("%q has no Example or Long help", sub.CommandPath())
			}
		}
	}
	walk(newRootCmd(&app{}, func(string) string { return "" }))
}

func TestSocketPath(t *testing.T) {
	tests := []struct {
		name, host, want string
		wantErr          bool
	}{
		{name: "default", host: defaultHost, want: "/run/shoal/shoal.sock"},
		{name: "unix URL", host: "unix:///run/shoal2/shoal.sock", want: "/run/shoal2/shoal.sock"},
		{name: "plain path", host: "/tmp/x/shoal.sock", want: "/tmp/x/shoal.sock"},
		{name: "tcp refused", host: "tcp://10.0.0.1:4242", wantErr: true},
		{name: "empty path", host: "unix://", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := socketPath(tt.host)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("socketPath(%q) = %q, %v; want %q (error %v)", tt.host, got, err, tt.want, tt.wantErr)
			}
		})
	}
}
