package scheduler

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the scheduler pure (DESIGN.md): besides the standard
// library it may import only the object model, and nothing that does I/O
// or starts goroutines.
func TestImports(t *testing.T) {
	allowed := map[string]bool{"github.com/shoal-project/shoal/proto": true}
	forbidden := map[string]bool{"os": true, "net": true, "time": true, "sync": true, "io": true, "log": true, "log/slog": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("parse %s: %v", name, err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			stdlib := !strings.Contains(strings.Split(path, "/")[0], ".")
			if forbidden[path] || (!stdlib && !allowed[path]) {
				t.Errorf("%s imports %q: the scheduler must stay pure", name, path)
			}
		}
	}
}
