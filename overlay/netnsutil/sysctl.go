package netnsutil

import (
	"fmt"
	"os"
	"strings"
)

// Sysctl is one sysctl file (a /proc/sys/net path) and the value it should
// hold.
type Sysctl struct{ Path, Value string }

// SetSysctl writes value to the sysctl file at path as the namespace at
// nsPath sees it; see SetSysctls.
func SetSysctl(nsPath, path, value string) error {
	return SetSysctls(nsPath, Sysctl{path, value})
}

// SetSysctls writes each value to its sysctl file as the namespace at nsPath
// sees it: the files under /proc/sys/net belong to the namespace of the
// thread that opens them, hence a locked thread inside nsPath. It writes
// only the values that differ from what the file holds: writing ip_forward,
// for one, also resets every interface's forwarding flag.
func SetSysctls(nsPath string, ss ...Sysctl) error {
	return OnLockedThread(func() error {
		if err := Enter(nsPath); err != nil {
			return fmt.Errorf("set sysctls: %w", err)
		}
		for _, s := range ss {
			cur, err := os.ReadFile(s.Path)
			if err != nil {
				return fmt.Errorf("read %s in %s: %w", s.Path, nsPath, err)
			}
			if strings.TrimSpace(string(cur)) == s.Value {
				continue
			}
			if err := os.WriteFile(s.Path, []byte(s.Value+"\n"), 0o644); err != nil {
				return fmt.Errorf("write %s=%s in %s: %w", s.Path, s.Value, nsPath, err)
			}
		}
		return nil
	})
}
