package restore

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/cache"
	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/store"
	"github.com/gpuwarm/gpuwarm/store/filestore"
)

func needCRIU(t *testing.T) *CRIU {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	c, err := FindCRIU(context.Background())
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return c
}

var workloadBin string

func TestMain(m *testing.M) {
	dir, _ := os.MkdirTemp("", "gpuwarm-workload")
	workloadBin = filepath.Join(dir, "gpuwarm-workload")
	if out, err := exec.Command("go", "build", "-o", workloadBin, "../testing/workload/cmd/gpuwarm-workload").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// talker speaks the workload's protocol over pipes.
type talker struct {
	in  *os.File
	out *bufio.Reader
}

func newPipes(t *testing.T) (childIn, childOut *os.File, tk *talker) {
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	t.Cleanup(func() { inW.Close(); outR.Close() })
	return inR, outW, &talker{in: inW, out: bufio.NewReader(outR)}
}

func (tk *talker) ask(t *testing.T, req string) string {
	t.Helper()
	if _, err := tk.in.Write([]byte(req + "\n")); err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 1)
	go func() { l, _ := tk.out.ReadString('\n'); ch <- strings.TrimSpace(l) }()
	select {
	case l := <-ch:
		return l
	case <-time.After(60 * time.Second):
		t.Fatalf("no answer to %q", req)
		return ""
	}
}

type rig struct {
	c     *CRIU
	st    store.Store
	mnt   string
	srv   *fusefs.Server
	cache *cache.Cache
}

func newRig(t *testing.T) *rig {
	c := needCRIU(t)
	tmp := t.TempDir()
	st, _ := filestore.Open(filepath.Join(tmp, "store"))
	r := &rig{c: c, st: st, mnt: filepath.Join(tmp, "mnt")}
	r.remount(t, filepath.Join(tmp, "cache"))
	return r
}

func (r *rig) remount(t *testing.T, cacheDir string) {
	t.Helper()
	if r.srv != nil {
		r.srv.Unmount()
		r.cache.Close()
	}
	os.MkdirAll(r.mnt, 0o755)
	bc, err := cache.Open(r.st, cache.Config{Dir: cacheDir, MemBytes: 1 << 30, DiskBytes: 4 << 30})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := fusefs.Mount(r.mnt, fusefs.Options{Cache: bc, TagTTL: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.srv, r.cache = srv, bc
	t.Cleanup(func() { srv.Unmount(); bc.Close() })
}

// snapshot starts the workload, checks it, snapshots it under tag.
func (r *rig) snapshot(t *testing.T, tag string, mb int) string {
	t.Helper()
	in, out, tk := newPipes(t)
	cmd, err := Run(RunOptions{Args: []string{workloadBin, "--mb", itoa(mb)}, Stdin: in, Stdout: out, Stderr: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	in.Close()
	out.Close()
	ready, _ := tk.out.ReadString('\n')
	f := strings.Fields(ready)
	if len(f) < 2 || f[0] != "ready" {
		t.Fatalf("workload said %q", ready)
	}
	if tk.ask(t, "pid") != "1" {
		t.Fatal("workload is not PID 1 of its own namespace")
	}
	res, err := Snapshot(context.Background(), r.c, SnapshotOptions{PID: cmd.Process.Pid, Store: r.st})
	if err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if err := store.SetTag(context.Background(), r.st, tag, res.Image); err != nil {
		t.Fatal(err)
	}
	if res.PageBytes < int64(mb)<<20 {
		t.Fatalf("only %d page bytes for %d MB of state", res.PageBytes, mb)
	}
	t.Logf("snapshot %s: %d MB pages, dump %.2fs, total %v", res.Image.Short(), res.PageBytes>>20, res.DumpSeconds, res.Total)
	return f[1]
}

func (r *rig) restore(t *testing.T, tag string, lazy bool) (*Process, *talker) {
	t.Helper()
	in, out, tk := newPipes(t)
	p, err := Restore(context.Background(), r.c, Options{Mount: r.mnt, Name: tag, Store: r.st, Lazy: lazy, Stdin: in, Stdout: out})
	in.Close()
	out.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(); p.Wait() })
	return p, tk
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestSnapshotRestoreEagerAndLazy(t *testing.T) {
	r := newRig(t)
	want := r.snapshot(t, "wl", 64)
	for _, lazy := range []bool{false, true} {
		p, tk := r.restore(t, "wl", lazy)
		if got := tk.ask(t, "checksum"); got != want {
			t.Fatalf("lazy=%v: restored checksum %s, want %s", lazy, got, want)
		}
		res, err := p.WaitResident(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		reqs, bytes := p.Served()
		t.Logf("lazy=%v pid %d: prepare %v criu %v running %v resident %v; page server %d requests %d MB",
			lazy, p.PID, p.Timing.Prepare, p.Timing.CRIU, p.Timing.Running, res, reqs, bytes>>20)
		if lazy && bytes < 64<<20 {
			t.Fatalf("lazy restore served only %d bytes through gpuwarm's page server", bytes)
		}
		if tk.ask(t, "pid") != "1" {
			t.Fatal("restored process is not PID 1 of a fresh namespace")
		}
	}
}
