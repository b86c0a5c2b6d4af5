package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"github.com/gpuwarm/gpuwarm/internal/fusemagic"
	"github.com/gpuwarm/gpuwarm/internal/proctree"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/restore/lazypages"
	"github.com/gpuwarm/gpuwarm/restore/pageserver"
	"google.golang.org/protobuf/proto"
)

// Options describe a restore.
type Options struct {
	// Mount is the gpuwarm mount point that presents the snapshot.
	Mount string
	// Name is the snapshot's tag (or image ID).
	Name string
	// Dir, instead of Mount and Name, restores plain CRIU images from a
	// local directory (with DirAnnotations as the snapshot's metadata).
	Dir            string
	DirAnnotations map[string]string
	// Store holds the snapshot's manifest (for its annotations); Index,
	// if the caller loaded it already, spares loading it again.
	Store store.Store
	Index *manifest.Index
	// Lazy starts the process before its memory is loaded.
	Lazy bool
	// Prefill restores eagerly through gpuwarm's lazy-pages daemon: CRIU
	// leaves the tree stopped, the daemon fills all of its memory with
	// parallel copies from the cache, then the tree resumes. The process
	// never runs with missing memory, as with an eager restore, but the
	// memory arrives at the daemon's speed instead of CRIU's sequential
	// reads. (Ignored with Lazy or Dir.)
	Prefill bool
	// Stdin, Stdout, Stderr replace the snapshot's standard streams when
	// those were pipes or sockets; nil means /dev/null.
	Stdin, Stdout, Stderr *os.File
	// WorkDir holds CRIU's logs and sockets (default: a temporary directory,
	// removed when the restore fails or the process is fully resident).
	WorkDir string
	// CRIURestore, if set, runs CRIU's restore instead of gpuwarm driving
	// it through go-criu: a container's restore goes through runc, which
	// recreates its namespaces, cgroups and standard streams. It restores
	// the images at imgDir with CRIU's work directory workDir (where
	// gpuwarm's lazy-pages daemon listens when lazyPages), leaves the tree
	// stopped when leaveStopped, and returns the root's PID on the host.
	CRIURestore func(ctx context.Context, imgDir, workDir string, lazyPages, leaveStopped bool) (int, error)
	// Start, if set, is when the restore began for its caller (work done
	// before Restore, such as preparing a container, counts in Timing);
	// zero means when Restore is called.
	Start time.Time
	// Progress, if set, sees a prefill's bytes in place so far and the
	// snapshot's memory, several times a second.
	Progress func(done, total int64)
	// BeforeRestore may refuse the worker (GPU checks) before anything runs.
	BeforeRestore func(ctx context.Context, ann map[string]string) error
	// AfterRestore runs on the restored, running tree (CUDA restore). If it
	// fails, the tree is killed.
	AfterRestore func(ctx context.Context, pid int) error
	// CRIULazyPages serves a lazy restore with CRIU's own lazy-pages daemon
	// (fed by gpuwarm's page server) instead of gpuwarm's (package
	// lazypages). It exists for comparison: CRIU's answers each fault with
	// one page and fills the rest one request at a time.
	CRIULazyPages bool
	// Pages is where lazy pages are read from (default: the pages files
	// as the mount presents them). A process that owns the block cache
	// passes CachePages to skip the FUSE round trip.
	Pages pageserver.PageSource
	// LazyWorkers is how many copies gpuwarm's lazy daemon runs at once
	// ahead of demand (default 8).
	LazyWorkers int
	// Profile, if set, is the order in which the lazy daemon fills memory
	// ahead of demand (the chunks of earlier restores' first touches).
	Profile *prefetch.Profile
	// Observe sees the first touch of every range of lazy memory (with
	// CRIU's daemon: every range served).
	Observe pageserver.Observer
	// Record, if set, sees the first touch of every chunk of lazy memory
	// as a chunk of the snapshot image (a prefetch.Recorder records a
	// profile).
	Record manifest.Observer
	// RecordFor is how long after the restore only the program's own page
	// faults bring memory in while recording (default 3s); then the rest is
	// filled ahead of demand.
	RecordFor time.Duration
	Logger    *slog.Logger
	// KeepCRIULog keeps CRIU's log of a restore that succeeded too (a
	// failed one's is always kept), for taking a slow restore apart.
	KeepCRIULog bool
}

