package container

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// shimModeSpawn is the short-lived first stage that Start runs: it
	// forks the real shim detached and exits, so that the daemon never has
	// a long-lived child to reap.
	shimModeSpawn = "spawn"
	// shimModeRun is the shim proper, which runs runc in the foreground.
	shimModeRun = "run"
	// maxLogLineBytes is where the shim splits long lines: it bounds the
	// shim's memory per stream, and the limit matches Docker's 16 KiB.
	maxLogLineBytes = 16 << 10
	// runcStartFailedCode is the exit code recorded when runc cannot be
	// executed at all, the shell's "command not found".
	runcStartFailedCode = 127
)

// shimOptions are the shim's flags, shared by both modes.
type shimOptions struct {
	runc string // runc binary
	root string // runc --root
	dir  string // the container's state directory, also its bundle
	id   string // container id
	// memoryCgroup is the container's memory cgroup directory, read for
	// OOM kills once the container exits; "" when the host has none.
	memoryCgroup string
}

// ShimMain runs the container shim with args (the arguments after
// Config.ShimCommand) and returns the process exit code. The daemon's
// hidden `shim` command calls it. args must be the tail of os.Args: the
// shim re-executes itself with them.
func ShimMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "shim: missing mode")
		return 2
	}
	fs := flag.NewFlagSet("shim", flag.ContinueOnError)
	var o shimOptions
	fs.StringVar(&o.runc, "runc", defaultRuncBinary, "runc binary")
	fs.StringVar(&o.root, "root", "", "runc root directory")
	fs.StringVar(&o.dir, "dir", "", "container state and bundle directory")
	fs.StringVar(&o.id, "id", "", "container id")
	fs.StringVar(&o.memoryCgroup, "memory-cgroup", "", "the container's memory cgroup directory")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if o.root == "" || o.dir == "" || checkID(o.id) != nil {
		fmt.Fprintln(os.Stderr, "shim: --root, --dir and a valid --id are required")
		return 2
	}
	switch args[0] {
	case shimModeSpawn:
		if err := shimSpawn(args, o); err != nil {
			fmt.Fprintln(os.Stderr, "shim:", err)
			return 1
		}
		return 0
	case shimModeRun:
		return shimRun(o)
	default:
		fmt.Fprintf(os.Stderr, "shim: unknown mode %q\n", args[0])
		return 2
	}
}

// shimSpawn starts the shim proper (this program again, in run mode) in a
// new session with /dev/null as stdio, records its pid and returns
// without waiting for it.
func shimSpawn(args []string, o shimOptions) error {
	i := len(os.Args) - len(args)
	if i < 1 || !slices.Equal(os.Args[i:], args) {
		return errors.New("ShimMain's arguments are not the tail of the command line")
	}
	argv := append([]string{}, os.Args...)
	argv[i] = shimModeRun
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	defer devnull.Close()
	cmd := &exec.Cmd{
		// The kernel's link to this very binary, which works even when the
		// file on disk was replaced by an upgrade.
		Path:   "/proc/self/exe",
		Args:   argv,
		Dir:    "/",
		Stdin:  devnull,
		Stdout: devnull,
		Stderr: devnull,
		// A session of its own: no signal sent to the daemon's process
		// group or terminal reaches the shim.
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start shim: %w", err)
	}
	pid := cmd.Process.Pid
	if err := writeFileAtomic(filepath.Join(o.dir, shimPidFile), []byte(strconv.Itoa(pid)+"\n"), filePerm); err != nil {
		// Nobody could find this shim again: take it back down.
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
		return err
	}
	return cmd.Process.Release()
}

