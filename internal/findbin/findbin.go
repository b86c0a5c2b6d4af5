// Package findbin finds a helper program gpuwarm runs (CRIU, runc, the
// test servers): the path an environment variable names, then fixed paths
// (where make setup installs it), then the PATH; the first that exists and
// passes the caller's probe (a version check, say) wins, and a failure
// lists what was tried and why each was passed over.
package findbin

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Find returns probe's result for the first candidate that passes it.
// The error lists every candidate tried (joined by "; ").
func Find[T any](env string, fixed []string, name string, probe func(path string) (T, error)) (T, error) {
	var candidates []string
	if p := os.Getenv(env); p != "" {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, fixed...)
	if p, err := exec.LookPath(name); err == nil {
		candidates = append(candidates, p)
	}
	var tried []string
	seen := map[string]bool{}
	for _, p := range candidates {
		if seen[p] {
			continue
		}
		seen[p] = true
		if _, err := os.Stat(p); err != nil {
			tried = append(tried, p+" (missing)")
			continue
		}
		v, err := probe(p)
		if err != nil {
			tried = append(tried, err.Error())
			continue
		}
		return v, nil
	}
	var zero T
	if len(tried) == 0 {
		tried = []string{"nothing: " + env + " unset, no " + name + " in PATH"}
	}
	return zero, fmt.Errorf("tried %s", strings.Join(tried, "; "))
}

// Exists is a probe that accepts any existing file.
func Exists(path string) (string, error) { return path, nil }
