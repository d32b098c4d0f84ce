package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
)

// Exit codes, as Docker's CLI: 1 when the command ran and failed, 2 when it
// was called wrongly, 130 when interrupted (128 + SIGINT).
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitInterrupted = 130
)

// suggestDistance is how many edits away a mistyped subcommand may be from
// a real one to be suggested: two catches a swapped pair ("serivce").
const suggestDistance = 2

// envHost names the environment variable that replaces --host's default.
const envHost = "SHOAL_HOST"

// envTLSDir names the environment variable that replaces --tls-dir's
// default, and defaultTLSDir is where shoald keeps a node's credentials
// with its default --data-dir.
const (
	envToken      = "SHOAL_TOKEN"
	envTLSDir     = "SHOAL_TLS_DIR"
	defaultTLSDir = "/var/lib/shoal/certificates"
)

// usageError is an error in how a command was called: run prints the usage
// hint after it and exits with exitUsage.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// errReported is returned by commands that already printed their errors
// (one per argument, like `service rm a b`): run only sets the exit code.
var errReported = errors.New("errors reported above")

// app is what every command shares: the streams, the global flags and the
// connection to shoald, dialled on first use so that commands which fail
// validation, or need no daemon, never wait for one.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	host   string // --host
	tlsDir string // --tls-dir
	token  string // --token

	conn   *grpc.ClientConn // nil until dialled
	client *daemonClient
}

// run executes the CLI with args (without the program name) and returns the
// process exit code. getenv reads the environment (os.Getenv in main).
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	defer a.close()
	root := newRootCmd(a, getenv)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	switch {
	case err == nil:
		return exitOK
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "Interrupted")
		return exitInterrupted
	case errors.Is(err, errReported):
		return exitFailure
	}
	fmt.Fprintln(stderr, "Error:", err)
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "\nUsage:  %s\n\nRun '%s --help' for more information.\n", usageLine(cmd), cmd.CommandPath())
		return exitUsage
	}
	return exitFailure
}

// usageLine is the one-line synopsis printed after a usage error.
func usageLine(cmd *cobra.Command) string {
	if cmd.HasAvailableSubCommands() {
		return cmd.CommandPath() + " COMMAND"
	}
	return cmd.UseLine()
}

func (a *app) close() {
	if a.conn != nil {
		_ = a.conn.Close()
	}
}

// daemon returns the clients of shoald's services, dialling on first use.
func (a *app) daemon(ctx context.Context) (*daemonClient, error) {
	if a.client != nil {
		return a.client, nil
	}
	conn, err := dial(ctx, a.host, a.tlsDir, a.token, a.stderr)
	if err != nil {
		return nil, err
	}
	a.conn = conn
	a.client = newDaemonClient(conn)
	return a.client, nil
}

func newRootCmd(a *app, getenv func(string) string) *cobra.Command {
	root := &cobra.Command{
		Use:   "shoal",
		Short: "Shoal's CLI: run services on a cluster of hosts",
		Long: `shoal drives a Shoal cluster: it talks to the shoald daemon on this host
over its root-only socket (<run-dir>/shoal.sock).

Start shoald, make this host the first manager with 'shoal cluster init',
then run services with 'shoal service create'.`,
		Example: `  shoal cluster init
  shoal service create --name web --replicas 3 shoal/web:latest
  shoal service ps web
  SHOAL_HOST=unix:///run/shoal2/shoal.sock shoal node ls`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		Args:              groupArgs,
		RunE:              groupRun,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},

		SuggestionsMinimumDistance: suggestDistance,
	}
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })

	host := defaultHost
	if h := getenv(envHost); h != "" {
		host = h
	}
	root.PersistentFlags().StringVarP(&a.host, "host", "H", host,
		"shoald to talk to: unix:///path/to/shoal.sock, a socket path, or tcp://MANAGER:PORT over mutual TLS (env "+envHost+")")
	tlsDir := defaultTLSDir
	if d := getenv(envTLSDir); d != "" {
		tlsDir = d
	}
	root.PersistentFlags().StringVar(&a.token, "token", getenv(envToken),
		"operator `TOKEN`, to use the cluster API through a worker (env "+envToken+"; 'shoal cluster operator-token' on a manager prints it)")
	root.PersistentFlags().StringVar(&a.tlsDir, "tls-dir", tlsDir,
		"with tcp:// hosts: directory with the cluster credentials ca.crt, node.crt, node.key (env "+envTLSDir+")")

	root.AddCommand(
		newClusterCmd(a),
		newNodeCmd(a),
		newServiceCmd(a),
		newNetworkCmd(a),
		newImageCmd(a),
		newVersionCmd(a),
		newInfoCmd(a),
		newDebugCmd(a),
	)
	return root
}

// newGroupCmd returns a command that only holds subcommands: alone it prints
// its help; with an unknown subcommand it is a usage error.
func newGroupCmd(use, short, long string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:                        use,
		Short:                      short,
		Long:                       long,
		Args:                       groupArgs,
		RunE:                       groupRun,
		SuggestionsMinimumDistance: suggestDistance,
	}
	c.AddCommand(subs...)
	return c
}

func groupArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return &usageError{errors.New(msg)}
}

func groupRun(cmd *cobra.Command, _ []string) error { return cmd.Help() }

// Positional argument checks that report usage errors.

func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf("%q requires exactly %d argument%s (%s), got %d", cmd.CommandPath(), n, plural(n), what, len(args))
		}
		return nil
	}
}

func minArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usageErrorf("%q requires at least %d argument%s (%s)", cmd.CommandPath(), n, plural(n), what)
		}
		return nil
	}
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%q accepts no arguments, got %q", cmd.CommandPath(), args[0])
	}
	return nil
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
