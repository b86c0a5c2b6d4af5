package restore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/internal/proctree"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/restore/pageserver"
	"github.com/gpuwarm/gpuwarm/testing/workload"
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
		r.srv.Close()
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
	t.Cleanup(func() { srv.Close(); bc.Close() })
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
	p, err := Restore(context.Background(), r.c, Options{Mount: r.mnt, Name: tag, Store: r.st, Lazy: lazy, Stdin: in, Stdout: out, WorkDir: os.Getenv("GW_KEEP_WORK")})
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
		// Once resident, CRIU's work directory is gone: a worker restoring
		// all day must not fill its temporary directory.
		if _, err := os.Stat(p.work); !os.IsNotExist(err) {
			t.Fatalf("lazy=%v: work directory %s still there once resident (%v)", lazy, p.work, err)
		}
	}
}

func TestConcurrentRestores(t *testing.T) {
	r := newRig(t)
	want := r.snapshot(t, "wl", 48)
	type result struct {
		pid int
		sum string
		err error
	}
	results := make(chan result, 3)
	for i := 0; i < 3; i++ {
		go func(lazy bool) {
			in, out, tk := newPipes(t)
			p, err := Restore(context.Background(), r.c, Options{Mount: r.mnt, Name: "wl", Store: r.st, Lazy: lazy, Stdin: in, Stdout: out})
			in.Close()
			out.Close()
			if err != nil {
				results <- result{err: err}
				return
			}
			t.Cleanup(func() { p.Kill(); p.Wait() })
			tk.in.Write([]byte("checksum\n"))
			line, err := tk.out.ReadString('\n')
			results <- result{pid: p.PID, sum: strings.TrimSpace(line), err: err}
		}(i == 1)
	}
	pids := map[int]bool{}
	for i := 0; i < 3; i++ {
		res := <-results
		if res.err != nil {
			t.Fatal(res.err)
		}
		if res.sum != want {
			t.Fatalf("restore answered %q, want %s", res.sum, want)
		}
		pids[res.pid] = true
	}
	if len(pids) != 3 {
		t.Fatalf("three restores share pids: %v", pids)
	}
}

func TestRestoreAfterMountRestartWithColdCache(t *testing.T) {
	r := newRig(t)
	want := r.snapshot(t, "wl", 32)
	for i, lazy := range []bool{false, true} {
		r.remount(t, filepath.Join(t.TempDir(), "cold-cache"))
		_, tk := r.restore(t, "wl", lazy)
		if got := tk.ask(t, "checksum"); got != want {
			t.Fatalf("restore %d after remount: %s, want %s", i, got, want)
		}
		if s := r.cache.Stats(); s.Fetches == 0 {
			t.Fatalf("cold cache fetched nothing: %+v", s)
		}
	}
}

// running reports whether any process runs the workload binary.
func running(t *testing.T) []string {
	t.Helper()
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if exe, err := os.Readlink("/proc/" + e.Name() + "/exe"); err == nil && strings.HasPrefix(exe, workloadBin) {
			found = append(found, e.Name())
		}
	}
	return found
}

