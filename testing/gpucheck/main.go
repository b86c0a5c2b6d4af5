// Command gpucheck is `make test-gpu` and `make bench-gpu`: on a machine
// with an NVIDIA GPU it packs a PyTorch model into a store, mounts it,
// boots the model cold from the mount (torch.compile, default settings),
// snapshots it with its GPU state, and restores it eagerly, lazily, twice in
// a row and by the manual baseline (criu restore from a local directory,
// then CUDA restore), checking that every restored copy answers
// bit-identically. Elsewhere it says why it skips.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/gpu"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/restore"
	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

var (
	mode    = flag.String("mode", "test", "test, bench, container (only the container checks), weights (the weights library's checks and figures), or driver (the CUDA driver's own checkpoint and restore in place, no CRIU)")
	sizes   = flag.String("gb", "1", "comma-separated model sizes in GB")
	script  = flag.String("script", "testing/gpu/torch_workload.py", "the PyTorch workload")
	workDir = flag.String("dir", "/var/tmp/gpuwarm-gpu", "scratch directory")
	baseDir = flag.String("baseline-dir", "/dev/shm/gpuwarm-baseline", "where the manual baseline's images are copied")
	passed  int
	failed  int
	ctx     = context.Background()
	log     = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	crit    *restore.CRIU
	st      store.Store
	mnt     string
	pyEnv   []string
	noLazy  = flag.Bool("no-lazy", false, "skip lazy restores")
	only    = flag.String("restores", "eager-cold,eager-warm,prefill,lazy,lazy-record,lazy-profile,remap,move,lazy-mount,lazy-criu,baseline", "which restores to run")
	diskGB  = flag.Int64("disk-cache-gb", 200, "disk tier of the block cache, GB")
	memGB   = flag.Int64("mem-cache-gb", 8, "memory tier of the block cache, GB")
	workers = flag.Int("lazy-workers", 16, "parallel copies of gpuwarm's lazy daemon")
	spin    = flag.Duration("fuse-spin", fusefs.DefaultSpin(), "how long the mount's polling thread reads /dev/fuse on after a request (0: go-fuse's sleeping readers; gpuwarm mount's default here)")
	uring   = flag.Bool("fuse-uring", false, "serve the mount's FUSE requests through io_uring queues (sets the fuse module's enable_uring for the run)")
	t0      = time.Now()
	// remapIdentity makes the next restore pass explicit GPU UUID pairs.
	remapIdentity bool
	// moveTo, when set, restores the next copy onto that GPU (index) and
	// checks through NVML that its memory is there.
	moveTo = -1
	bc     *cache.Cache
)

