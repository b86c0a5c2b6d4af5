// Package s3server runs a real S3 server (versitygw with its posix backend)
// on 127.0.0.1 for tests and benchmarks. `make setup` installs versitygw;
// GPUWARM_VERSITYGW names the binary.
package s3server

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

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
	cmd  *exec.Cmd
	logs bytes.Buffer
	done chan struct{}
}

// Binary finds versitygw.
func Binary() (string, error) {
	for _, p := range []string{os.Getenv("GPUWARM_VERSITYGW"), "/opt/gpuwarm/bin/versitygw"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("versitygw not found: run make setup (scripts/install-versitygw.sh) or set GPUWARM_VERSITYGW")
}

// Start starts a server storing its buckets under dir, on a free port.
func Start(dir string) (*Server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
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
	s.logs.Reset()
	cmd.Stdout, cmd.Stderr = &s.logs, &s.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("versitygw exited at start:\n%s", s.logs.String())
		default:
		}
		if c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Kill()
	return fmt.Errorf("versitygw did not listen on %s within 30s:\n%s", s.Addr, s.logs.String())
}

// Stop stops the server (the data stays in Dir).
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
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
	return s.logs.String()
}

// DataDir is where an object's bytes live in the posix backend.
func (s *Server) DataDir(bucket string) string { return filepath.Join(s.Dir, bucket) }
