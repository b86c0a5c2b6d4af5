package restore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"github.com/gpuwarm/gpuwarm/internal/mountinfo"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/gc"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/restore/pageserver"
	"google.golang.org/protobuf/proto"
)

// Annotations a snapshot image carries.
const (
	AnnKind        = "gpuwarm.kind" // "snapshot"
	AnnCRIU        = "gpuwarm.criu.version"
	AnnKernel      = "gpuwarm.kernel"
	AnnArch        = "gpuwarm.arch"
	AnnCPUFlags    = "gpuwarm.cpu.flags"
	AnnCPUModel    = "gpuwarm.cpu.model"
	AnnCreated     = "gpuwarm.created"
	AnnPID         = "gpuwarm.pid"
	AnnCmdline     = "gpuwarm.cmdline"
	AnnStdio       = "gpuwarm.stdio" // fd0|fd1|fd2 link targets, e.g. pipe:[123]
	AnnMounts      = "gpuwarm.mounts"
	AnnPagesBytes  = "gpuwarm.pages.bytes"
	AnnImagesBytes = "gpuwarm.images.bytes"
	AnnDumpSeconds = "gpuwarm.dump.seconds"
	AnnLayout      = "gpuwarm.pageserver.layout"
)

// SnapshotOptions describe a snapshot.
type SnapshotOptions struct {
	PID          int
	LeaveRunning bool
	Store        store.Store
	// WorkDir holds the small CRIU images and logs while dumping (default:
	// a temporary directory, removed afterwards). Pages never go there.
	WorkDir string
	// Annotations are added to the image (the GPU layer records its state).
	Annotations map[string]string
	// Dump, if set, runs CRIU's dump instead of gpuwarm driving it through
	// go-criu: a container is dumped through runc, which knows its
	// namespaces, mounts and cgroups. It writes the CRIU images to imgDir,
	// with CRIU's work directory workDir, and sends the pages to the page
	// server at pageServer (ADDRESS:PORT).
	Dump func(ctx context.Context, imgDir, workDir, pageServer string) error
	// Progress, if set, sees the bytes of memory the page server has
	// received so far, several times a second.
	Progress func(received int64)
	// Hooks run around the dump (CUDA checkpoint before, restore after).
	BeforeDump func(ctx context.Context) error
	AfterDump  func(ctx context.Context, dumpErr error) error
	Logger     *slog.Logger
}

// SnapshotResult describes a stored snapshot.
type SnapshotResult struct {
	Image       digest.ID
	Pack        *pack.Result
	PageBytes   int64
	NewBytes    int64
	DumpSeconds float64
	Total       time.Duration
}

func makeCriu(c *CRIU) *criu.Criu {
	// Hardware breakpoints do not fire in some virtual machines (CRIU then
	// waits forever for the parasite to return); CRIU's no-breakpoints mode
	// single-steps the cure with PTRACE_SYSCALL instead, which works
	// everywhere at a negligible cost.
	os.Setenv("CRIU_FAULT", "130")
	cr := criu.MakeCriu()
	cr.SetCriuPath(c.Path)
	return cr
}