// Timing is where a restore's time went.
type Timing struct {
	Prepare  time.Duration // checks, reading the manifest, starting servers
	CRIU     time.Duration // criu restore
	After    time.Duration // AfterRestore (the GPU phase)
	Running  time.Duration // from start until the process runs
	Resident time.Duration // from start until all memory is in place
}

// Process is a restored process tree.
type Process struct {
	PID         int
	Timing      Timing
	Annotations map[string]string
	Image       string
	Lazy        bool

	start    time.Time
	proc     *os.Process
	resident chan struct{}
	anchor   *anchor // lazy restores in a PID namespace: ties the tree to this process until resident
	resErr   error
	servedMu sync.Mutex
	sender   *pageserver.Sender
	daemon   *lazypages.Server
	cleanup  func()
	work     string // CRIU's work directory; removed by cleanup if ours
	waitOnce sync.Once
	waitErr  error
}

// ErrIncompatible says the snapshot cannot run on this worker.
var ErrIncompatible = errors.New("snapshot incompatible with this worker")

// Restore restores a snapshot from the mount. On any failure nothing it
// started is left running.
func Restore(ctx context.Context, c *CRIU, opt Options) (_ *Process, err error) {
	start := opt.Start
	if start.IsZero() {
		start = time.Now()
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	steps := NewSteps(log, "restore")
	dir := filepath.Join(opt.Mount, opt.Name)
	var ann map[string]string
	var ix *manifest.Index
	imageName := ""
	if opt.Dir != "" {
		// Plain CRIU images in a local directory (the benchmark baseline).
		dir, ann = opt.Dir, opt.DirAnnotations
	} else {
		if err := CheckMount(opt.Mount); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		id, err := imageIDAt(dir)
		if err != nil {
			return nil, fmt.Errorf("restore: %s is not an image on the mount (gpuwarm ls lists tags): %w", dir, err)
		}
		if ix = opt.Index; ix == nil || ix.ID != id {
			if ix, err = manifest.Load(ctx, opt.Store, id); err != nil {
				return nil, fmt.Errorf("restore: %w", err)
			}
		}
		ann, imageName = ix.Annotations, id.String()
	}
	if ann[AnnKind] != "snapshot" {
		return nil, fmt.Errorf("restore: %s is a %q image, not a snapshot", opt.Name, ann[AnnKind])
	}
	steps.Done("manifest")
	if err := compatible(c, ann); err != nil {
		return nil, err
	}
	steps.Done("compatible")
	if opt.Lazy || opt.Dir != "" {
		opt.Prefill = false
	}
	lazyPages := opt.Lazy || opt.Prefill // CRIU leaves anonymous memory to the daemon
	if lazyPages {
		if err := CheckUserfaultfd(); err != nil {
			return nil, err
		}
	}
	if opt.BeforeRestore != nil {
		if err := opt.BeforeRestore(ctx, ann); err != nil {
			return nil, err
		}
		steps.Done("before-restore hooks")
	}

	work := opt.WorkDir
	ownWork := work == ""
	if ownWork {
		if work, err = makeWorkDir("restore", log); err != nil {
			return nil, err
		}
	}
	p := &Process{Annotations: ann, Image: imageName, Lazy: opt.Lazy, start: start, resident: make(chan struct{}), work: work}
	var cleanups []func()
	p.cleanup = func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		if ownWork {
			os.RemoveAll(work)
		}
	}
	startTicks := uptimeTicks()
	defer func() {
		if err != nil {
			if p.PID > 0 {
				killTree(p.PID)
				reapRoot(p.PID, 60*time.Second)
			}
			p.cleanup()
			// CRIU restores the root as our child (RstSibling) and kills it
			// when the restore fails: reap it, or its zombie keeps the PID
			// taken and every later restore of the snapshot fails.
			reapZombies(startTicks)
		}
	}()

	imgDir, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { imgDir.Close() })
	workDir, err := os.Open(work)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { workDir.Close() })

	cr := makeCriu(c)
	if opt.CRIURestore == nil {
		if err := inheritStdio(cr, ann[AnnStdio], [3]*os.File{opt.Stdin, opt.Stdout, opt.Stderr}, &cleanups); err != nil {
			return nil, err
		}
	} else if opt.CRIULazyPages {
		return nil, errors.New("restore: CRIU's own lazy-pages daemon is not available for containers")
	}

	var lazyDaemon *exec.Cmd
	var lazyDone chan error
	if opt.Lazy && opt.CRIULazyPages {
		lazyDaemon, lazyDone, err = p.startLazy(ctx, c, dir, work, opt, log, &cleanups)
		if err != nil {
			return nil, err
		}
	} else if lazyPages {
		if lazyDone, err = p.startDaemon(dir, work, ix, opt, log, &cleanups); err != nil {
			return nil, err
		}
	}
	steps.Done("work directory and daemon")
	p.Timing.Prepare = time.Since(start)
	// Fan the daemon's end out: the GPU retry below and the residency
	// watcher both wait for it.
	daemonDone := make(chan struct{})
	var daemonErr error
	if lazyDone != nil {
		go func() {
			daemonErr = <-lazyDone
			p.servedMu.Lock()
			p.Timing.Resident = time.Since(start)
			p.servedMu.Unlock()
			close(daemonDone)
		}()
	}

	nfy := &pidNotify{}
	criuStart := time.Now()
	var rerr error
	if opt.CRIURestore != nil {
		var pid int
		pid, rerr = opt.CRIURestore(ctx, dir, work, lazyPages, opt.Prefill || opt.Lazy)
		nfy.pid = int32(pid)
	} else {
		rerr = cr.Restore(&rpc.CriuOpts{
			ImagesDirFd:       proto.Int32(int32(imgDir.Fd())),
			WorkDirFd:         proto.Int32(int32(workDir.Fd())),
			LogLevel:          proto.Int32(4),
			LogFile:           proto.String("restore.log"),
			RstSibling:        proto.Bool(true),
			ManageCgroupsMode: rpc.CriuCgMode_IGNORE.Enum(),
			ExtUnixSk:         proto.Bool(true),
			FileLocks:         proto.Bool(true),
			LazyPages:         proto.Bool(lazyPages),
			// Prefill resumes the tree once its memory is in place; a lazy
			// restore once the tree is anchored (anchor_linux.go).
			LeaveStopped: proto.Bool(opt.Prefill || opt.Lazy),
		}, nfy)
	}
	p.Timing.CRIU = time.Since(criuStart)
	steps.Done("criu")
	if opt.KeepCRIULog && rerr == nil {
		log.Info("CRIU's restore log kept", "path", keepLog(filepath.Join(work, "restore.log"), "restore"))
	}
	p.PID = int(nfy.pid)
	if rerr != nil {
		if lazyDaemon != nil {
			lazyDaemon.Process.Kill()
		}
		if opt.CRIURestore != nil {
			return nil, rerr
		}
		return nil, explainRestoreFailure(rerr, filepath.Join(work, "restore.log"), ann)
	}
	if p.PID <= 0 {
		return nil, errors.New("restore: CRIU reported success but no pid")
	}
	p.proc, _ = os.FindProcess(p.PID)
	if opt.Lazy {
		// Until every page is in place, this process's death kills the
		// tree (see anchor_linux.go). CRIU left the tree stopped, so it
		// runs no instruction unanchored.
		if p.anchor, err = anchorTree(p.PID); err != nil {
			killTree(p.PID)
			return nil, fmt.Errorf("restore: cannot tie the lazily restored tree to this process (%w); it was killed rather than left to run without its memory: restore with --prefill instead", err)
		}
		for _, pid := range proctree.Tree(p.PID) {
			syscall.Kill(pid, syscall.SIGCONT)
		}
		steps.Done("anchor")
	}
	if ownWork && lazyDaemon == nil {
		// CRIU is done with its work directory (its log is quoted only on
		// failure, and every restored task has handed gpuwarm's daemon its
		// userfaultfd): remove it now, so that a restore killed while lazy
		// memory is still arriving leaves nothing behind either.
		os.RemoveAll(work)
	}
	if opt.Prefill {
		// The tree is stopped: resume it once every page is in place.
		total, _ := strconv.ParseInt(ann[AnnPagesBytes], 10, 64)
		tick := time.NewTicker(200 * time.Millisecond)
	wait:
		for {
			select {
			case <-daemonDone:
				break wait
			case <-ctx.Done():
				tick.Stop()
				return nil, ctx.Err()
			case <-tick.C:
				if opt.Progress != nil && p.daemon != nil {
					opt.Progress(p.daemon.Stats().Bytes, total)
				}
			}
		}
		tick.Stop()
		steps.Done("prefill")
		if daemonErr != nil {
			return nil, fmt.Errorf("restore: filling memory: %w", daemonErr)
		}
		for _, pid := range proctree.Tree(p.PID) {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	if opt.AfterRestore != nil {
		t := time.Now()
		if err := opt.AfterRestore(ctx, p.PID); err != nil {
			if lazyDone == nil {
				return nil, fmt.Errorf("restore: after CRIU: %w", err)
			}
			// Drivers may pin (not fault in) memory that is still missing:
			// once every page is in place, try again.
			log.Warn("restore: the GPU phase failed while lazy memory was still arriving; retrying once it is all in place", "pid", p.PID, "err", err)
			select {
			case <-daemonDone:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if daemonErr != nil {
				return nil, fmt.Errorf("restore: lazy pages: %w (the GPU phase had failed: %v)", daemonErr, err)
			}
			if err := opt.AfterRestore(ctx, p.PID); err != nil {
				return nil, fmt.Errorf("restore: after CRIU (retried with all memory in place): %w", err)
			}
		}
		p.Timing.After = time.Since(t)
		steps.Done("after-restore hooks")
	}
	p.Timing.Running = time.Since(start)
	if !opt.Lazy { // eager, or prefilled: every page is in place
		p.Timing.Resident = p.Timing.Running
		close(p.resident)
		p.cleanup()
		return p, nil
	}
	go func() {
		<-daemonDone
		err := daemonErr
		p.servedMu.Lock()
		if err != nil {
			if opt.CRIULazyPages {
				err = fmt.Errorf("%w\n%s", err, criuLogTail(filepath.Join(work, "lazy-pages.log")))
			}
			p.resErr = fmt.Errorf("lazy-pages daemon: %w", err)
			log.Error("lazy restore failed; killing the restored tree so it cannot run with missing memory", "pid", p.PID, "err", p.resErr)
			killTree(p.PID)
		}
		p.servedMu.Unlock()
		if p.anchor != nil {
			p.anchor.Release() // all in place (or the tree killed): it runs on its own
		}
		// Clean up before saying the memory is all in place: a caller that
		// exits once it is (gpuwarm restore) would otherwise leave the work
		// directory behind.
		p.cleanup()
		close(p.resident)
	}()
	return p, nil
}

type pidNotify struct {
	criu.NoNotify
	pid int32
}

func (n *pidNotify) PostRestore(pid int32) error { n.pid = pid; return nil }

// WaitResident waits until all of the process's memory is in place and
// returns how long that took from the start of the restore.
func (p *Process) WaitResident(ctx context.Context) (time.Duration, error) {
	select {
	case <-p.resident:
		p.servedMu.Lock()
		defer p.servedMu.Unlock()
		return p.Timing.Resident, p.resErr
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Served reports the lazy pages served: requests (faults with gpuwarm's
// daemon) and bytes.
func (p *Process) Served() (requests, bytes int64) {
	if p.daemon != nil {
		st := p.daemon.Stats()
		return st.Faults, st.Bytes
	}
	if p.sender == nil {
		return 0, 0
	}
	return p.sender.Requests.Load(), p.sender.Bytes.Load()
}

// Wait waits for the restored tree's root to exit (it is our child).
func (p *Process) Wait() error {
	p.waitOnce.Do(func() {
		_, p.waitErr = p.proc.Wait()
	})
	return p.waitErr
}

// Kill kills the restored tree.
func (p *Process) Kill() { killTree(p.PID) }

// uptimeTicks is the time since boot in clock ticks (USER_HZ, 100/s), the
// unit of a process's start time in /proc/PID/stat.
func uptimeTicks() uint64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	var up float64
	fmt.Sscanf(string(b), "%f", &up)
	return uint64(up*100) - 1
}

// reapRoot waits (up to limit) for the killed root of a failed restore,
// our child: a process with GPU state can take seconds to die, and until it
// is reaped its PID stays taken.
func reapRoot(pid int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if got == pid || err != nil { // reaped, or not our child
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reapZombies waits for our dead children that started after since: what a
// failed restore left behind.
func reapZombies(since uint64) {
	self := os.Getpid()
	for _, p := range proctree.List() {
		if p.State == "Z" && p.PPID == self && p.Start >= since {
			var ws syscall.WaitStatus
			syscall.Wait4(p.PID, &ws, syscall.WNOHANG, nil)
		}
	}
}

// killTree kills a restored tree: its root (which takes a PID namespace
// down with it) and, for trees restored with host PIDs, every descendant.
func killTree(pid int) {
	for _, p := range proctree.Tree(pid) {
		syscall.Kill(p, syscall.SIGKILL)
	}
}

func (p *Process) startLazy(ctx context.Context, c *CRIU, dir, work string, opt Options, log *slog.Logger, cleanups *[]func()) (*exec.Cmd, chan error, error) {
	maps := map[uint64]*pageserver.Pagemap{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		var typ int
		var idStr string
		switch name := e.Name(); {
		case strings.HasPrefix(name, "pagemap-shmem-") && strings.HasSuffix(name, ".img"):
			typ, idStr = pageserver.TypeShmem, strings.TrimSuffix(strings.TrimPrefix(name, "pagemap-shmem-"), ".img")
		case strings.HasPrefix(name, "pagemap-") && strings.HasSuffix(name, ".img"):
			typ, idStr = pageserver.TypePID, strings.TrimSuffix(strings.TrimPrefix(name, "pagemap-"), ".img")
		default:
			continue
		}
		id, err := strconv.ParseUint(idStr, 10, 64)
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, nil, fmt.Errorf("restore: %w", err)
		}
		pm, err := pageserver.DecodePagemap(b)
		if err != nil {
			return nil, nil, fmt.Errorf("restore: %s: %w", e.Name(), err)
		}
		maps[pageserver.EncodeDst(typ, id)] = pm
	}
	src := &mountPages{dir: dir, files: map[uint32]*os.File{}}
	*cleanups = append(*cleanups, src.close)
	p.sender = pageserver.NewSender(maps, src, log)
	p.sender.Observe = opt.Observe
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	*cleanups = append(*cleanups, func() { l.Close() })
	// CRIU's daemon waits for an answer forever: when serving it fails,
	// it is killed, so that the restore fails instead of hanging.
	var daemon atomic.Pointer[os.Process]
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				if err := p.sender.Serve(context.Background(), conn); err != nil {
					log.Error("lazy page server failed; stopping CRIU's lazy-pages daemon", "err", err)
					if d := daemon.Load(); d != nil {
						d.Kill()
					}
				}
			}()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	cmd := exec.Command(c.Path, "lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", strconv.Itoa(port),
		"--images-dir", dir, "--work-dir", work, "-o", "lazy-pages.log", "-v4")
	cmd.Env = append(os.Environ(), "CRIU_FAULT=130")
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("restore: start criu lazy-pages: %w", err)
	}
	daemon.Store(cmd.Process)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	*cleanups = append(*cleanups, func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	// The restore connects to the daemon's socket: wait for it.
	sock := filepath.Join(work, "lazy-pages.socket")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-done:
			return nil, nil, fmt.Errorf("restore: criu lazy-pages exited at start (%v)\n%s", err, criuLogTail(filepath.Join(work, "lazy-pages.log")))
		default:
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("restore: criu lazy-pages did not create %s", sock)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cmd, done, nil
}

// mountPages reads pages files through the mount (and so the block cache).
type mountPages struct {
	dir   string
	mu    sync.Mutex
	files map[uint32]*os.File
}

func (m *mountPages) ReadPages(ctx context.Context, id uint32, off int64, dst []byte) error {
	m.mu.Lock()
	f, ok := m.files[id]
	if !ok {
		var err error
		f, err = os.Open(filepath.Join(m.dir, fmt.Sprintf("pages-%d.img", id)))
		if err != nil {
			m.mu.Unlock()
			return err
		}
		m.files[id] = f
	}
	m.mu.Unlock()
	_, err := f.ReadAt(dst, off)
	return err
}

func (m *mountPages) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, f := range m.files {
		f.Close()
	}
}

// inheritStdio hands CRIU new ends for the snapshot's pipes and sockets on
// fds 0-2 (their peers did not survive the dump), and the caller's files for
// standard streams that were regular files.
func inheritStdio(cr *criu.Criu, recorded string, files [3]*os.File, cleanups *[]func()) error {
	links := strings.Split(recorded, "|")
	seen := map[string]bool{}
	for fd := 0; fd < 3 && fd < len(links); fd++ {
		key := links[fd]
		f := files[fd]
		if strings.HasPrefix(key, "/") && !strings.HasPrefix(key, "/dev/") {
			// A regular file (a log): CRIU would reopen the same path, which
			// another worker may lack, or which has grown since (CRIU then
			// refuses it); hand it the caller's file or /dev/null instead.
			// CRIU names files by their path without the leading slash.
			key = strings.TrimPrefix(key, "/")
		} else if !(strings.HasPrefix(key, "pipe:[") || strings.HasPrefix(key, "socket:[")) {
			continue
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		if f == nil {
			mode := os.O_WRONLY
			if fd == 0 {
				mode = os.O_RDONLY
			}
			var err error
			if f, err = os.OpenFile(os.DevNull, mode, 0); err != nil {
				return err
			}
			*cleanups = append(*cleanups, func() { f.Close() })
		}
		cr.AddInheritFd(key, f)
	}
	return nil
}

// explainRestoreFailure leads with CRIU's cause, names the likely reason,
// and points at a copy of CRIU's log that outlives the work directory.
func explainRestoreFailure(err error, logPath string, ann map[string]string) error {
	b, _ := os.ReadFile(logPath)
	log := string(b)
	msg := "criu restore failed"
	if cause := firstError(log); cause != "" {
		msg += ": " + cause
	} else if m := strings.TrimSpace(err.Error()); !noise(m) {
		msg += ": " + m
	}
	if hint := restoreCause(log, ann); hint != "" {
		msg += "\n  likely cause: " + hint
	}
	return fmt.Errorf("%s\n%s", msg, criuLogTail(keepLog(logPath, "restore")))
}

// instructionFlags are the CPU flags that change which instructions a
// program may have chosen at start (and will keep using after restore).
func instructionFlag(f string) bool {
	for _, p := range []string{"sse", "ssse3", "avx", "amx", "fma", "bmi", "adx", "sha_ni", "aes", "vaes", "pclmulqdq",
		"vpclmulqdq", "f16c", "movbe", "popcnt", "rdrand", "rdseed", "xsave", "gfni", "erms", "fsrm", "abm", "cx16", "clwb", "clflushopt", "lzcnt"} {
		if strings.HasPrefix(f, p) {
			return true
		}
	}
	return false
}

// compatible refuses a snapshot this worker cannot run: another
// architecture, missing CPU instruction sets, an older kernel or CRIU.
func compatible(c *CRIU, ann map[string]string) error {
	if a := ann[AnnArch]; a != "" && a != runtime.GOARCH {
		return fmt.Errorf("%w: snapshot is %s, this worker %s", ErrIncompatible, a, runtime.GOARCH)
	}
	have := map[string]bool{}
	for _, f := range cpuFlags() {
		have[f] = true
	}
	var missing []string
	for _, f := range strings.Fields(ann[AnnCPUFlags]) {
		if instructionFlag(f) && !have[f] {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("%w: the snapshot was taken on a CPU with %s, which this one (%s) lacks; the program may use those instructions: restore on a worker like %q",
			ErrIncompatible, strings.Join(missing, " "), cpuModel(), ann[AnnCPUModel])
	}
	if k := ann[AnnKernel]; k != "" && olderKernel(kernelRelease(), k) {
		return fmt.Errorf("%w: the snapshot was taken on kernel %s and this worker runs the older %s", ErrIncompatible, k, kernelRelease())
	}
	if v := ann[AnnCRIU]; v != "" {
		if maj, err := strconv.Atoi(strings.SplitN(v, ".", 2)[0]); err == nil && maj > c.Major {
			return fmt.Errorf("%w: the snapshot was written by CRIU %s, this worker has %s: upgrade CRIU (make setup)", ErrIncompatible, v, c.Version)
		}
	}
	for _, m := range strings.Split(ann[AnnMounts], "|") {
		if m == "" {
			continue
		}
		if _, err := os.Stat(m); err != nil {
			return fmt.Errorf("%w: the snapshot's program files were at %s, which is not mounted here: run `gpuwarm mount %s` with the store that holds them", ErrIncompatible, m, filepath.Dir(m))
		}
	}
	return nil
}

func olderKernel(cur, snap string) bool {
	parse := func(s string) (int, int) {
		var a, b int
		fmt.Sscanf(s, "%d.%d", &a, &b)
		return a, b
	}
	ca, cb := parse(cur)
	sa, sb := parse(snap)
	return ca < sa || ca == sa && cb < sb
}

// CheckMount says what to do when no gpuwarm filesystem is mounted at
// mount.
func CheckMount(mount string) error {
	if !fusemagic.IsFUSE(mount) {
		return fmt.Errorf("no gpuwarm mount at %s: start `gpuwarm mount %s` first (or name the mount with --mount)", mount, mount)
	}
	return nil
}

// ManifestOf is a helper for callers that want the snapshot's manifest.
func ManifestOf(ctx context.Context, st store.Store, mount, name string) (*manifest.Index, error) {
	if err := CheckMount(mount); err != nil {
		return nil, err
	}
	id, err := imageIDAt(filepath.Join(mount, name))
	if errors.Is(err, syscall.ENOENT) {
		return nil, fmt.Errorf("no snapshot or image %q on the mount at %s (gpuwarm ls lists the tags): %w", name, mount, err)
	}
	if err != nil {
		return nil, err
	}
	return manifest.Load(ctx, st, id)
}
