package daemon

import (
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"strings"
	"testing"

	shoalpb "github.com/shoal-project/shoal/proto"
)

// Every Control method must be relayed by the socket's proxy: one it
// lacks falls through to the embedded UnimplementedControlServer, and the
// CLI gets "method not implemented" for a call the managers serve.
func TestControlProxyRelaysEveryMethod(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "proxy.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	declared := make(map[string]bool)
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv == nil || len(fn.Recv.List) != 1 {
			continue
		}
		if star, ok := fn.Recv.List[0].Type.(*ast.StarExpr); ok {
			if id, ok := star.X.(*ast.Ident); ok && id.Name == "controlProxy" {
				declared[fn.Name.Name] = true
			}
		}
	}
	api := reflect.TypeFor[shoalpb.ControlServer]()
	for i := range api.NumMethod() {
		name := api.Method(i).Name
		if strings.HasPrefix(name, "mustEmbed") || !api.Method(i).IsExported() {
			continue
		}
		if !declared[name] {
			t.Errorf("controlProxy does not relay Control.%s", name)
		}
	}
}