// Snapshot dumps the process tree rooted at opt.PID into the store. Its
// pages stream through gpuwarm's page server into chunks; the rest of the
// CRIU images are packed beside them.
func Snapshot(ctx context.Context, c *CRIU, opt SnapshotOptions) (*SnapshotResult, error) {
	start := time.Now()
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := syscall.Kill(opt.PID, 0); err != nil {
		return nil, fmt.Errorf("snapshot: no process %d: %w", opt.PID, err)
	}
	meta, err := describe(opt.PID)
	if err != nil {
		return nil, err
	}
	work := opt.WorkDir
	if work == "" {
		if work, err = makeWorkDir("dump", log); err != nil {
			return nil, err
		}
		defer os.RemoveAll(work)
	}
	imgDir := filepath.Join(work, "images")
	if err := os.MkdirAll(imgDir, 0o700); err != nil {
		return nil, err
	}

	// The page server: CRIU connects once and streams every pagemap.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("snapshot: page server: %w", err)
	}
	defer l.Close()
	recv := pageserver.NewReceiver(opt.Store, pageserver.ReceiverOptions{Logger: log})
	pctx, cancelPS := context.WithCancel(ctx)
	defer cancelPS()
	psDone := make(chan error, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			psDone <- fmt.Errorf("page server: %w", err)
			return
		}
		defer conn.Close()
		go func() { <-pctx.Done(); conn.Close() }()
		psDone <- recv.Serve(pctx, conn)
	}()

	// A large dump takes minutes: say where it is.
	phase := atomicString("GPU checkpoint")
	if opt.BeforeDump == nil {
		phase.set("criu dump")
	}
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	if opt.Progress != nil {
		fast := time.NewTicker(200 * time.Millisecond)
		defer fast.Stop()
		go func() {
			for {
				select {
				case <-fast.C:
					got, _, _ := recv.Stats()
					opt.Progress(got)
				case <-pctx.Done():
					return
				}
			}
		}()
	}
	go func() {
		for {
			select {
			case <-tick.C:
			case <-pctx.Done():
				return
			}
			got, _, _ := recv.Stats()
			log.Info("snapshot in progress", "pid", opt.PID, "phase", phase.get(), "seconds", int(time.Since(start).Seconds()),
				"pages_received", got, "criu_log", lastLogLine(filepath.Join(imgDir, "dump.log")))
		}
	}()
	if opt.BeforeDump != nil {
		if err := opt.BeforeDump(ctx); err != nil {
			return nil, err
		}
	}
	phase.set("criu dump")
	d, err := os.Open(imgDir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	port := l.Addr().(*net.TCPAddr).Port
	dumpStart := time.Now()
	var dumpErr error
	if opt.Dump != nil {
		cwork := filepath.Join(work, "criu")
		dumpErr = opt.Dump(ctx, imgDir, cwork, fmt.Sprintf("127.0.0.1:%d", port))
	} else {
		cr := makeCriu(c)
		dumpErr = cr.Dump(&rpc.CriuOpts{
			ImagesDirFd:       proto.Int32(int32(d.Fd())),
			Pid:               proto.Int32(int32(opt.PID)),
			LeaveRunning:      proto.Bool(opt.LeaveRunning),
			LogLevel:          proto.Int32(4),
			LogFile:           proto.String("dump.log"),
			ManageCgroupsMode: rpc.CriuCgMode_IGNORE.Enum(),
			ExtUnixSk:         proto.Bool(true),
			FileLocks:         proto.Bool(true),
			Ps:                &rpc.CriuPageServerInfo{Address: proto.String("127.0.0.1"), Port: proto.Int32(int32(port))},
		}, nil)
	}
	dumpSecs := time.Since(dumpStart).Seconds()
	if dumpErr != nil && opt.Dump == nil {
		dumpErr = explainDumpFailure(opt.PID, dumpErr, filepath.Join(imgDir, "dump.log"))
	} else if dumpErr != nil {
		b, _ := os.ReadFile(filepath.Join(work, "criu", "dump.log"))
		if hint := dumpCause(string(b)); hint != "" {
			dumpErr = fmt.Errorf("%w\n  likely cause: %s", dumpErr, hint)
		}
	}
	phase.set("after dump")
	if opt.AfterDump != nil {
		if err := opt.AfterDump(ctx, dumpErr); err != nil && dumpErr == nil {
			dumpErr = err
		}
	}
	if dumpErr != nil {
		cancelPS()
		return nil, dumpErr
	}
	select {
	case err := <-psDone:
		if err != nil {
			return nil, fmt.Errorf("snapshot: page server: %w", err)
		}
	case <-time.After(2 * time.Minute):
		return nil, errors.New("snapshot: CRIU finished but the page server never saw the session close")
	}

	phase.set("storing images")
	// Pagemaps are small: write them as images; the pages files are chunk
	// lists already in the store.
	now := time.Now().UnixNano()
	var extra []manifest.Entry
	for _, r := range recv.Results() {
		if err := os.WriteFile(filepath.Join(imgDir, r.Name), r.Pagemap.Encode(), 0o644); err != nil {
			return nil, err
		}
		extra = append(extra, manifest.Entry{Path: r.PagesName, Type: manifest.Regular, Mode: 0o644,
			Mtime: now, Size: r.Size, Chunks: r.Chunks})
	}
	pageBytes, newBytes, layout := recv.Stats()
	ann := map[string]string{
		AnnKind:        "snapshot",
		AnnCRIU:        c.Version,
		AnnKernel:      kernelRelease(),
		AnnArch:        runtime.GOARCH,
		AnnCPUFlags:    strings.Join(cpuFlags(), " "),
		AnnCPUModel:    cpuModel(),
		AnnCreated:     time.Now().UTC().Format(time.RFC3339),
		AnnPID:         strconv.Itoa(opt.PID),
		AnnCmdline:     meta.cmdline,
		AnnStdio:       strings.Join(meta.stdio[:], "|"),
		AnnPagesBytes:  strconv.FormatInt(pageBytes, 10),
		AnnDumpSeconds: strconv.FormatFloat(dumpSecs, 'f', 3, 64),
		AnnLayout:      strconv.Itoa(int(layout)),
	}
	if len(meta.mounts) > 0 {
		ann[AnnMounts] = strings.Join(meta.mounts, "|")
	}
	if len(meta.depends) > 0 {
		ann[gc.DependsAnnotation] = strings.Join(meta.depends, ",")
	}
	for k, v := range opt.Annotations {
		ann[k] = v
	}
	if more := ann[annDependsExtra]; more != "" {
		delete(ann, annDependsExtra)
		if d := ann[gc.DependsAnnotation]; d != "" {
			more = d + "," + more
		}
		ann[gc.DependsAnnotation] = more
	}
	res, err := pack.Dir(ctx, opt.Store, imgDir, pack.Options{Annotations: ann, Extra: extra, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("snapshot: store images: %w", err)
	}
	return &SnapshotResult{Image: res.ID, Pack: res, PageBytes: pageBytes, NewBytes: newBytes + res.NewBytes,
		DumpSeconds: dumpSecs, Total: time.Since(start)}, nil
}

type procMeta struct {
	cmdline string
	stdio   [3]string
	mounts  []string // gpuwarm mount paths the tree uses: MOUNTPOINT/<tag>
	depends []string // image IDs behind them
}

// describe records what a restore must check or recreate: the command, the
// standard streams, and which gpuwarm images the process has open or mapped.
func describe(pid int) (*procMeta, error) {
	m := &procMeta{}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, fmt.Errorf("snapshot: pid %d: %w", pid, err)
	}
	m.cmdline = strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	for fd := 0; fd < 3; fd++ {
		m.stdio[fd], _ = os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	}
	mounts := gpuwarmMounts()
	if len(mounts) == 0 {
		return m, nil
	}
	used := map[string]bool{}
	var paths []string
	if f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid)); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if fields := strings.Fields(sc.Text()); len(fields) >= 6 {
				paths = append(paths, fields[5])
			}
		}
		f.Close()
	}
	if fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		for _, fd := range fds {
			if t, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil {
				paths = append(paths, t)
			}
		}
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil {
		paths = append(paths, cwd)
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
		paths = append(paths, exe)
	}
	for _, p := range paths {
		for _, mp := range mounts {
			rel, ok := strings.CutPrefix(p, mp+"/")
			if !ok {
				continue
			}
			parts := strings.SplitN(rel, "/", 3)
			top := parts[0]
			if (top == manifest.ByIDDir || top == manifest.RootfsDir) && len(parts) > 1 {
				top += "/" + parts[1]
			}
			used[mp+"/"+top] = true
		}
	}
	for p := range used {
		m.mounts = append(m.mounts, p)
	}
	sort.Strings(m.mounts)
	// Resolve what the mount shows now: the image's root inode is not
	// enough, so read the image ID the daemon exposes.
	for _, p := range m.mounts {
		if id, err := imageIDAt(p); err == nil {
			m.depends = append(m.depends, id.String())
		}
	}
	return m, nil
}

