package e2e

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest"
	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
	"golang.org/x/sys/unix"
)

// transports runs test once with requests through /dev/fuse read by
// go-fuse's sleeping readers, once read by a polling thread (--fuse-spin,
// package fusefs/transport/poll) and once through io_uring queues (--fuse-uring), with
// the fuse module's enable_uring parameter set for it (and put back after).
func transports(t *testing.T, test func(t *testing.T, flags []string)) {
	t.Run("dev-fuse", func(t *testing.T) { test(t, []string{"--fuse-spin=0"}) })
	t.Run("dev-fuse-polling", func(t *testing.T) { test(t, []string{"--fuse-spin=1ms"}) })
	t.Run("io_uring", func(t *testing.T) {
		restore, err := bu.SetFUSEURing(true)
		if err != nil {
			t.Skip(err)
		}
		t.Cleanup(restore)
		test(t, []string{"--fuse-uring", "--fuse-spin=0"})
	})
}

// checkTransport fails the test if a mount did not answer through the
// transport its flags name: a --fuse-uring one through its rings, a
// polling one (--fuse-spin > 0) by its polling thread, and a /dev/fuse one
// through neither.
func checkTransport(t *testing.T, d *daemon, flags []string) {
	t.Helper()
	st := d.stats(t).FUSE
	uring := slices.Contains(flags, "--fuse-uring")
	polling := !uring && slices.ContainsFunc(flags, func(f string) bool {
		return strings.HasPrefix(f, "--fuse-spin=") && f != "--fuse-spin=0"
	})
	if uring != (st.URingRequests > 0) || polling != (st.PolledRequests > 0) {
		t.Errorf("%d requests answered through io_uring queues, %d by the polling thread (flags %v)\n%s", st.URingRequests, st.PolledRequests, flags, d.logs.String())
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
		if !slices.Contains(flags, "--fuse-uring") {
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
		if !d.logHas("io_uring queues could not be set up") {
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
	if !d.logHas("enable_uring") {
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
	src, storeDir, mnt, cacheDir := packedTree(t, 0)
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
	if _, err := os.Stat(f); err != nil {
		t.Fatal(err)
	}
	killed(d, "read of a file", "cat", f)
	checkTransport(t, d, flags)
	d.stop(t)

	// A signal the process handles (this Go process: SIGWINCH, with a
	// handler) interrupts the same wait, and must not fail the lookup: a
	// raw getxattr, which Go does not retry on EINTR, gets its answer.
	d = startMount(t, storeDir+"?sim-latency=1s&sim-bandwidth=1e9", mnt, cacheDir+"3", flags...)
	defer d.stop(t)
	// The signals go to this goroutine's thread, the one waiting.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	stop := make(chan struct{})
	var sent atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-sigs:
			case <-time.After(10 * time.Millisecond):
				unix.Tgkill(os.Getpid(), tid, syscall.SIGWINCH)
				sent.Add(1)
			}
		}
	}()
	defer close(stop)
	buf := make([]byte, 128)
	n, err := syscall.Getxattr(filepath.Join(mnt, "t"), manifest.ImageXattr, buf)
	if err != nil {
		t.Fatalf("getxattr under a slow tag, %d signals sent meanwhile: %v\n%s", sent.Load(), err, d.logs.String())
	}
	t.Logf("getxattr answered (%d bytes) through %d signals", n, sent.Load())
	// Likewise a page fault on a mapped file, which the kernel answers
	// with a read of its own (no readahead: the mapping is read at
	// random) that waits for its chunk (1 s away). Failing that read
	// would be a SIGBUS for the program.
	file, err := os.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	m, err := unix.Mmap(int(file.Fd()), 0, 1<<20, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	if err := unix.Madvise(m, unix.MADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	before := sent.Load()
	page, fault := touch(m[:4096])
	if fault != nil {
		t.Fatalf("a page fault waiting on the store, %d signals sent meanwhile: %v", sent.Load()-before, fault)
	}
	want, _ := os.ReadFile(filepath.Join(src, "exact-chunk.bin"))
	if !bytes.Equal(page, want[:4096]) {
		t.Fatal("the mapping holds wrong bytes")
	}
	t.Logf("a page fault waiting on the store answered through %d signals", sent.Load()-before)
	checkTransport(t, d, flags)
}

// touch copies b, a mapping, turning a fault (SIGBUS) into an error.
func touch(b []byte) (out []byte, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("fault: %v", r)
		}
	}()
	return append([]byte(nil), b...), nil
}
