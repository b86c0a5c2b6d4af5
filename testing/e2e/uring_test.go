package e2e

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

// transports runs test once with requests through /dev/fuse and once
// through io_uring queues (--fuse-uring), with the fuse module's
// enable_uring parameter set for it (and put back after).
func transports(t *testing.T, test func(t *testing.T, flags []string)) {
	t.Run("dev-fuse", func(t *testing.T) { test(t, nil) })
	t.Run("io_uring", func(t *testing.T) {
		restore, err := bu.SetFUSEURing(true)
		if err != nil {
			t.Skip(err)
		}
		t.Cleanup(restore)
		test(t, []string{"--fuse-uring"})
	})
}

// checkTransport fails the test if a --fuse-uring mount answered nothing
// through its rings (or a /dev/fuse one did).
func checkTransport(t *testing.T, d *daemon, flags []string) {
	t.Helper()
	n := d.stats(t).FUSE.URingRequests
	if uring := slices.Contains(flags, "--fuse-uring"); uring != (n > 0) {
		t.Errorf("%d requests answered through io_uring queues (flags %v)\n%s", n, flags, d.logs.String())
	}
}

// TestURingSetupFailsAfterInit: once INIT has negotiated io_uring the
// kernel holds every request until the rings are registered; rings that
// cannot be set up (here: more entries than io_uring allows) must not leave
// a mount whose requests wait forever. The daemon says why and serves
// through /dev/fuse.
func TestURingSetupFailsAfterInit(t *testing.T) {
	requireFUSE(t)
	transports(t, func(t *testing.T, flags []string) {
		if flags == nil {
			t.Skip("an io_uring case")
		}
		tmp := t.TempDir()
		src, storeDir, mnt := filepath.Join(tmp, "src"), filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
		os.MkdirAll(src, 0o755)
		os.WriteFile(filepath.Join(src, "f"), []byte("through /dev/fuse\n"), 0o644)
		gw(t, "pack", src, "--tag", "t", "--store", storeDir)
		d := startMountNoRing(t, storeDir, mnt, filepath.Join(tmp, "cache"), "--fuse-uring", "--fuse-uring-entries", "100000")
		done := make(chan error, 1)
		var got []byte
		go func() {
			var err error
			got, err = os.ReadFile(filepath.Join(mnt, "t", "f"))
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil || string(got) != "through /dev/fuse\n" {
				t.Fatalf("read %q, %v", got, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("a read through the mount still waits after 10 s\n%s", d.logs.String())
		}
		if !strings.Contains(d.logs.String(), "io_uring queues could not be set up") {
			t.Errorf("the daemon did not say why it serves through /dev/fuse:\n%s", d.logs.String())
		}
		if n := d.stats(t).FUSE.URingRequests; n != 0 {
			t.Errorf("%d requests through rings that failed to set up", n)
		}
	})
}

// startMountNoRing is startMount for a --fuse-uring mount expected to fall
// back to /dev/fuse (no check that its rings answered).
func startMountNoRing(t *testing.T, storeURL, mnt, cacheDir string, extra ...string) *daemon {
	t.Helper()
	d := startMount(t, storeURL, mnt, cacheDir, extra...)
	d.ringless = true
	return d
}

// TestURingOffInKernel: --fuse-uring on a kernel that does not offer it
// (the fuse module's enable_uring off) serves through /dev/fuse and says
// how to turn it on.
func TestURingOffInKernel(t *testing.T) {
	requireFUSE(t)
	restore, err := bu.SetFUSEURing(false)
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(restore)
	tmp := t.TempDir()
	src, storeDir, mnt := filepath.Join(tmp, "src"), filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	gw(t, "pack", src, "--tag", "t", "--store", storeDir)
	d := startMountNoRing(t, storeDir, mnt, filepath.Join(tmp, "cache"), "--fuse-uring")
	if b, err := os.ReadFile(filepath.Join(mnt, "t", "f")); err != nil || string(b) != "x" {
		t.Fatalf("read %q, %v", b, err)
	}
	if !strings.Contains(d.logs.String(), "enable_uring") {
		t.Errorf("the daemon did not say how to turn io_uring on:\n%s", d.logs.String())
	}
	if n := d.stats(t).FUSE.URingRequests; n != 0 {
		t.Errorf("%d requests through rings the kernel does not offer", n)
	}
}

// TestSignalEndsWaitOnSlowStore: a process killed while it waits on the
// store ends at once. A lookup (the tag: 4 s away) waits for its answer
// even once the process is killed: the kernel sends the daemon an
// INTERRUPT (through /dev/fuse, also for a request answered through an
// io_uring queue), which must find the request and cancel it. A read
// (10 s for the file's one chunk) is readahead the process does not wait
// for once killed, but its exit closes the file, whose FLUSH must not queue
// behind that read on the ring of the CPU it ran on.
func TestSignalEndsWaitOnSlowStore(t *testing.T) {
	requireFUSE(t)
	transports(t, signalEndsWaitOnSlowStore)
}

func signalEndsWaitOnSlowStore(t *testing.T, flags []string) {
	_, storeDir, mnt, cacheDir := packedTree(t, 0)
	f := filepath.Join(mnt, "t", "exact-chunk.bin") // 1 MiB of random bytes
	killed := func(d *daemon, what string, name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Stdout = io.Discard
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			t.Fatalf("%s: ended before the store could have answered: %v", what, err)
		case <-time.After(time.Second):
		}
		start := time.Now()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			t.Logf("%s: ended %v after SIGTERM", what, time.Since(start).Round(time.Millisecond))
		case <-time.After(2 * time.Second):
			t.Errorf("%s: still waiting on the mount 2 s after SIGTERM\n%s", what, d.logs.String())
			<-exited
		}
	}
	d := startMount(t, storeDir+"?sim-latency=4s&sim-bandwidth=1e9", mnt, cacheDir, flags...)
	killed(d, "stat of a file under a tag", "stat", f)
	checkTransport(t, d, flags)
	d.stop(t)

	d = startMount(t, storeDir+"?sim-latency=1ms&sim-bandwidth=100000", mnt, cacheDir+"2", flags...)
	defer d.stop(t)
	if _, err := os.Stat(f); err != nil {
		t.Fatal(err)
	}
	killed(d, "read of a file", "cat", f)
	checkTransport(t, d, flags)
}