// gpuwarmMounts lists the mount points of gpuwarm filesystems.
func gpuwarmMounts() []string {
	ms, err := mountinfo.Read("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, m := range ms {
		if m.FSType == "fuse.gpuwarm" {
			out = append(out, m.Point)
		}
	}
	return out
}

// imageIDAt reads the image ID of MOUNTPOINT/<tag> from its xattr.
func imageIDAt(dir string) (digest.ID, error) {
	buf := make([]byte, 128)
	n, err := syscall.Getxattr(dir, manifest.ImageXattr, buf)
	if err != nil {
		return digest.Zero, err
	}
	return digest.Parse(string(buf[:n]))
}

// explainDumpFailure leads with CRIU's cause (not the rlimit line CRIU logs
// first in containers), says what to do where the cause is known, and
// points at a copy of the log that outlives the work directory.
func explainDumpFailure(pid int, err error, logPath string) error {
	b, _ := os.ReadFile(logPath)
	log := string(b)
	msg := fmt.Sprintf("criu dump of pid %d failed", pid)
	if cause := firstError(log); cause != "" {
		msg += ": " + cause
	} else if m := strings.TrimSpace(err.Error()); !noise(m) {
		msg += ": " + m
	}
	if hint := dumpCause(log); hint != "" {
		msg += "\n  likely cause: " + hint
	}
	return fmt.Errorf("%s\n%s", msg, criuLogTail(keepLog(logPath, "dump")))
}

func criuLogTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no CRIU log: " + err.Error() + ")"
	}
	var errs []string
	for _, line := range strings.Split(string(b), "\n") {
		// CAP_SYS_RESOURCE-less containers always log the rlimit one.
		if (strings.Contains(line, "Error") || strings.Contains(line, "error")) && !noise(line) {
			errs = append(errs, line)
		}
	}
	if len(errs) > 8 {
		errs = errs[len(errs)-8:]
	}
	return "CRIU log " + path + ":\n  " + strings.Join(errs, "\n  ") + "\n  ...\n  " + strings.ReplaceAll(lastLines(string(b), 4), " | ", "\n  ")
}

func kernelRelease() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return ""
	}
	var b []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

func cpuinfoField(name string) string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func cpuFlags() []string {
	f := strings.Fields(cpuinfoField("flags"))
	sort.Strings(f)
	return f
}

func cpuModel() string { return cpuinfoField("model name") }

type atomicStr struct {
	mu sync.Mutex
	s  string
}

func atomicString(s string) *atomicStr { return &atomicStr{s: s} }
func (a *atomicStr) set(s string)      { a.mu.Lock(); a.s = s; a.mu.Unlock() }
func (a *atomicStr) get() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.s
}

func lastLogLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	b := make([]byte, 512)
	n, _ := f.ReadAt(b, max(0, st.Size()-512))
	return lastLines(string(b[:n]), 1)
}
