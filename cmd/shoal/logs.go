package main

import (
	"fmt"
	"strings"
	"time"

	shoalpb "github.com/shoal-project/shoal/proto"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// logSeparator ends a log line's prefix, as in `docker service logs`.
const logSeparator = "    | "

func newServiceLogsCmd(a *app) *cobra.Command {
	var (
		follow     bool
		tail       int64
		timestamps bool
	)
	c := &cobra.Command{
		Use:   "logs [flags] SERVICE",
		Short: "Show the logs of a service's tasks",
		Long: `Show what a service's tasks wrote, each line prefixed with the task
(service.slot.task-id@node). What a task wrote to stdout goes to stdout, what
it wrote to stderr to stderr.

The logs are those kept by the daemon shoal talks to: the tasks that ran on
this host.`,
		Example: `  shoal service logs web
  shoal service logs -f --tail 20 web
  shoal service logs --timestamps web 2>/dev/null`,
		Args: exactArgs(1, "SERVICE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			d, err := a.daemon(ctx)
			if err != nil {
				return err
			}
			svc, err := getService(ctx, d, args[0])
			if err != nil {
				return err
			}
			tasks, err := d.control.ListTasks(ctx, &shoalpb.ListTasksRequest{ServiceIds: []string{svc.GetId()}})
			if err != nil {
				return fmt.Errorf("list tasks of %s: %w", args[0], err)
			}
			pf := newLogPrefixer(svc.GetSpec().GetName(), tasks.GetTasks(), nodeNames(ctx, d))
			req := &shoalpb.ServiceLogsRequest{Service: svc.GetId(), Follow: follow}
			if tail > 0 {
				req.Tail = tail
			}
			stream, err := d.local.ServiceLogs(ctx, req)
			if err != nil {
				return fmt.Errorf("logs of %s: %w", args[0], err)
			}
			for {
				l, err := stream.Recv()
				switch {
				case isEOF(err):
					return nil
				case err != nil && (ctx.Err() != nil || status.Code(err) == codes.Canceled):
					// Interrupted while following: the normal way to stop -f.
					return nil
				case err != nil:
					return fmt.Errorf("logs of %s: %w", args[0], err)
				}
				w := a.stdout
				if l.GetStream() == "stderr" {
					w = a.stderr
				}
				if _, err := fmt.Fprint(w, formatLogLine(pf.prefix(l), l, timestamps)); err != nil {
					return fmt.Errorf("write logs: %w", err)
				}
			}
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep streaming new lines")
	c.Flags().Int64Var(&tail, "tail", -1, "only the last N lines of each task (default all)")
	c.Flags().BoolVarP(&timestamps, "timestamps", "t", false, "show when each line was written")
	return c
}

// logPrefixer names the task of each log line, padded so that the lines of
// a service's tasks start in one column.
type logPrefixer struct {
	service string
	nodes   map[string]string // node ID -> hostname
	width   int               // of the longest prefix of the tasks known up front
}

func newLogPrefixer(service string, tasks []*shoalpb.Task, nodes map[string]string) *logPrefixer {
	p := &logPrefixer{service: service, nodes: nodes}
	for _, t := range tasks {
		l := &shoalpb.LogLine{TaskId: t.GetId(), Slot: t.GetSlot(), NodeId: t.GetNodeId()}
		p.width = max(p.width, len(p.name(l)))
	}
	return p
}

// name is "service.slot.taskid@hostname" ("service.node.taskid@hostname"
// for a global service's task); the hostname falls back to the node ID.
func (p *logPrefixer) name(l *shoalpb.LogLine) string {
	slot := l.GetNodeId()
	if l.GetSlot() > 0 {
		slot = fmt.Sprint(l.GetSlot())
	}
	return fmt.Sprintf("%s.%s.%s@%s", p.service, slot, shortID(l.GetTaskId()), nodeName(p.nodes, l.GetNodeId()))
}

func (p *logPrefixer) prefix(l *shoalpb.LogLine) string {
	n := p.name(l)
	if pad := p.width - len(n); pad > 0 {
		n += strings.Repeat(" ", pad)
	}
	return n + logSeparator
}

// formatLogLine renders one line, with exactly one newline at its end,
// preceded by its time when timestamps is set.
func formatLogLine(prefix string, l *shoalpb.LogLine, timestamps bool) string {
	var b strings.Builder
	if timestamps && l.GetTime() != nil {
		b.WriteString(l.GetTime().AsTime().UTC().Format(time.RFC3339Nano))
		b.WriteByte(' ')
	}
	b.WriteString(prefix)
	b.WriteString(strings.TrimSuffix(string(l.GetLine()), "\n"))
	b.WriteByte('\n')
	return b.String()
}
