// Package registry runs a real OCI registry (the CNCF distribution
// registry, Debian's docker-registry package) on 127.0.0.1 for tests and
// benchmarks, and builds the test images pushed to it. `make setup`
// installs it; GPUWARM_REGISTRY names the binary.
package registry

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/gpuwarm/gpuwarm/testing/procserver"
)

// Server is a running registry.
type Server struct {
	Dir  string
	Addr string // 127.0.0.1:PORT: image references are Addr/NAME:TAG
	proc *procserver.Proc
}

// Binary finds the registry.
func Binary() (string, error) {
	return procserver.Find("GPUWARM_REGISTRY", []string{"/usr/bin/docker-registry"}, "docker-registry",
		"run make setup (apt-get install docker-registry)")
}

// Start starts a registry storing its blobs under dir, on a free loopback
// port, and waits until it answers.
func Start(dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	addr, err := procserver.FreeAddr()
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	answers := func() bool {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	p, err := procserver.Start(exec.Command(bin, "serve", cfgPath), "registry", answers, 15*time.Second)
	if err != nil {
		return nil, err
	}
	return &Server{Dir: dir, Addr: addr, proc: p}, nil
}

// Logs returns what the registry printed.
func (s *Server) Logs() string { return s.proc.Logs() }

// Stop stops the registry.
func (s *Server) Stop() { s.proc.Stop() }

// Ref is the reference of name:tag in this registry.
func (s *Server) Ref(name, tag string) string { return s.Addr + "/" + name + ":" + tag }
