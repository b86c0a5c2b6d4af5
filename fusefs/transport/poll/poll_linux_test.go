package poll

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/gpuwarm/gpuwarm/fusefs/transport/uring"
	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// TestOwnProtocolServer: the go-fuse in go.mod still lays Server out as
// OwnProtocolServer expects (else interrupts miss requests answered by the
// polling thread or the rings).
func TestOwnProtocolServer(t *testing.T) {
	srv := &fuse.Server{}
	ps, ok := OwnProtocolServer(srv)
	if !ok {
		t.Fatal("go-fuse's Server no longer starts with its protocolServer: see OwnProtocolServer")
	}
	if unsafe.Pointer(ps) != unsafe.Pointer(srv) {
		t.Fatal("not the server's own")
	}
}

// TestAdapt: the polling window widens through a burst the thread slept
// through, narrows after lulls, down to none, and opens again.
func TestAdapt(t *testing.T) {
	const max = 200 * time.Microsecond
	for _, c := range []struct {
		cur, gap, want time.Duration
	}{
		{max, 50 * time.Microsecond, max},          // a burst: stays wide
		{0, 50 * time.Microsecond, max / 8},        // a burst begins: opens
		{max / 8, 150 * time.Microsecond, max / 4}, // widens
		{max / 2, 150 * time.Microsecond, max},     // up to max
		{max, max, max},                            // the edge counts as a burst
		{max, max + 1, max / 2},                    // just past it, a lull: narrows
		{max / 8, 10 * time.Millisecond, max / 16}, // narrows
		{max / 16, 10 * time.Millisecond, 0},       // down to none
		{3 * max / 32, time.Second, 0},             // below max/16 after halving: none
		{0, time.Second, 0},                        // stays off while idle
		{max / 2, -time.Millisecond, max},          // a clock step back counts as a burst
	} {
		if got := adapt(c.cur, max, c.gap); got != c.want {
			t.Errorf("adapt(%v, %v, gap %v) = %v, want %v", c.cur, max, c.gap, got, c.want)
		}
	}
}

// TestPollingCost plays request arrivals through the loop's policy
// (poll for the window after an answer, adapt the window on each wakeup):
// a burst is read while polling; clusters of requests (LOOKUP, OPEN,
// FLUSH, RELEASE 5 us apart) every 2 ms cost a few percent of a core;
// requests 5 ms apart end up costing none.
func TestPollingCost(t *testing.T) {
	const max = 200 * time.Microsecond
	play := func(arrivals []time.Duration) (spun time.Duration, caught int) {
		window := max
		for i := 1; i < len(arrivals); i++ {
			gap := arrivals[i] - arrivals[i-1]
			if gap < window {
				spun += gap
				caught++
				continue
			}
			spun += window
			window = adapt(window, max, gap)
		}
		return spun, caught
	}
	var burst, clusters, sparse []time.Duration
	for i := 0; i < 1000; i++ {
		burst = append(burst, time.Duration(i)*50*time.Microsecond)
		sparse = append(sparse, time.Duration(i)*5*time.Millisecond)
		for j := 0; j < 4; j++ {
			clusters = append(clusters, time.Duration(i)*2*time.Millisecond+time.Duration(j)*5*time.Microsecond)
		}
	}
	if _, caught := play(burst); caught < 990 {
		t.Errorf("a burst of 1000 requests 50 us apart: %d read while polling", caught)
	}
	if spun, caught := play(clusters); spun > 2*time.Second/20 || caught < 2000 {
		t.Errorf("clusters every 2 ms for 2 s: polled %v (over 5%% of a core), %d of 4000 requests read while polling", spun, caught)
	}
	if spun, _ := play(sparse); spun > 10*max {
		t.Errorf("requests 5 ms apart: polled %v in all", spun)
	}
}

// testFile is a file of the test mount: slowOpen, its Open waits (so on
// the polling thread it answers WouldWait); direct, reads reach the
// filesystem as the caller made them (FOPEN_DIRECT_IO), 1 MiB at a time.
type testFile struct {
	fs.Inode
	data             []byte
	slowOpen, direct bool
	opens, releases  atomic.Int64
}

// testHandle is an open testFile; its release is counted.
type testHandle struct{ f *testFile }

var _ = (fs.FileReleaser)((*testHandle)(nil))

func (h *testHandle) Release(ctx context.Context) syscall.Errno {
	h.f.releases.Add(1)
	return 0
}

var (
	_ = (fs.NodeOpener)((*testFile)(nil))
	_ = (fs.NodeReader)((*testFile)(nil))
	_ = (fs.NodeGetattrer)((*testFile)(nil))
)

