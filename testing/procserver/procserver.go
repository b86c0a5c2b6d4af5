// Package procserver runs a test server program (the S3 server, the
// registry) as a child process on a loopback port: it finds the binary,
// picks a free port, keeps the first megabyte of what the program prints,
// waits until it is ready, and stops it. The packages of each server
// (testing/s3server, testing/registry) say what to run and how to use it.
package procserver

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/internal/findbin"
)

// Find returns the first of the path in environment variable env, the
// default paths and name in PATH that exists; hint says how to install it.
func Find(env string, defaults []string, name, hint string) (string, error) {
	p, err := findbin.Find(env, defaults, name, findbin.Exists)
	if err != nil {
		return "", fmt.Errorf("%s not found (%v): %s or set %s", name, err, hint, env)
	}
	return p, nil
}

// FreeAddr returns a loopback address with a port free a moment ago.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Listening is a readiness check: something accepts connections at addr.
func Listening(addr string) func() bool {
	return func() bool {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	}
}

// Proc is a running server program.
type Proc struct {
	what string
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	logs bytes.Buffer
}

// Start runs cmd (dying with this process) and waits up to limit for ready;
// what names the program in errors.
func Start(cmd *exec.Cmd, what string, ready func() bool, limit time.Duration) (*Proc, error) {
	p := &Proc{what: what, cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p, p
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", what, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(limit)
	for !ready() {
		select {
		case <-p.done:
			return nil, fmt.Errorf("%s exited at start:\n%s", what, p.Logs())
		default:
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("%s was not ready within %s:\n%s", what, limit, p.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p, nil
}

// Write keeps what the program prints, up to 1 MiB.
func (p *Proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.logs.Len() < 1<<20 {
		p.logs.Write(b)
	}
	return len(b), nil
}

// Logs returns what the program printed.
func (p *Proc) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// Stop ends the program: SIGTERM, then SIGKILL after 5 s.
func (p *Proc) Stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}
