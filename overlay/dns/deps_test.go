package dns

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the dependency direction of DESIGN.md: overlay/ imports
// no Shoal package outside overlay/ (the agent feeds it plain values), and
// overlay/dns no other overlay package but netnsutil, which must stay a leaf
// (its files are checked here too). Test files may also import netnstest,
// the test support beside netnsutil, whose files are checked likewise: no
// Shoal package but netnsutil.
func TestImports(t *testing.T) {
	const (
		netnsutil = "github.com/shoal-project/shoal/overlay/netnsutil"
		netnstest = "github.com/shoal-project/shoal/overlay/netnsutil/netnstest"
	)
	allowed := map[string]bool{netnsutil: true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"../netnsutil", "../netnsutil/netnstest"} {
		more, err := filepath.Glob(dir + "/*.go")
		if err != nil || len(more) == 0 {
			t.Fatalf("find %s's files: %v, %d found", dir, err, len(more))
		}
		files = append(files, more...)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if path == netnstest && strings.HasSuffix(name, "_test.go") {
				continue
			}
			if strings.HasPrefix(path, "github.com/shoal-project/shoal/") && !allowed[path] {
				t.Errorf("%s imports %q: overlay/dns must not depend on other Shoal packages", name, path)
			}
		}
	}
}
