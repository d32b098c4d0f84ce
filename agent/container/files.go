package container

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// exitRecord is exit.json, written once by the shim when runc returns.
type exitRecord struct {
	Code   int    `json:"code"`
	Signal string `json:"signal"`
	// OOMKilled and MemoryLimit are read from the container's memory
	// cgroup before it is removed (see readOOM).
	OOMKilled   bool      `json:"oom_killed,omitempty"`
	MemoryLimit int64     `json:"memory_limit,omitempty"`
	StartedAt   time.Time `json:"started_at"`
	FinishedAt  time.Time `json:"finished_at"`
	// Error is set when runc never started the container's process; it
	// holds runc's reason.
	Error string `json:"error,omitempty"`
}

// exitFromCode turns runc's exit status into a record: runc exits with
// 128+N when the container was killed by signal N.
func exitFromCode(code int) exitRecord {
	rec := exitRecord{Code: code}
	if n := code - 128; n > 0 && n < 65 {
		rec.Signal = signalName(syscall.Signal(n))
	}
	return rec
}

func readExit(dir string) (exitRecord, error) {
	var rec exitRecord
	b, err := os.ReadFile(filepath.Join(dir, exitFile))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("parse %s: %w", filepath.Join(dir, exitFile), err)
	}
	return rec, nil
}

// writeFileAtomic writes data to path through a synced temporary file and
// a rename, so readers see either nothing or all of it.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("parse pid file %s: %q", path, b)
	}
	return pid, nil
}

// shimAlive reports whether the pid in dir/shim.pid is a live shim of this
// container. Checking the command line guards against the pid having been
// reused after the shim exited; a zombie counts as dead.
func (r *Runtime) shimAlive(dir string) bool {
	pid, err := readPid(filepath.Join(dir, shimPidFile))
	if err != nil {
		return false
	}
	return isShimProcess(pid, dir)
}

func isShimProcess(pid int, dir string) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may itself
	// contain ") ".
	if i := bytes.LastIndexByte(stat, ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' || stat[i+2] == 'X' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return bytes.Contains(cmdline, []byte("\x00"+shimModeRun+"\x00")) &&
		bytes.Contains(cmdline, []byte("\x00--dir\x00"+dir+"\x00"))
}
