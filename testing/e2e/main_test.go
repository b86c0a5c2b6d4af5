// Package e2e holds end-to-end tests of the gpuwarm binary with real FUSE
// mounts, real CRIU and a real S3 server. They need root and /dev/fuse; the
// Makefile's `make test` installs the rest.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/internal/fusemagic"
	"github.com/gpuwarm/gpuwarm/prefetch"
	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

var gpuwarmBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gpuwarm-e2e-bin")
	if err != nil {
		panic(err)
	}
	gpuwarmBin = filepath.Join(dir, "gpuwarm")
	args := []string{"build", "-o", gpuwarmBin}
	if os.Getenv("GPUWARM_E2E_RACE") != "" {
		// The daemons under the race detector (GORACE=log_path=... to
		// collect what it finds).
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, "../../cmd/gpuwarm")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build gpuwarm: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE mounts (run make test as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
}

// gw runs the gpuwarm binary and returns its stdout.
func gw(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(gpuwarmBin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("gpuwarm %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// daemon is a running `gpuwarm mount`.
type daemon struct {
	cmd   *exec.Cmd
	dir   string
	logs  *bu.LockedBuffer
	syncs int
	done  chan error
	// ringless: a --fuse-uring mount expected to serve through /dev/fuse.
	ringless bool
	killed   bool // by kill9
}

func startMount(t *testing.T, storeURL, mnt, cacheDir string, extra ...string) *daemon {
	t.Helper()
	args := append([]string{"mount", mnt, "--store", storeURL, "--cache-dir", cacheDir}, extra...)
	cmd := exec.Command(gpuwarmBin, args...)
	logs := &bu.LockedBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, dir: mnt, logs: logs, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fusemagic.IsFUSE(mnt) {
			break
		}
		select {
		case err := <-d.done:
			t.Fatalf("mount daemon exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			d.cmd.Process.Kill()
			t.Fatalf("mount did not appear at %s\n%s", mnt, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() { d.stop(t) })
	if slices.Contains(extra, "--fuse-uring") || slices.Contains(extra, "--fuse-spin=1ms") {
		// Before it stops (cleanups run last first): a daemon still
		// serving answered through its rings, or its polling thread.
		t.Cleanup(func() {
			if d.cmd.ProcessState == nil && !d.ringless {
				checkTransport(t, d, extra)
			}
		})
	}
	return d
}

// stop unmounts and waits for the daemon to exit cleanly.
func (d *daemon) stop(t *testing.T) {
	// A daemon that died on its own (a panic, a fatal error, a signal
	// no test sent it) fails the test, whatever the test saw of it.
	panicked := func() {
		if ps := d.cmd.ProcessState; ps != nil && ps.ExitCode() != 0 && !d.killed {
			t.Errorf("mount daemon at %s died on its own (%v):\n%s", d.dir, ps, d.logs.String())
		}
	}
	if d.cmd.ProcessState != nil {
		panicked()
		return
	}
	select {
	case <-d.done:
		panicked()
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("mount daemon exited with %v after SIGTERM\n%s", err, d.logs.String())
		}
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		syscall.Unmount(d.dir, syscall.MNT_DETACH)
		t.Errorf("mount daemon ignored SIGTERM\n%s", d.logs.String())
	}
}

func (d *daemon) kill9(t *testing.T) {
	d.killed = true
	d.cmd.Process.Kill()
	<-d.done
}

type mountStats struct {
	fusefs.Stats
	Prefetch map[string]prefetch.Stats `json:"prefetch"`
}

// logHas waits (up to 10 s) for the daemon's log to show substr. The log
// reaches the test through a pipe: a line the daemon wrote before the
// request the test just made may not be in the buffer yet.
func (d *daemon) logHas(substr string) bool {
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if strings.Contains(d.logs.String(), substr) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// syncLog waits until the daemon's log (with --debug) holds every request
// line it wrote before now: it looks up a name nobody else uses and waits
// for that request's line. go-fuse logs a request before it answers it, and
// the log reaches the test through a pipe, so a count taken right after a
// request returned can miss that request's line.
func (d *daemon) syncLog(t *testing.T) {
	t.Helper()
	d.syncs++
	name := fmt.Sprintf("gpuwarm-log-sync-%d-%d", os.Getpid(), d.syncs)
	os.Stat(filepath.Join(d.dir, name))
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(d.logs.String(), name); {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon's log never showed the lookup of %s (is --debug on?)", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (d *daemon) stats(t *testing.T) mountStats {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dir, ".stats"))
	if err != nil {
		t.Fatal(err)
	}
	var s mountStats
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("stats %q: %v", b, err)
	}
	return s
}

// waitRechecked waits until the daemon has re-hashed the disk-tier files an
// earlier daemon handed to the kernel (it serves them by passthrough only
// then).
func (d *daemon) waitRechecked(t *testing.T) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); d.stats(t).Disk.Unchecked > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("disk-tier files still waiting to be re-hashed after 30 s: %+v", d.stats(t).Disk)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyBuffer(h, f, make([]byte, 1<<20)); err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