func TestCorruptPageChunkFailsCleanly(t *testing.T) {
	r := newRig(t)
	r.snapshot(t, "wl", 32)
	ix, err := ManifestOf(context.Background(), r.st, r.mnt, "wl")
	if err != nil {
		t.Fatal(err)
	}
	i, ok := ix.Lookup("pages-1.img")
	if !ok {
		t.Fatal("no pages-1.img in the snapshot")
	}
	// Corrupt a chunk in the middle of the memory.
	c := ix.Entries[i].Chunks[len(ix.Entries[i].Chunks)/2]
	fs := r.st.(interface{ Location() string })
	root := strings.TrimPrefix(fs.Location(), "file://")
	p := filepath.Join(root, "chunks", c.ID.String()[:2], c.ID.String())
	b, _ := os.ReadFile(p)
	b[len(b)-10] ^= 0xff
	os.WriteFile(p, b, 0o644)
	for i, lazy := range []bool{false, true, false} {
		prefill := i == 2
		r.remount(t, filepath.Join(t.TempDir(), "cache"))
		in, out, _ := newPipes(t)
		proc, err := Restore(context.Background(), r.c, Options{Mount: r.mnt, Name: "wl", Store: r.st, Lazy: lazy, Prefill: prefill, Stdin: in, Stdout: out})
		in.Close()
		out.Close()
		if err == nil {
			// Lazy: the process starts, then the missing page kills it.
			if !lazy {
				proc.Kill()
				t.Fatalf("eager (prefill %v) restore of a corrupt snapshot succeeded", prefill)
			}
			if _, err := proc.WaitResident(context.Background()); err == nil {
				t.Fatal("lazy restore of a corrupt snapshot became resident")
			}
			proc.Wait()
		} else {
			t.Logf("lazy=%v: %v", lazy, err)
		}
		time.Sleep(100 * time.Millisecond)
		if left := running(t); len(left) > 0 {
			t.Fatalf("lazy=%v: processes left running after a failed restore: %v", lazy, left)
		}
		if z := zombieChildren(); len(z) > 0 {
			t.Fatalf("lazy=%v: a failed restore left zombies holding their PIDs: %v", lazy, z)
		}
		if s := r.cache.Stats(); s.Corrupt == 0 {
			t.Fatalf("the corrupt chunk was not detected: %+v", s)
		}
	}
}

