package netnstest

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/overlay/netnsutil"
)

func TestPrefix(t *testing.T) {
	tests := []struct {
		name string
		base string
		n    int
	}{
		{name: "short", base: "v", n: 2},
		{name: "longer", base: "shdns", n: 3},
		{name: "no base", base: "", n: 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := Prefix(tt.base, tt.n), Prefix(tt.base, tt.n)
			for _, p := range []string{a, b} {
				digits, ok := strings.CutPrefix(p, tt.base)
				if !ok || len(digits) != 2*tt.n || strings.Trim(digits, "0123456789abcdef") != "" {
					t.Errorf("Prefix(%q, %d) = %q; want %[1]q and %d hex digits", tt.base, tt.n, p, 2*tt.n)
				}
			}
			if tt.n >= 8 && a == b {
				t.Errorf("Prefix(%q, %d) gave %q twice", tt.base, tt.n, a)
			}
		})
	}
}

// TestCleanup builds a namespace and a directory of namespace files in a
// subtest that ends early, as a failing one does, and checks that both are
// gone once it has.
func TestCleanup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	prefix := Prefix("nstest", 3)
	dir := t.TempDir()
	var path, file string
	t.Run("ends early", func(t *testing.T) {
		path = NewNamed(t, prefix+"-a")
		if ok, err := netnsutil.IsNetNSFile(path); err != nil || !ok {
			t.Fatalf("IsNetNSFile(%s) = %v, %v; want true, nil", path, ok, err)
		}
		lo, err := Handle(t, path).LinkByName("lo")
		if err != nil {
			t.Fatalf("lo in %s: %v", path, err)
		}
		if lo.Attrs().Flags&net.FlagUp != 0 {
			t.Errorf("lo of a new netns is up")
		}
		const ipForward = "/proc/sys/net/ipv4/ip_forward"
		if err := netnsutil.SetSysctl(path, ipForward, "1"); err != nil {
			t.Fatal(err)
		}
		if got := ReadSysctl(t, path, ipForward); got != "1" {
			t.Errorf("ReadSysctl(%s) = %q; want \"1\"", ipForward, got)
		}
		CleanupDir(t, dir)
		file = filepath.Join(dir, prefix+"-f")
		if err := netnsutil.CreateNetNS(file); err != nil {
			t.Fatal(err)
		}
		t.Skip("ends here, the way t.FailNow would, for the parent to check the cleanup")
	})
	for _, p := range []string{path, file} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still there after the test's cleanup: %v", p, err)
		}
	}
}
