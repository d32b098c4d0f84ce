package layout

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/shoal-project/shoal"

// allowed maps a package prefix (relative to the module) to the Shoal
// prefixes it may import. The first matching prefix wins; a package's own
// subtree is always allowed. From DESIGN.md's layout table.
var allowed = []struct {
	pkg     string
	imports []string
}{
	{"proto", nil},
	{"scheduler", []string{"proto"}},
	{"healthcheck", nil},
	{"overlay", nil},
	{"raft", []string{"proto"}},
	{"manager", []string{"raft", "scheduler", "proto", "internal/ca"}},
	{"agent", []string{"healthcheck", "overlay", "proto", "internal/ca"}},
	{"e2e", nil},
	{"internal/layout", nil},
	{"internal/ca", []string{"proto"}}, // certificates, tokens, authorisation: shared by managers and agents
	{"internal/daemon", []string{""}},  // the daemon's wiring: everything
	{"cmd", []string{""}},
}

type pkg struct {
	ImportPath string
	Name       string
	Doc        string
	Imports    []string
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func rel(path string) string {
	return strings.TrimPrefix(strings.TrimPrefix(path, module), "/")
}

func within(path, prefix string) bool {
	return prefix == "" || path == prefix || strings.HasPrefix(path, prefix+"/")
}

func TestDependencyDirection(t *testing.T) {
	for _, p := range listPackages(t) {
		name := rel(p.ImportPath)
		var rule []string
		found := false
		for _, a := range allowed {
			if within(name, a.pkg) {
				rule, found = a.imports, true
				break
			}
		}
		if !found {
			t.Errorf("package %s is not in the layout table of DESIGN.md (add it to internal/layout)", name)
			continue
		}
		top := strings.SplitN(name, "/", 2)[0]
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			dep := rel(imp)
			ok := within(dep, top) || (strings.HasPrefix(name, "e2e") && within(dep, "e2e"))
			for _, a := range rule {
				ok = ok || within(dep, a)
			}
			if !ok {
				t.Errorf("%s imports %s: DESIGN.md allows it only %v", name, dep, rule)
			}
		}
	}
}

func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if p.Doc == "" {
			t.Errorf("package %s has no package doc comment", rel(p.ImportPath))
		}
	}
}
