package container

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// tailChunk is how much of the log Logs reads at a time when it looks for
// the last lines from the end: large logs are never read whole for a tail.
const tailChunk = 64 << 10

// LogLine is one line of a container's output.
type LogLine struct {
	Time time.Time
	// Stream is "stdout" or "stderr".
	Stream string
	// Line is the text without its newline; lines longer than 16 KiB
	// arrive in pieces.
	Line []byte
}

// Logs calls fn for each stored line of the container's output, only the
// last tail lines when tail > 0. With follow it then calls fn for new lines
// until ctx ends (returning ctx's error) or the container has exited and
// its log is drained (returning nil). An error from fn stops Logs and is
// returned.
func (r *Runtime) Logs(ctx context.Context, id string, tail int, follow bool, fn func(LogLine) error) error {
	if err := checkID(id); err != nil {
		return err
	}
	dir := r.dir(id)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("logs of container %s: %w", id, ErrNotFound)
	}
	tick := time.NewTicker(waitPollInterval)
	defer tick.Stop()

	path := filepath.Join(dir, logFile)
	var f *os.File
	for f == nil {
		var err error
		f, err = os.Open(path)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("logs of container %s: %w", id, err)
		}
		// Not started yet, or it never produced a log.
		if !follow || r.logComplete(dir) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	defer f.Close()

	if tail > 0 {
		off, err := tailOffset(f, tail)
		if err != nil {
			return fmt.Errorf("logs of container %s: %w", id, err)
		}
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return fmt.Errorf("logs of container %s: %w", id, err)
		}
	}
	br := bufio.NewReader(f)
	var partial []byte // a line the shim has not finished writing
	complete := false
	for {
		line, err := br.ReadBytes('\n')
		if err == nil {
			if len(partial) > 0 {
				line, partial = append(partial, line...), nil
			}
			ll, perr := parseLogLine(line)
			if perr != nil {
				r.log.Warn("skip malformed container log line", "id", id, "err", perr)
				continue
			}
			if err := fn(ll); err != nil {
				return err
			}
			continue
		}
		if !errors.Is(err, io.EOF) {
			return fmt.Errorf("logs of container %s: %w", id, err)
		}
		partial = append(partial, line...)
		if !follow || complete {
			return nil
		}
		// Once the log is complete, one more pass reads whatever was
		// written before that.
		if complete = r.logComplete(dir); complete {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// logComplete reports whether nothing more will be written to the
// container's log: its exit is recorded (the shim closes the log first),
// the container was removed, or its shim died.
func (r *Runtime) logComplete(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, exitFile)); err == nil {
		return true
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return true
	}
	_, err := os.Stat(filepath.Join(dir, shimPidFile))
	return err == nil && !r.shimAlive(dir)
}

func parseLogLine(b []byte) (LogLine, error) {
	var rec logRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return LogLine{}, err
	}
	t, err := time.Parse(time.RFC3339Nano, rec.T)
	if err != nil {
		return LogLine{}, err
	}
	return LogLine{Time: t, Stream: rec.S, Line: []byte(rec.L)}, nil
}

// tailOffset returns the offset of the first of the last n complete
// lines of f, reading backwards from the end in chunks. Data after the
// last newline is a line still being written and does not count.
func tailOffset(f *os.File, n int) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	buf := make([]byte, tailChunk)
	pos := fi.Size()
	seenLast := false // the newline that ends the last complete line
	count := 0
	for pos > 0 {
		size := int64(len(buf))
		if pos < size {
			size = pos
		}
		pos -= size
		if _, err := f.ReadAt(buf[:size], pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := size - 1; i >= 0; i-- {
			if buf[i] != '\n' {
				continue
			}
			if !seenLast {
				seenLast = true
				continue
			}
			if count++; count == n {
				return pos + i + 1, nil
			}
		}
	}
	return 0, nil
}
