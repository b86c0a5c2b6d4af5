// Package s3server runs a real S3 server (versitygw with its posix backend)
// on 127.0.0.1 for tests and benchmarks. `make setup` installs versitygw;
// GPUWARM_VERSITYGW names the binary.
package s3server

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/gpuwarm/gpuwarm/testing/procserver"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Credentials of the server's root user.
const (
	AccessKey = "gpuwarmtestaccess"
	SecretKey = "gpuwarmtestsecretkey0123456789"
)

// Server is a running versitygw.
type Server struct {
	Dir      string
	Addr     string // 127.0.0.1:PORT
	Endpoint string // http://127.0.0.1:PORT

	mu   sync.Mutex
	proc *procserver.Proc // nil while stopped
	last string           // what it printed when it last stopped
}

// Binary finds versitygw.
func Binary() (string, error) {
	return procserver.Find("GPUWARM_VERSITYGW", []string{"/opt/gpuwarm/bin/versitygw"}, "versitygw",
		"run make setup (scripts/install-versitygw.sh)")
}

// Start starts a server storing its buckets under dir, on a free port.
func Start(dir string) (*Server, error) {
	addr, err := procserver.FreeAddr()
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, Addr: addr, Endpoint: "http://" + addr}
	if err := s.Restart(); err != nil {
		return nil, err
	}
	return s, nil
}

// Restart starts the server again (after Stop) on the same address.
func (s *Server) Restart() error {
	bin, err := Binary()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(bin, "--port", s.Addr, "--quiet", "posix", s.Dir)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+AccessKey, "ROOT_SECRET_KEY="+SecretKey)
	p, err := procserver.Start(cmd, "versitygw", procserver.Listening(s.Addr), 30*time.Second)
	if err != nil {
		return err
	}
	s.proc = p
	return nil
}

// Stop stops the server (the data stays in Dir).
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return
	}
	s.proc.Stop()
	s.last, s.proc = s.proc.Logs(), nil
}

// Client returns a client with the root credentials.
func (s *Server) Client() (*minio.Client, error) {
	return minio.New(s.Addr, &minio.Options{Creds: credentials.NewStaticV4(AccessKey, SecretKey, ""), BucketLookup: minio.BucketLookupPath})
}

// CreateBucket makes a bucket.
func (s *Server) CreateBucket(ctx context.Context, name string) error {
	c, err := s.Client()
	if err != nil {
		return err
	}
	return c.MakeBucket(ctx, name, minio.MakeBucketOptions{})
}

// URL is the gpuwarm store URL of bucket/prefix on this server.
func (s *Server) URL(bucket, prefix string) string {
	return fmt.Sprintf("s3://%s/%s?endpoint=%s", bucket, prefix, s.Endpoint)
}

// Env is the environment a gpuwarm process needs to reach the server.
func (s *Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + AccessKey, "AWS_SECRET_ACCESS_KEY=" + SecretKey}
}

// SetEnv puts the credentials into this process's environment.
func (s *Server) SetEnv() {
	os.Setenv("AWS_ACCESS_KEY_ID", AccessKey)
	os.Setenv("AWS_SECRET_ACCESS_KEY", SecretKey)
}

// Logs returns what the server printed since its last start.
func (s *Server) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return s.last
	}
	return s.proc.Logs()
}

// DataDir is where an object's bytes live in the posix backend.
func (s *Server) DataDir(bucket string) string { return filepath.Join(s.Dir, bucket) }