func TestClearErrors(t *testing.T) {
	c := needCRIU(t)
	// CRIU too old.
	dir := t.TempDir()
	old := filepath.Join(dir, "criu")
	os.WriteFile(old, []byte("#!/bin/sh\necho 'Version: 3.17'\n"), 0o755)
	if _, err := probe(context.Background(), old); err == nil || !strings.Contains(err.Error(), "too old") || !strings.Contains(err.Error(), "make setup") {
		t.Fatalf("old CRIU: %v", err)
	}
	t.Setenv("GPUWARM_CRIU", filepath.Join(dir, "missing"))
	t.Setenv("PATH", dir)
	// Incompatible CPU, kernel, mounts.
	cases := map[string]map[string]string{
		"cpu":    {AnnCPUFlags: "sse2 avx1024_quantum", AnnCPUModel: "Imaginary CPU"},
		"kernel": {AnnKernel: "99.1.0"},
		"arch":   {AnnArch: "riscv64"},
		"mount":  {AnnMounts: "/nonexistent-gpuwarm/python"},
		"criu":   {AnnCRIU: "9.0"},
	}
	for name, ann := range cases {
		err := compatible(c, ann)
		if !errors.Is(err, ErrIncompatible) {
			t.Errorf("%s: want ErrIncompatible, got %v", name, err)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if err := compatible(c, map[string]string{AnnCPUFlags: strings.Join(cpuFlags(), " "), AnnKernel: kernelRelease(), AnnArch: runtime.GOARCH}); err != nil {
		t.Fatalf("this worker refused its own snapshot: %v", err)
	}
	// No mount, unknown snapshot.
	if _, err := Restore(context.Background(), c, Options{Mount: dir, Name: "x"}); err == nil || !strings.Contains(err.Error(), "gpuwarm mount") {
		t.Fatalf("restore without a mount: %v", err)
	}
}

// TestPIDTaken: a process snapshotted outside gpuwarm run keeps its PID, so
// restoring it while the original runs fails, clearly, leaving nothing.
func TestPIDTaken(t *testing.T) {
	r := newRig(t)
	in, out, tk := newPipes(t)
	cmd := exec.Command(workloadBin, "--mb", "8")
	cmd.Stdin, cmd.Stdout = in, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	closeOnExecAll()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	in.Close()
	out.Close()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	tk.out.ReadString('\n')
	res, err := Snapshot(context.Background(), r.c, SnapshotOptions{PID: cmd.Process.Pid, Store: r.st, LeaveRunning: true})
	if err != nil {
		t.Fatal(err)
	}
	store.SetTag(context.Background(), r.st, "host", res.Image)
	if tk.ask(t, "ping") != "pong" {
		t.Fatal("--leave-running did not leave it running")
	}
	in2, out2, _ := newPipes(t)
	_, err = Restore(context.Background(), r.c, Options{Mount: r.mnt, Name: "host", Store: r.st, Stdin: in2, Stdout: out2})
	if err == nil || !strings.Contains(err.Error(), "PID") {
		t.Fatalf("restore over a live PID: %v", err)
	}
	checkLogKept(t, err)
	t.Logf("%v", strings.SplitN(err.Error(), "\n", 3)[:2])
}

// checkLogKept: the CRIU log a failure names still exists after the
// failed command cleaned its work directory up.
func checkLogKept(t *testing.T, err error) {
	t.Helper()
	m := regexp.MustCompile(`CRIU log (\S+):`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("the error names no CRIU log: %v", err)
	}
	if _, serr := os.Stat(m[1]); serr != nil {
		t.Fatalf("the CRIU log the error names is gone: %v", serr)
	}
	os.Remove(m[1])
}

// TestSnapshotOfOpenTCPConnection: CRIU cannot dump an established TCP
// connection; the error leads with that and what to do, not with the
// rlimit line CRIU logs first.
func TestSnapshotOfOpenTCPConnection(t *testing.T) {
	r := newRig(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	prog := fmt.Sprintf("import socket,time\ns=socket.create_connection(('127.0.0.1',%d))\nprint('connected',flush=True)\ntime.sleep(120)\n", port)
	in, out, tk := newPipes(t)
	cmd, err := Run(RunOptions{Args: []string{"python3", "-c", prog}, Stdin: in, Stdout: out, Stderr: os.Stderr})
	if err != nil {
		t.Fatal(err)
	}
	in.Close()
	out.Close()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if line, _ := tk.out.ReadString('\n'); !strings.HasPrefix(line, "connected") {
		t.Fatalf("workload said %q", line)
	}
	_, err = Snapshot(context.Background(), r.c, SnapshotOptions{PID: cmd.Process.Pid, Store: r.st, LeaveRunning: true})
	if err == nil {
		t.Fatal("a workload with an open TCP connection was snapshotted")
	}
	first := strings.SplitN(err.Error(), "\n", 2)[0]
	if strings.Contains(first, "RLIMIT") || !strings.Contains(err.Error(), "open TCP connection") {
		t.Fatalf("the error does not lead with the cause:\n%v", err)
	}
	checkLogKept(t, err)
	t.Logf("%s", strings.SplitN(err.Error(), "\n", 3)[:2])
}

func TestKerndatCacheWarmed(t *testing.T) {
	c, err := FindCRIU(context.Background())
	if err != nil {
		t.Skip(err)
	}
	// A cache from another boot is replaced.
	os.WriteFile(kdatBoot, []byte("another boot\n"), 0o644)
	if err := WarmKerndat(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kdatFile); err != nil {
		t.Fatalf("no CRIU kernel-feature cache after warming: %v", err)
	}
	out, err := exec.Command(c.Path, "check", "-v4", "--log-file", "/dev/stdout").CombinedOutput()
	if err != nil {
		t.Fatalf("criu check with the warmed cache: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Loaded kdat cache") {
		t.Fatalf("CRIU did not load the warmed cache:\n%s", lastLines(string(out), 20))
	}
}

// CRIU's own lazy-pages daemon, fed by gpuwarm's page server, stays
// available for comparison.
func TestLazyRestoreWithCRIUDaemon(t *testing.T) {
	r := newRig(t)
	want := r.snapshot(t, "wl", 32)
	in, out, tk := newPipes(t)
	p, err := Restore(context.Background(), r.c, Options{Mount: r.mnt, Name: "wl", Store: r.st, Lazy: true, CRIULazyPages: true, Stdin: in, Stdout: out})
	in.Close()
	out.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Kill(); p.Wait() }()
	if got := tk.ask(t, "checksum"); got != want {
		t.Fatalf("checksum %s, want %s", got, want)
	}
	if _, err := p.WaitResident(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, bytes := p.Served(); bytes < 32<<20 {
		t.Fatalf("CRIU's daemon got only %d bytes from gpuwarm's page server", bytes)
	}
}

// A lazy restore records the order its memory is first used in; the next
// one fills memory in that order, straight from the block cache.
func TestLazyRestoreRecordsAndReplaysProfile(t *testing.T) {
	r := newRig(t)
	want := r.snapshot(t, "wl", 48)
	ix, err := ManifestOf(context.Background(), r.st, r.mnt, "wl")
	if err != nil {
		t.Fatal(err)
	}
	run := func(opt Options) *Process {
		in, out, tk := newPipes(t)
		opt.Mount, opt.Name, opt.Store, opt.Lazy, opt.Stdin, opt.Stdout = r.mnt, "wl", r.st, true, in, out
		p, err := Restore(context.Background(), r.c, opt)
		in.Close()
		out.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Kill(); p.Wait() })
		if got := tk.ask(t, "checksum"); got != want {
			t.Fatalf("checksum %s, want %s", got, want)
		}
		if _, err := p.WaitResident(context.Background()); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rec := prefetch.NewRecorder(ix.ID)
	// Faults alone for 3 s: the checksum's first touches of all 48 MB must
	// fit in that (1 s was too short once on a loaded machine).
	p := run(Options{Record: rec, RecordFor: 3 * time.Second})
	prof := rec.Profile()
	// The checksum reads all 48 MB of state while only faults bring memory
	// in: the profile holds at least those chunks, in first-touch order.
	if prof.Bytes() < 48<<20 {
		t.Fatalf("recorded %d chunks, %d bytes; want the workload's 48 MB", len(prof.Entries), prof.Bytes())
	}
	// The snapshot's other files (CRIU reads them all before the process
	// runs) come first, so that a replay brings them in before memory.
	var files []digest.ID
	isPages := map[int]bool{}
	for _, e := range pagesFiles(ix) {
		isPages[e] = true
	}
	for e, ent := range ix.Entries {
		if ent.Type == manifest.Regular && !isPages[e] {
			for _, c := range ent.Chunks {
				files = append(files, c.ID)
			}
		}
	}
	if len(files) == 0 || len(prof.Entries) < len(files) {
		t.Fatalf("%d chunks of image files, profile of %d", len(files), len(prof.Entries))
	}
	seen := map[digest.ID]bool{}
	for _, e := range prof.Entries[:len(files)] {
		seen[e.ID] = true
	}
	for _, id := range files {
		if !seen[id] {
			t.Fatalf("chunk %s of the snapshot's image files is not at the head of the profile", id.Short())
		}
	}
	if st := p.LazyStats(); st.AheadBytes > st.Bytes-48<<20 {
		t.Fatalf("while recording, %d of %d bytes were filled ahead of faults", st.AheadBytes, st.Bytes)
	}
	time.Sleep(1500 * time.Millisecond) // the PID namespace's PIDs are free again
	p2 := run(Options{Profile: prof, Pages: NewCachePages(r.cache, ix)})
	st := p2.LazyStats()
	t.Logf("recorded %d chunks (%d MB); replay: %+v", len(prof.Entries), prof.Bytes()>>20, st)
	if st.Bytes == 0 || st.AheadBytes == 0 {
		t.Fatalf("profile-order restore copied nothing ahead: %+v", st)
	}
}

// The profile a lazy restore records follows the order in which the
// program first uses its memory, not the address order the memory lies in
// (nor the daemon's fill order): the workload's "sample 8" reads every
// eighth 1 MiB block in a scattered order (0, 24, 16, 8 of 32), and the
// profile must list the chunks holding those blocks in that order.
func TestLazyRestoreRecordsTheProgramsOrder(t *testing.T) {
	const mb, k = 32, 8
	r := newRig(t)
	r.snapshot(t, "wl", mb)
	ix, err := ManifestOf(context.Background(), r.st, r.mnt, "wl")
	if err != nil {
		t.Fatal(err)
	}
	// The state the snapshot holds (the workload's default seed), so the
	// test knows the answer and which block each 4 KiB page belongs to.
	state := workload.Build(workload.Config{MB: mb, Seed: 1})
	req := "sample " + itoa(k)
	pageOf := map[[32]byte]int{}
	for b := 0; b < mb; b++ {
		blk := state.Block(b)
		for p := 0; p < len(blk); p += 4096 {
			pageOf[[32]byte(blk[p:p+32])] = b
		}
	}
	in, out, tk := newPipes(t)
	rec := prefetch.NewRecorder(ix.ID)
	p, err := Restore(context.Background(), r.c, Options{Mount: r.mnt, Name: "wl", Store: r.st, Lazy: true, Stdin: in, Stdout: out, Record: rec, RecordFor: 5 * time.Minute})
	in.Close()
	out.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Kill(); p.Wait() }()
	// The window is ended by the answer, not by a clock: on a busy machine
	// the request can come after any fixed window, and memory the daemon
	// fills ahead of it is no longer the program's to record.
	if got, want := tk.ask(t, req), state.Sample(k); got != want {
		t.Fatalf("%s answered %s, want %s", req, got, want)
	}
	p.EndRecording()
	if _, err := p.WaitResident(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Where in the profile each block first appears, and where the last of
	// its pages does: a unit of memory can hold the start of the next block
	// in memory, so a block's first page may come in with its neighbour's
	// read; its last page comes in with its own (unless both neighbours
	// were read before it, which this sample's spread order never does).
	first, whole := map[int]int{}, map[int]int{}
	seenPage := map[[32]byte]bool{}
	for i, e := range rec.Profile().Entries {
		b, release, err := r.cache.View(context.Background(), e.ID, e.Size, 0, int(e.Size))
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+32 <= len(b); off += 4096 {
			key := [32]byte(b[off : off+32])
			if blk, ok := pageOf[key]; ok && !seenPage[key] {
				seenPage[key] = true
				if _, seen := first[blk]; !seen {
					first[blk] = i
				}
				whole[blk] = i
			}
		}
		release()
	}
	order := workload.SampleOrder(mb, k)
	last := -1
	for n, blk := range order {
		pos, ok := whole[blk]
		if !ok {
			t.Fatalf("block %d, read by %s, is not in the recorded profile (profile at %v; lazy daemon %+v)\n%s", blk, req, first, p.LazyStats(), pagemapSummary(filepath.Join(r.mnt, "wl")))
		}
		if pos < last {
			t.Fatalf("block %d (read %d. by %s, order %v) is whole at %d in the profile, before the block read before it (at %d); first pages at %v, whole at %v", blk, n+1, req, order, pos, last, first, whole)
		}
		last = pos
	}
	// And not much else (a recorder that took the daemon's fill for the
	// program's would have all 32): a read block's units (up to 1 MiB each,
	// cut where the pages file's chunks are) reach into what lies beside it
	// in memory, which is the heap's choice: a neighbouring block, or a
	// small object and the block beyond it, on either side. 15 of 32 were
	// seen for 4 reads (1 run in 20 under stress).
	if len(first) > 5*len(order)+2 {
		t.Errorf("%d of the %d blocks are in the recorded profile; %s reads %d", len(first), mb, req, len(order))
	}
	t.Logf("order read %v; blocks in the profile at %v", order, first)
}

// zombieChildren lists our dead, unreaped children.
func zombieChildren() []int {
	var out []int
	for _, p := range proctree.List() {
		if p.State == "Z" && p.PPID == os.Getpid() {
			out = append(out, p.PID)
		}
	}
	return out
}

// Prefill: CRIU leaves the tree stopped while gpuwarm's daemon fills all of
// its memory, then it resumes: an eager restore at the daemon's speed.
func TestPrefillRestore(t *testing.T) {
	r := newRig(t)
	want := r.snapshot(t, "wl", 64)
	in, out, tk := newPipes(t)
	p, err := Restore(context.Background(), r.c, Options{Mount: r.mnt, Name: "wl", Store: r.st, Prefill: true, Stdin: in, Stdout: out})
	in.Close()
	out.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { p.Kill(); p.Wait() }()
	st := p.LazyStats()
	// No fault once CRIU handed the tree over: the program never ran on
	// missing memory. (CRIU 4.2's restorer touches a few lazy pages itself
	// before it is done; those faults come before RestoreDone.)
	if st.Bytes < 64<<20 || st.Faults != 0 && st.LastFault > st.RestoreDone {
		t.Fatalf("prefill: %+v; want all 64 MB copied before the process ran (no fault after CRIU was done)\n%s", st, pagemapSummary(filepath.Join(r.mnt, "wl")))
	}
	if p.Timing.Resident != p.Timing.Running {
		t.Fatalf("prefilled restore returned before its memory was in place: %+v", p.Timing)
	}
	if got := tk.ask(t, "checksum"); got != want {
		t.Fatalf("checksum %s, want %s", got, want)
	}
	t.Logf("prefill: running (= resident) after %v; %+v", p.Timing.Running, st)
}

// pagemapSummary says, for each task's pagemap in the snapshot at dir, how
// many pages its entries hold and how many are flagged lazy (what a lazy
// restore serves): for a failure that finds no lazy units.
func pagemapSummary(dir string) string {
	files, _ := filepath.Glob(filepath.Join(dir, "pagemap-*.img"))
	var b strings.Builder
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", filepath.Base(f), err)
			continue
		}
		pm, err := pageserver.DecodePagemap(raw)
		if err != nil {
			fmt.Fprintf(&b, "%s (%d bytes): %v\n", filepath.Base(f), len(raw), err)
			continue
		}
		var present, lazy uint64
		for _, e := range pm.Entries {
			if e.Flags&pageserver.PEPresent != 0 {
				present += e.NrPages
			}
			if e.Flags&pageserver.PELazy != 0 {
				lazy += e.NrPages
			}
		}
		fmt.Fprintf(&b, "%s (%d bytes): %d entries, %d pages present, %d lazy\n", filepath.Base(f), len(raw), len(pm.Entries), present, lazy)
	}
	b.WriteString(dumpLogLazyLines(dir))
	return b.String()
}

// dumpLogLazyLines quotes what CRIU's dump log (packed with the snapshot)
// says of lazy pages and VMAs: whether CRIU flagged pages lazy at all.
func dumpLogLazyLines(dir string) string {
	raw, err := os.ReadFile(filepath.Join(dir, "dump.log"))
	if err != nil {
		return "dump.log: " + err.Error() + "\n"
	}
	var b strings.Builder
	n := 0
	for _, l := range strings.Split(string(raw), "\n") {
		if (strings.Contains(l, "Pagemap generated") || strings.Contains(l, "lazy")) && n < 40 {
			b.WriteString("  dump.log: " + l + "\n")
			n++
		}
	}
	return b.String()
}

// A restore of a name the mount does not present, or with no mount at
// all, says which and what to do.
func TestManifestOfSaysWhatIsMissing(t *testing.T) {
	r := newRig(t)
	_, err := ManifestOf(context.Background(), r.st, t.TempDir(), "wl")
	if err == nil || !strings.Contains(err.Error(), "no gpuwarm mount at") {
		t.Fatalf("without a mount: %v", err)
	}
	_, err = ManifestOf(context.Background(), r.st, r.mnt, "nosuch")
	if err == nil || !strings.Contains(err.Error(), `no snapshot or image "nosuch" on the mount`) {
		t.Fatalf("an unknown name: %v", err)
	}
}
