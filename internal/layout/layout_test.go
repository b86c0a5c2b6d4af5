package layout

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/gpuwarm/gpuwarm/"

// forbidden lists, for each package prefix, the prefixes it must not import.
var forbidden = map[string][]string{
	"manifest":     {"fusefs", "prefetch", "restore", "gpu", "cmd", "testing"},
	"fusefs":       {"prefetch", "restore", "gpu", "cmd", "testing"},
	"prefetch":     {"restore", "gpu", "cmd", "testing"},
	"restore":      {"cmd", "testing"},
	"gpu":          {"manifest", "fusefs", "prefetch", "restore", "cmd", "testing"},
	"internal":     {"manifest", "fusefs", "prefetch", "restore", "gpu", "cmd", "testing"},
	"cmd":          {"testing"},
	"fusefs/cache": {"fusefs/transport"},
}

func under(pkg, prefix string) bool { return pkg == prefix || strings.HasPrefix(pkg, prefix+"/") }

func TestImportsFollowTheLayers(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Imports", "../../...").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	n := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		n++
		pkg := strings.TrimPrefix(p.ImportPath, module)
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			dep := strings.TrimPrefix(imp, module)
			for prefix, bad := range forbidden {
				if !under(pkg, prefix) {
					continue
				}
				for _, b := range bad {
					if under(dep, b) && !under(dep, prefix) {
						t.Errorf("%s imports %s: %s must not depend on %s (see package layout)", pkg, dep, prefix, b)
					}
				}
			}
		}
	}
	if n < 20 {
		t.Fatalf("go list found %d packages; is the test run from its own directory?", n)
	}
}