// phase prints a progress line with the time since start (a long GPU run
// must show where it is when a time limit cuts it).
func phase(format string, args ...any) {
	fmt.Printf("[%6.1fs] %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, args...))
}

func check(name string, err error) bool {
	if err != nil {
		failed++
		fmt.Printf("FAIL %s: %v\n", name, err)
		return false
	}
	passed++
	fmt.Printf("ok   %s\n", name)
	return true
}

func main() { os.Exit(run()) }

// run is main, returning the exit code so that its deferred cleanups (the
// mount, the fuse module's parameter) run before the process exits.
func run() int {
	flag.Parse()
	if _, err := os.Stat("/dev/nvidiactl"); err != nil {
		fmt.Println("gpucheck: skipping: no NVIDIA GPU on this machine (/dev/nvidiactl missing)")
		return 0
	}
	inv, err := gpu.ReadInventory()
	if err != nil {
		fmt.Println("gpucheck: skipping:", err)
		return 0
	}
	fmt.Printf("gpucheck %s: %s, driver %s, CUDA %s\n", *mode, inv.GPUs[0].Name, inv.Driver, inv.CUDAString())
	if *mode == "driver" {
		pyEnv = append(os.Environ(), "PYTHONUNBUFFERED=1")
		var rows []bu.Row
		for _, s := range strings.Split(*sizes, ",") {
			gb, _ := strconv.ParseFloat(s, 64)
			rows = append(rows, driverFloor(gb)...)
		}
		bu.Table(os.Stdout, "CUDA driver checkpoint/restore in place ("+inv.GPUs[0].Name+")", rows)
		fmt.Printf("gpucheck: %d passed, %d failed\n", passed, failed)
		if failed > 0 {
			os.Exit(1)
		}
		return 0
	}
	if crit, err = restore.FindCRIU(ctx); err != nil {
		fmt.Println("gpucheck:", err)
		os.Exit(1)
	}
	os.RemoveAll(*workDir)
	os.MkdirAll(*workDir, 0o755)
	storeDir := filepath.Join(*workDir, "store")
	fs, _ := filestore.Open(storeDir)
	st = fs
	mnt = filepath.Join(*workDir, "mnt")
	os.MkdirAll(mnt, 0o755)
	bc, err = cache.Open(st, cache.Config{Dir: filepath.Join(*workDir, "cache"), MemBytes: *memGB << 30, DiskBytes: *diskGB << 30, Fetches: 32})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	if *uring {
		restore, err := bu.SetFUSEURing(true)
		if err != nil {
			fmt.Println("gpucheck -fuse-uring:", err)
			return 1
		}
		defer restore()
	}
	srv, err := fusefs.Mount(mnt, fusefs.Options{Cache: bc, TagTTL: time.Millisecond, Logger: log, URing: *uring, Spin: *spin})
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	defer srv.Close()
	defer func() {
		fmt.Printf("FUSE requests answered through io_uring queues: %d, by the polling thread (-fuse-spin %v): %d\n", srv.URingRequests(), *spin, srv.PolledRequests())
	}()
	pyEnv = append(os.Environ(), "PYTHONUNBUFFERED=1")
	script, _ := filepath.Abs(*script)
	var rows []bu.Row
	var gbs []float64
	for _, s := range strings.Split(*sizes, ",") {
		gb, _ := strconv.ParseFloat(s, 64)
		gbs = append(gbs, gb)
		if *mode != "container" && *mode != "weights" {
			rows = append(rows, runSize(script, gb)...)
		}
	}
	if *mode == "weights" {
		rows = append(rows, weightsChecks(script, gbs)...)
		bu.Table(os.Stdout, "GPU restores with the weights library ("+inv.GPUs[0].Name+"), time to first answer", rows)
	} else if *containers || *mode == "container" {
		gb, _ := strconv.ParseFloat(strings.Split(*sizes, ",")[0], 64)
		rows = append(rows, containerChecks(script, gb)...)
	}
	if *mode == "bench" || *mode == "container" {
		bu.Table(os.Stdout, "GPU snapshot restore ("+inv.GPUs[0].Name+"), time to first answer", rows)
	}
	fmt.Printf("gpucheck: %d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

func runSize(script string, gb float64) []bu.Row {
	tag := fmt.Sprintf("model-%g", gb)
	wdir := filepath.Join(*workDir, "weights-"+tag)
	phase("%s: making %g GB of weights", tag, gb)
	out, err := exec.Command("python3", script, "--make", wdir, "--gb", fmt.Sprint(gb)).CombinedOutput()
	if !check(tag+": make weights", errorIf(err, out)) {
		return nil
	}
	phase("%s: packing", tag)
	res, err := pack.Dir(ctx, st, wdir, pack.Options{})
	if !check(tag+": pack weights", err) {
		return nil
	}
	store.SetTag(ctx, st, tag, res.ID)
	os.RemoveAll(wdir)

	// Cold boot from the mount: import, load, compile, warm up, answer.
	phase("%s: cold boot", tag)
	p := bu.NewPipes()
	start := time.Now()
	cmd, err := restore.Run(restore.RunOptions{Args: []string{"python3", script, "--weights", filepath.Join(mnt, tag)}, Env: pyEnv, Stdin: p.CIn, Stdout: p.COut, Stderr: os.Stderr, HostPIDs: true})
	if !check(tag+": start workload", err) {
		return nil
	}
	p.Child()
	ready, err := p.ReadLine(10 * time.Minute)
	if !check(tag+": cold boot", errorIf(err, []byte(ready))) {
		cmd.Process.Kill()
		return nil
	}
	want, err := p.Ask("infer 42", 90*time.Second)
	boot := time.Since(start)
	check(tag+": first answer", err)
	fmt.Printf("     cold boot to first answer %.2fs (%s)\n", boot.Seconds(), ready)

	// Snapshot with its GPU state.
	phase("%s: snapshot", tag)
	sopt := restore.SnapshotOptions{PID: cmd.Process.Pid, Store: st, Logger: log}
	cp := restore.GPUSnapshotHooks(&sopt, 60*time.Second, log)
	t := time.Now()
	snap, err := restore.Snapshot(ctx, crit, sopt)
	if err != nil {
		// The dump did not take the workload down: do not wait for it.
		cmd.Process.Kill()
	}
	cmd.Wait()
	if !check(tag+": snapshot", err) {
		return nil
	}
	meta := cp.Meta()
	if !check(tag+": GPU state recorded", errorIfNil(meta)) {
		return nil
	}
	fmt.Printf("     snapshot %.2fs: lock %.2fs, checkpoint %.2fs, criu dump %.2fs; %s of memory, GPU %s, processes %v\n",
		time.Since(t).Seconds(), cp.LockTime.Seconds(), cp.CheckpointTime.Seconds(), snap.DumpSeconds,
		pack.HumanBytes(snap.PageBytes), pack.HumanBytes(int64(meta.MemoryBytes)), meta.Processes)
	store.SetTag(ctx, st, tag+"-snap", snap.Image)
	gpuGB := float64(meta.MemoryBytes) / 1e9

	var rows []bu.Row
	restoreOnce := func(name string, opt restore.Options) (time.Duration, bool) {
		opt.Store = st
		if opt.Dir == "" {
			opt.Mount, opt.Name = mnt, tag+"-snap"
		}
		pp := bu.NewPipes()
		opt.Stdin, opt.Stdout, opt.Stderr, opt.Logger = pp.CIn, pp.COut, os.Stderr, log
		time.Sleep(2 * time.Second) // the previous copy's PIDs must be free again
		phase("%s: restore %s", tag, name)
		var targets []string
		if moveTo >= 0 {
			targets = []string{strconv.Itoa(moveTo)}
		}
		rep := restore.GPURestoreHooksOn(&opt, log, targets, nil)
		expectGPU := moveTo
		moveTo = -1
		if remapIdentity {
			// Drive the UUID-remapping restore with this GPU onto itself:
			// one GPU cannot show a real move, but the driver call is the same.
			before := opt.BeforeRestore
			opt.BeforeRestore = func(ctx context.Context, ann map[string]string) error {
				if err := before(ctx, ann); err != nil || rep.Meta == nil {
					return err
				}
				// Every GPU paired (what the driver wants for a process
				// that saw them all), those with state as the fallback.
				for i, u := range rep.Meta.UUIDs[:rep.Meta.Count] {
					id, err := gpu.ParseUUID(u)
					if err != nil {
						return err
					}
					rep.Placement.Pairs = append(rep.Placement.Pairs, gpu.GPUPair{Old: id, New: id})
					if i < len(rep.Meta.PerGPUMemory) && rep.Meta.PerGPUMemory[i] > 0 {
						rep.Placement.Fallback = append(rep.Placement.Fallback, gpu.GPUPair{Old: id, New: id})
					}
				}
				return nil
			}
			remapIdentity = false
		}
		start := time.Now()
		pr, err := restore.Restore(ctx, crit, opt)
		pp.Child()
		if !check(tag+": restore "+name, err) {
			return 0, false
		}
		defer func() { pr.Kill(); pr.Wait() }()
		got, err := pp.Ask("infer 42", 90*time.Second)
		first := time.Since(start)
		if !check(tag+": "+name+" answers bit-identically", errorIfDiff(got, want, err)) {
			if fi, err := pp.In.Stat(); err == nil {
				fmt.Printf("     the restored copy's stdin should be pipe:[%d] (written here)\n", fi.Sys().(*syscall.Stat_t).Ino)
			}
			printStacks(pr.PID)
			fmt.Println("     this process (the mount's server):")
			printStacks(os.Getpid())
			return 0, false
		}
		if expectGPU >= 0 {
			check(tag+": "+name+": the GPU memory is on GPU "+strconv.Itoa(expectGPU), onGPU(pr.PID, expectGPU))
		}
		resident, rerr := pr.WaitResident(ctx)
		check(tag+": "+name+" fully resident", rerr)
		fmt.Printf("     %s: first answer %.3fs; prepare %.3fs criu %.3fs gpu %.3fs (%.1f GB/s) running %.3fs resident %.3fs\n",
			name, first.Seconds(), pr.Timing.Prepare.Seconds(), pr.Timing.CRIU.Seconds(), rep.Duration.Seconds(), rep.GBps(),
			pr.Timing.Running.Seconds(), resident.Seconds())
		if ls := pr.LazyStats(); ls.Tasks > 0 {
			fmt.Printf("     lazy daemon: %d tasks, %d units, %d faults (%d unit copies, %d zero pages), %s copied (%s ahead of demand); restore done %.3fs, all in place %.3fs\n",
				ls.Tasks, ls.Units, ls.Faults, ls.FaultCopies, ls.ZeroPages, pack.HumanBytes(ls.Bytes), pack.HumanBytes(ls.AheadBytes),
				ls.RestoreDone.Seconds(), ls.Finished.Seconds())
		}
		rows = append(rows, bu.Row{Name: fmt.Sprintf("%s %.1f GB: %s", tag, gpuGB, name), Value: first.Seconds(), Unit: "s",
			Baseline: fmt.Sprintf("%s %.1f GB: cold boot", tag, gpuGB)})
		return first, true
	}
	rows = append(rows, bu.Row{Name: fmt.Sprintf("%s %.1f GB: cold boot", tag, gpuGB), Value: boot.Seconds(), Unit: "s"})
	enabled := func(name string) bool { return strings.Contains(","+*only+",", ","+name+",") }
	if enabled("eager-cold") {
		restoreOnce("gpuwarm eager (cold cache)", restore.Options{})
	}
	if enabled("eager-warm") {
		restoreOnce("gpuwarm eager (warm cache)", restore.Options{})
	}
	ix, err := restore.ManifestOf(ctx, st, mnt, tag+"-snap")
	if !check(tag+": snapshot manifest", err) {
		return rows
	}
	pages := restore.NewCachePages(bc, ix)
	if enabled("prefill") {
		// Warm only if an eager restore ran first; the first restore after
		// the snapshot reads every page from the store.
		state := "cold cache"
		if enabled("eager-cold") || enabled("eager-warm") {
			state = "warm cache"
		}
		restoreOnce("gpuwarm prefill (eager, parallel fill, "+state+")", restore.Options{Prefill: true, Pages: pages, LazyWorkers: *workers})
	}
	if !*noLazy {
		if enabled("lazy") {
			restoreOnce("gpuwarm lazy, address order", restore.Options{Lazy: true, Pages: pages, LazyWorkers: *workers})
		}
		if enabled("lazy-record") {
			// Faults only for the first seconds: the order the program (and
			// the CUDA restore) uses its memory in.
			rec := prefetch.NewRecorder(ix.ID)
			restoreOnce("gpuwarm lazy, recording a profile", restore.Options{Lazy: true, Pages: pages, LazyWorkers: *workers, Record: rec})
			if prof := rec.Profile(); check(tag+": lazy restore recorded a profile", errorUnlessRecorded(prof)) {
				old, _ := prefetch.Load(ctx, st, ix.ID)
				_, err := prefetch.Save(ctx, st, prefetch.Merge(old, prof))
				check(tag+": profile saved", err)
				fmt.Printf("     profile: %d chunks, %s touched first\n", len(prof.Entries), pack.HumanBytes(prof.Bytes()))
			}
		}
		if enabled("lazy-profile") {
			prof, err := prefetch.Load(ctx, st, ix.ID)
			if check(tag+": load the restore profile", errorIfNoProfile(prof, err)) {
				restoreOnce("gpuwarm lazy, profile order", restore.Options{Lazy: true, Pages: pages, LazyWorkers: *workers, Profile: prof})
			}
		}
		if enabled("remap") {
			remapIdentity = true
			restoreOnce("gpuwarm lazy, GPU UUID pairs given", restore.Options{Lazy: true, Pages: pages, LazyWorkers: *workers})
		}
		if enabled("move") {
			if other := otherGPU(meta); other < 0 {
				fmt.Printf("     skipping the move to another GPU: this machine has no second %s with %.1f GB free\n", meta.Model, gpuGB)
			} else {
				moveTo = other
				restoreOnce(fmt.Sprintf("gpuwarm lazy, moved to GPU %d", other), restore.Options{Lazy: true, Pages: pages, LazyWorkers: *workers})
			}
		}
		if enabled("lazy-mount") {
			restoreOnce("gpuwarm lazy, pages via the mount", restore.Options{Lazy: true, LazyWorkers: *workers})
		}
		if enabled("lazy-criu") {
			restoreOnce("CRIU lazy-pages daemon (gpuwarm page server)", restore.Options{Lazy: true, CRIULazyPages: true})
		}
	}
	// Manual baseline: the same images from a local directory.
	os.RemoveAll(*baseDir)
	if !enabled("baseline") {
		// skipped
	} else if out, err := exec.Command("cp", "-r", filepath.Join(mnt, tag+"-snap"), *baseDir).CombinedOutput(); check(tag+": copy images for the baseline", errorIf(err, out)) {
		phase("%s: copied the images for the baseline", tag)
		restoreOnce("manual baseline (criu local dir + CUDA restore)", restore.Options{Dir: *baseDir, DirAnnotations: ix.Annotations})
		os.RemoveAll(*baseDir)
	}
	// An incompatible worker is refused before anything starts.
	bad := *meta
	bad.Model = "NVIDIA A100-SXM4-80GB"
	ann := map[string]string{}
	for k, v := range ix.Annotations {
		ann[k] = v
	}
	ann[gpu.MetaAnnotation] = bad.Annotation()
	opt := restore.Options{Dir: filepath.Join(mnt, tag+"-snap"), DirAnnotations: ann, Store: st, Logger: log}
	restore.GPURestoreHooks(&opt, log)
	_, err = restore.Restore(ctx, crit, opt)
	check(tag+": incompatible snapshot refused", errorUnless(errors.Is(err, gpu.ErrIncompatible), fmt.Errorf("want ErrIncompatible, got %v", err)))
	return rows
}

// otherGPU is a GPU of the snapshot's model, other than the ones it held
// state on, with room for that state; -1 if there is none.
func otherGPU(meta *gpu.Meta) int {
	inv, err := gpu.ReadInventory()
	if err != nil {
		return -1
	}
	for i, g := range inv.GPUs {
		if g.Name == meta.Model && (i >= len(meta.PerGPUMemory) || meta.PerGPUMemory[i] == 0) && g.MemoryFree > meta.MemoryBytes {
			return i
		}
	}
	return -1
}

// onGPU checks through NVML that pid's GPU memory is on GPU idx only.
func onGPU(pid, idx int) error {
	inv, err := gpu.ReadInventory()
	if err != nil {
		return err
	}
	var where []string
	for i, g := range inv.GPUs {
		for _, p := range g.Processes {
			if p.PID == pid {
				where = append(where, fmt.Sprintf("GPU %d (%.1f GB)", i, float64(p.Memory)/1e9))
				if i != idx {
					return fmt.Errorf("pid %d holds memory on GPU %d", pid, i)
				}
			}
		}
	}
	if len(where) == 0 {
		return fmt.Errorf("NVML lists pid %d on no GPU", pid)
	}
	fmt.Printf("     NVML: pid %d on %s\n", pid, strings.Join(where, ", "))
	return nil
}

func errorIf(err error, out []byte) error {
	if err != nil {
		return fmt.Errorf("%v: %s", err, lastLines(string(out)))
	}
	return nil
}

func errorIfNil(m *gpu.Meta) error {
	if m == nil {
		return errors.New("no CUDA process was checkpointed")
	}
	return nil
}

func errorIfDiff(got, want string, err error) error {
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("answered %q, before the snapshot %q", got, want)
	}
	return nil
}

func errorUnlessRecorded(p *prefetch.Profile) error {
	if len(p.Entries) == 0 {
		return errors.New("no memory was touched while recording")
	}
	return nil
}

func errorIfNoProfile(p *prefetch.Profile, err error) error {
	if err == nil && p == nil {
		return errors.New("no profile stored for the snapshot (run -restores lazy-record,lazy-profile)")
	}
	return err
}

// errorUnless is nil if ok, else err (what was found instead).
func errorUnless(ok bool, err error) error {
	if ok {
		return nil
	}
	if err == nil {
		return errors.New("not so")
	}
	return err
}

func lastLines(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > 15 {
		l = l[len(l)-15:]
	}
	return strings.Join(l, "\n")
}

// printStacks prints where each thread of process pid (and of its
// children) waits in the kernel: what a restored process that does not
// answer is stuck on.
func printStacks(pid int) {
	for fd := 0; fd < 3; fd++ {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
		if err != nil {
			l = err.Error()
		}
		fmt.Printf("     fd %d: %s\n", fd, l)
	}
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	for _, t := range tasks {
		comm, _ := os.ReadFile(t + "/comm")
		wchan, _ := os.ReadFile(t + "/wchan")
		stat, _ := os.ReadFile(t + "/stat")
		state := ""
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) {
			state = string(stat[i+2 : i+3])
		}
		stack, _ := os.ReadFile(t + "/stack")
		fmt.Printf("     thread %s (%s) %s wchan %s\n", filepath.Base(t), strings.TrimSpace(string(comm)), state, wchan)
		if state == "D" || strings.Contains(string(stack), "fuse") {
			for _, l := range strings.Split(strings.TrimSpace(string(stack)), "\n") {
				fmt.Printf("         %s\n", l)
			}
		}
	}
	conns, _ := filepath.Glob("/sys/fs/fuse/connections/*/waiting")
	for _, c := range conns {
		b, _ := os.ReadFile(c)
		fmt.Printf("     %s: %s", c, b)
	}
}
