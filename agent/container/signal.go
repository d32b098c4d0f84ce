package container

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrInvalidSignal means ParseSignal did not recognise its input.
var ErrInvalidSignal = errors.New("invalid signal")

// maxSignal is the highest Linux signal number (SIGRTMAX).
const maxSignal = 64

// ParseSignal parses a signal the way images and compose files spell it:
// "SIGTERM", "TERM" (any case) or a number such as "15".
func ParseSignal(s string) (syscall.Signal, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > maxSignal {
			return 0, fmt.Errorf("%w: %q is out of range 1-%d", ErrInvalidSignal, s, maxSignal)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("%w: %q", ErrInvalidSignal, s)
}

// signalName returns the conventional name of sig ("SIGKILL"), or its
// number for signals without one (real-time signals).
func signalName(sig syscall.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return name
	}
	return strconv.Itoa(int(sig))
}