func (f *testFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if f.slowOpen {
		if uring.OnQueueThread() {
			return nil, 0, uring.WouldWait
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.opens.Add(1)
	if f.direct {
		return &testHandle{f}, fuse.FOPEN_DIRECT_IO, 0
	}
	return &testHandle{f}, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *testFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(f.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(f.data[off:min(off+int64(len(dest)), int64(len(f.data)))]), 0
}

func (f *testFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(len(f.data))
	return 0
}

type testRoot struct {
	fs.Inode
	files map[string]*testFile
}

var _ = (fs.NodeOnAdder)((*testRoot)(nil))

func (r *testRoot) OnAdd(ctx context.Context) {
	for name, f := range r.files {
		r.AddChild(name, r.NewPersistentInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG}), false)
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

// TestServeRealMount serves a real FUSE mount with the polling thread:
// files read back right, whether answered on the thread, by goroutines
// (an open that would wait, reads of 1 MiB) or by many readers at once;
// back-to-back opens are read while it polls; unmounting ends Wait, after
// which go-fuse's Serve returns.
func TestServeRealMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (FUSE mount)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	files := map[string]*testFile{
		"small": {data: pattern(4096, 1)},
		"big":   {data: pattern(3<<20+123, 2), direct: true},
		"slow":  {data: pattern(10000, 3), slowOpen: true},
	}
	dir := t.TempDir()
	mo := fuse.MountOptions{FsName: "fusepolltest", Name: "fusepolltest", MaxWrite: 1 << 20, Options: []string{"ro"}}
	rawFS := fs.NewNodeFS(&testRoot{files: files}, &fs.Options{MountOptions: mo})
	srv, fd, err := Mount(dir, rawFS, &mo)
	if err != nil {
		t.Fatal(err)
	}
	ps, ok := OwnProtocolServer(srv)
	if !ok {
		syscall.Unmount(dir, syscall.MNT_DETACH)
		t.Fatal("OwnProtocolServer")
	}
	var logs bu.LockedBuffer
	p, err := Serve(fd, ps, Options{MaxWrite: mo.MaxWrite, Spin: time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		syscall.Unmount(dir, syscall.MNT_DETACH)
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { <-p.Stopped(); srv.Serve(); p.Wait(); close(served) }()
	mounted := true
	t.Cleanup(func() {
		if mounted {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	if err := srv.WaitMount(); err != nil {
		t.Fatal(err)
	}
	// This process reads the mount it serves (see PollHack).
	if err := PollHack(dir); err != nil {
		t.Fatal(err)
	}

	check := func(name string) error {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		defer f.Close()
		var got bytes.Buffer
		buf := make([]byte, 1<<20)
		for {
			n, err := f.Read(buf)
			got.Write(buf[:n])
			if n == 0 || err != nil {
				break
			}
		}
		if !bytes.Equal(got.Bytes(), files[name].data) {
			return fmt.Errorf("%s: read %d bytes, not the file's %d", name, got.Len(), len(files[name].data))
		}
		return nil
	}
	for _, name := range []string{"small", "big", "slow"} {
		if err := check(name); err != nil {
			t.Fatal(err)
		}
	}
	all, async, _ := p.Requests()
	if all == 0 || async < 2 {
		t.Errorf("requests %d, by goroutines %d: want the slow open and the 1 MiB reads among the latter", all, async)
	}

	// Back to back: the thread reads most while it polls.
	_, _, caught0 := p.Requests()
	for i := 0; i < 200; i++ {
		f, err := os.Open(filepath.Join(dir, "small"))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if _, _, caught := p.Requests(); caught-caught0 < 100 {
		t.Errorf("of 200 opens and releases back to back, %d read while polling; want most", caught-caught0)
	}
	// Their RELEASEs, put off while the opens came, are all answered.
	small := files["small"]
	for deadline := time.Now().Add(5 * time.Second); small.releases.Load() != small.opens.Load() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if o, r := small.opens.Load(), small.releases.Load(); o != r {
		t.Errorf("%d opens, %d releases", o, r)
	}

	// Many readers at once, of every kind of answer.
	var wg sync.WaitGroup
	var failed atomic.Value
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				for _, name := range []string{"small", "big", "slow"} {
					if err := check(name); err != nil {
						failed.Store(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatal(err)
	}

	// Idle: no CPU to speak of (the window has passed: the thread sleeps).
	cpu0, wall0 := cpuTime(t), time.Now()
	time.Sleep(300 * time.Millisecond)
	if cpu, wall := cpuTime(t)-cpu0, time.Since(wall0); cpu > wall/10 {
		t.Errorf("idle: the process used %v of CPU in %v", cpu, wall)
	}

	if err := syscall.Unmount(dir, 0); err != nil {
		t.Fatalf("unmount: %v", err)
	}
	mounted = false
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("the poller or go-fuse's Serve did not return after the unmount")
	}
	if logs.Len() != 0 {
		t.Errorf("logged:\n%s", logs.String())
	}
}

// cpuTime is the CPU time the process has used.
func cpuTime(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
