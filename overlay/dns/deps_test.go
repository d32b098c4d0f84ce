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
// (its files are checked here too).
func TestImports(t *testing.T) {
	allowed := map[string]bool{"github.com/shoal-project/shoal/overlay/netnsutil": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	util, err := filepath.Glob("../netnsutil/*.go")
	if err != nil || len(util) == 0 {
		t.Fatalf("find netnsutil's files: %v, %d found", err, len(util))
	}
	files = append(files, util...)
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(path, "github.com/shoal-project/shoal/") && !allowed[path] {
				t.Errorf("%s imports %q: overlay/dns must not depend on other Shoal packages", name, path)
			}
		}
	}
}