// shimRun runs `runc run` in the foreground, stores the container's output
// and records its exit status, OOM kill included. It returns 0 when the
// exit was recorded.
func shimRun(o shimOptions) int {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if logf, err := os.OpenFile(filepath.Join(o.dir, shimLogFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, filePerm); err == nil {
		defer logf.Close()
		log = slog.New(slog.NewTextHandler(logf, nil)).With("id", o.id)
	}

	startedAt := time.Now()
	rec, err := runContainer(o, log)
	if err != nil {
		log.Error("run container", "err", err)
	}
	rec.FinishedAt = time.Now()
	rec.StartedAt = startedAt
	if fi, err := os.Stat(filepath.Join(o.dir, initPidFile)); err == nil {
		// runc writes the pid file once the process runs: the real start.
		rec.StartedAt = fi.ModTime()
	} else if rec.Error == "" {
		rec.Error = runcError(filepath.Join(o.dir, runcLogFile), rec.Code)
	}
	b, err := json.Marshal(rec)
	if err == nil {
		err = writeFileAtomic(filepath.Join(o.dir, exitFile), b, filePerm)
	}
	if err != nil {
		log.Error("record exit status", "err", err)
		return 1
	}
	log.Info("container exited", "code", rec.Code, "signal", rec.Signal)
	return 0
}

// runContainer runs runc and copies the container's output to log.jsonl
// until both streams are drained and runc has exited, then reads the
// container's memory cgroup and deletes the container from runc.
func runContainer(o shimOptions, log *slog.Logger) (exitRecord, error) {
	out, err := os.OpenFile(filepath.Join(o.dir, logFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, filePerm)
	if err != nil {
		return exitRecord{Code: runcStartFailedCode, Error: err.Error()}, fmt.Errorf("open container log: %w", err)
	}
	// Closed before exit.json is written: readers treat exit.json as "the
	// log is complete".
	defer out.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return exitRecord{Code: runcStartFailedCode, Error: err.Error()}, err
	}
	defer devnull.Close()
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		return exitRecord{Code: runcStartFailedCode, Error: err.Error()}, err
	}
	defer stdoutR.Close()
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		stdoutW.Close()
		return exitRecord{Code: runcStartFailedCode, Error: err.Error()}, err
	}
	defer stderrR.Close()

	// --keep: runc leaves the exited container, cgroups included, for
	// deleteContainer, so that its memory cgroup can be read first.
	cmd := exec.Command(o.runc,
		"--root", o.root,
		"--log", filepath.Join(o.dir, runcLogFile), "--log-format", "json",
		"run", "--keep", "--bundle", o.dir, "--pid-file", filepath.Join(o.dir, initPidFile),
		o.id)
	cmd.Dir = o.dir
	// NOTIFY_SOCKET (set when shoald runs under systemd) would make runc
	// pass systemd's notification socket into the container.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "NOTIFY_SOCKET=") })
	cmd.Stdin = devnull
	// runc hands these pipes to the container's init as its stdout and
	// stderr.
	cmd.Stdout = stdoutW
	cmd.Stderr = stderrW
	err = cmd.Start()
	// Only runc and the container may hold the write ends: the streams end
	// when they exit.
	stdoutW.Close()
	stderrW.Close()
	if err != nil {
		return exitRecord{Code: runcStartFailedCode, Error: fmt.Sprintf("run %s: %v", o.runc, err)}, err
	}
	log.Info("runc started", "pid", cmd.Process.Pid)

	w := &logWriter{w: out, log: log}
	var wg sync.WaitGroup
	for _, s := range []struct {
		r      io.Reader
		stream string
	}{{stdoutR, "stdout"}, {stderrR, "stderr"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			copyLines(s.r, s.stream, w)
		}()
	}
	wg.Wait()
	waitErr := cmd.Wait()
	var exitErr *exec.ExitError
	if waitErr != nil && !errors.As(waitErr, &exitErr) {
		return exitRecord{Code: unknownExitCode}, fmt.Errorf("wait for runc: %w", waitErr)
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		// runc itself was killed (the OOM killer, an operator): the
		// container may still run, orphaned. Kill it, so that exit.json
		// stays true and nothing runs unaccounted for.
		log.Warn("runc was killed; killing the container", "signal", ws.Signal())
		deleteContainer(o, log)
		return exitFromCode(128 + int(syscall.SIGKILL)), nil
	}
	rec := exitFromCode(ws.ExitStatus())
	if _, err := os.Stat(filepath.Join(o.dir, initPidFile)); err == nil && o.memoryCgroup != "" {
		oom, err := readOOM(os.DirFS(o.memoryCgroup), rec.Signal == signalName(syscall.SIGKILL))
		if err != nil {
			log.Warn("read the container's memory cgroup; OOM kills go unreported", "cgroup", o.memoryCgroup, "err", err)
		}
		rec.OOMKilled, rec.MemoryLimit = oom.killed, oom.limit
		if oom.killed {
			log.Info("the OOM killer killed a process of the container", "memory_limit", oom.limit)
		}
	}
	deleteContainer(o, log)
	return rec, nil
}

// deleteContainer removes runc's record of the container and its cgroups
// with `runc delete --force`, which also kills whatever still runs in
// them. runc has no record when it failed before creating the container.
func deleteContainer(o shimOptions, log *slog.Logger) {
	if _, err := os.Stat(filepath.Join(o.root, o.id)); errors.Is(err, os.ErrNotExist) {
		return
	}
	del := exec.Command(o.runc, "--root", o.root, "delete", "--force", o.id)
	del.Dir = o.dir
	if out, err := del.CombinedOutput(); err != nil {
		log.Error("runc delete", "err", err, "output", string(out))
	}
}

// runcError returns the last error runc logged, the reason it could not
// start the container.
func runcError(path string, code int) string {
	msg := fmt.Sprintf("runc exited with code %d before the container started", code)
	b, err := os.ReadFile(path)
	if err != nil {
		return msg
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) == nil && entry.Level == "error" && entry.Msg != "" {
			msg = entry.Msg
		}
	}
	return msg
}

// logRecord is one line of log.jsonl.
type logRecord struct {
	T string `json:"t"` // RFC 3339 with nanoseconds
	S string `json:"s"` // "stdout" or "stderr"
	L string `json:"l"` // the line without its newline
}

// logWriter appends records to the container log, one write per line so
// that lines of the two streams never interleave.
type logWriter struct {
	log *slog.Logger

	mu      sync.Mutex // guards following
	w       io.Writer
	failing bool // a write failed; logged once
}

func (w *logWriter) writeLine(stream string, line []byte) {
	b, err := json.Marshal(logRecord{T: time.Now().UTC().Format(time.RFC3339Nano), S: stream, L: string(line)})
	if err != nil {
		return
	}
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.w.Write(b); err != nil {
		if !w.failing {
			w.log.Error("write container log; dropping output", "err", err)
		}
		w.failing = true
		return
	}
	w.failing = false
}

// copyLines reads r to EOF and writes each line as a record, splitting
// lines longer than maxLogLineBytes. It keeps reading after write errors:
// a container whose output is not read blocks.
func copyLines(r io.Reader, stream string, w *logWriter) {
	br := bufio.NewReaderSize(r, maxLogLineBytes)
	split := false // the previous record was a piece of a longer line
	for {
		line, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			// A newline right after a split ends the long line; it is not
			// an empty line of its own.
			if !split || len(line) > 1 {
				w.writeLine(stream, line[:len(line)-1])
			}
			split = false
		case errors.Is(err, bufio.ErrBufferFull):
			w.writeLine(stream, line)
			split = true
		default:
			if len(line) > 0 {
				w.writeLine(stream, line)
			}
			return
		}
	}
}
