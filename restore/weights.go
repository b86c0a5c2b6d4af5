package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/internal/proctree"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/restore/weights"
	"golang.org/x/sys/unix"
)

// AnnWeights holds a snapshot's weight references (WeightsMeta as JSON).
const AnnWeights = "gpuwarm.weights"

// WeightsMeta is what a snapshot records of the weights its workload
// released: where each released tensor's bytes are, by image ID.
type WeightsMeta struct {
	Socket    string      `json:"socket"`    // the workload's GPUWARM_WEIGHTS
	Processes int         `json:"processes"` // how many released weights
	Bytes     int64       `json:"bytes"`
	Refs      []WeightRef `json:"refs"`
}

// WeightRef is one released tensor: Length bytes at Offset of Path in Image.
type WeightRef struct {
	Name   string    `json:"name"`
	Image  digest.ID `json:"image"`
	Path   string    `json:"path"`
	Source string    `json:"source"` // the path the workload read it from (MOUNT/by-id/ID/PATH)
	Offset int64     `json:"offset"`
	Length int64     `json:"length"`
	// Local: Source is a path in the workload's own mount namespace (a
	// container's), where gpuwarm's by-id paths are not visible; a restore
	// checks that it still presents Image's Path before the workload reads it.
	Local bool `json:"local,omitempty"`
}

// Images lists the images the references need, sorted.
func (m *WeightsMeta) Images() []digest.ID {
	seen := map[digest.ID]bool{}
	var ids []digest.ID
	for _, r := range m.Refs {
		if !seen[r.Image] {
			seen[r.Image] = true
			ids = append(ids, r.Image)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	return ids
}

// ParseWeightsMeta decodes the annotation (nil, nil when there is none).
func ParseWeightsMeta(s string) (*WeightsMeta, error) {
	if s == "" {
		return nil, nil
	}
	var m WeightsMeta
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("restore: bad %s annotation: %w", AnnWeights, err)
	}
	var sum int64
	for _, r := range m.Refs {
		if err := manifest.ValidPath(r.Path); err != nil || r.Offset < 0 || r.Length <= 0 || r.Image == digest.Zero {
			return nil, fmt.Errorf("restore: bad %s annotation: reference %q", AnnWeights, r.Name)
		}
		sum += r.Length
	}
	if sum != m.Bytes || m.Processes <= 0 || m.Processes > 1<<16 {
		return nil, fmt.Errorf("restore: bad %s annotation: %d processes, %d bytes in references, %d recorded", AnnWeights, m.Processes, sum, m.Bytes)
	}
	return &m, nil
}

// WeightsReport says what the weights protocol did in a snapshot or restore.
type WeightsReport struct {
	Meta     *WeightsMeta
	Kept     int           // tensors the workloads kept (not in an image, or differing)
	Duration time.Duration // release (snapshot) or reload (restore), all processes
	Wait     time.Duration // restore: from the tree running to every library connected
	Alloc    time.Duration // restore: the longest a library spent allocating GPU memory
	Pinned   time.Duration // restore: the longest a library spent allocating pinned host memory
	Moved    int           // restore: tensors at other GPU addresses than before (weights.Reply.Moved)
}

// GBps is the reload's rate.
func (r *WeightsReport) GBps() float64 {
	if r.Meta == nil || r.Duration == 0 {
		return 0
	}
	return float64(r.Meta.Bytes) / 1e9 / r.Duration.Seconds()
}

// How long a snapshot waits for the libraries (processes with the library's
// thread and a socket in their environment): they poll every 10 ms, unless
// the process is too busy to run the thread.
var weightsConnectWait = 10 * time.Second

// WeightsSnapshotHooks makes a snapshot ask the workload's weights library
// (package weights) to release the weights it can serve again from images
// on a gpuwarm mount, before the CUDA checkpoint, and records references to
// them instead; after a failed dump, or with LeaveRunning, the workload
// uploads them again. Install it after GPUSnapshotHooks. Processes that do
// not speak the protocol are snapshotted as before.
func WeightsSnapshotHooks(opt *SnapshotOptions, log *slog.Logger) *WeightsReport {
	if log == nil {
		log = slog.Default()
	}
	if opt.Annotations == nil {
		opt.Annotations = map[string]string{}
	}
	ann, pid, leave := opt.Annotations, opt.PID, opt.LeaveRunning
	before, after := opt.BeforeDump, opt.AfterDump
	rep := &WeightsReport{}
	var released []int // host PIDs that released weights
	var socket string
	reload := func(ctx context.Context) error {
		if len(released) == 0 {
			return nil
		}
		err := reloadInPlace(ctx, pid, socket, released)
		if err == nil {
			released = nil
		}
		return err
	}
	// failed puts the released weights back before a failure is reported.
	failed := func(ctx context.Context, err error) error {
		if rerr := reload(context.WithoutCancel(ctx)); rerr != nil {
			err = fmt.Errorf("%w; and uploading the released weights again failed: %v", err, rerr)
		}
		return err
	}
	opt.BeforeDump = func(ctx context.Context) error {
		var expect []int
		for _, p := range proctree.Tree(pid) {
			if !weights.Speaks(p) {
				continue
			}
			if s := weights.SocketOf(p); s != "" && (socket == "" || s == socket) {
				socket = s
				expect = append(expect, p)
			}
		}
		if socket != "" {
			t := time.Now()
			m, pids, kept, err := releaseWeights(ctx, pid, socket, expect, log)
			released = pids
			if err != nil {
				return failed(ctx, err)
			}
			rep.Duration, rep.Kept = time.Since(t), kept
			if m != nil {
				rep.Meta = m
				b, _ := json.Marshal(m)
				ann[AnnWeights] = string(b)
				var ids []string
				for _, id := range m.Images() {
					ids = append(ids, id.String())
				}
				ann[annDependsExtra] = strings.Join(ids, ",")
				log.Info("weights released by the workload; the snapshot references them", "processes", m.Processes,
					"tensors", len(m.Refs), "bytes", m.Bytes, "kept", kept, "seconds", rep.Duration.Seconds())
			}
		}
		if before != nil {
			if err := before(ctx); err != nil {
				return failed(ctx, err)
			}
		}
		return nil
	}
	opt.AfterDump = func(ctx context.Context, dumpErr error) error {
		var err error
		if after != nil {
			err = after(ctx, dumpErr)
		}
		if dumpErr != nil || leave {
			if rerr := reload(ctx); rerr != nil {
				err = errors.Join(err, fmt.Errorf("the workload kept running without its weights: %w", rerr))
			}
		}
		return err
	}
	return rep
}

// annDependsExtra carries image IDs the snapshot needs beyond those its tree
// has open; Snapshot merges it into gc's depends annotation.
const annDependsExtra = "gpuwarm.depends.weights"

// acceptPeers accepts libraries of processes that pass want, one session
// each, until n passed keep (the others are told there is nothing to do) or
// wait ends; then it returns those it has, which may be fewer than n.
func acceptPeers(ctx context.Context, srv *weights.Server, n int, wait time.Duration, want func(pid int) bool, keep func(*weights.Peer) bool) ([]*weights.Peer, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	seen := map[int]bool{}
	var peers []*weights.Peer
	for len(peers) < n {
		p, err := srv.Accept(ctx, func(pid int) bool { return !seen[pid] && want(pid) })
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return peers, nil
			}
			for _, p := range peers {
				p.Close()
			}
			return nil, err
		}
		seen[p.PID] = true
		if keep != nil && !keep(p) {
			p.Done(ctx)
			continue
		}
		peers = append(peers, p)
	}
	return peers, nil
}

// acceptAll waits for a library from each of expect, for up to wait.
func acceptAll(ctx context.Context, srv *weights.Server, expect []int, wait time.Duration) ([]*weights.Peer, error) {
	want := map[int]bool{}
	for _, p := range expect {
		want[p] = true
	}
	return acceptPeers(ctx, srv, len(expect), wait, func(pid int) bool { return want[pid] }, nil)
}

// listenFor listens at the workload's socket path as process pid sees it.
// In another mount namespace (a container) the directory is made and opened
// inside the process's root (RESOLVE_IN_ROOT), so that no link the
// container holds can make gpuwarm create or replace a file of the host's.
func listenFor(pid int, socket string) (*weights.Server, error) {
	if sameMountNS(pid) {
		return weights.Listen(socket)
	}
	if !filepath.IsAbs(socket) || filepath.Clean(socket) != socket {
		return nil, fmt.Errorf("weights: socket %q is not a clean absolute path", socket)
	}
	root, err := unix.Open(fmt.Sprintf("/proc/%d/root", pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("weights: process %d's root: %w", pid, err)
	}
	defer unix.Close(root)
	dir := filepath.Dir(socket)
	in := func(p string, flags uint64) (int, error) {
		return unix.Openat2(root, p, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	}
	// mkdir -p inside the root, one name at a time.
	parts := strings.Split(strings.TrimPrefix(dir, "/"), "/")
	for i := range parts {
		if parts[i] == "" {
			continue
		}
		p := "/" + strings.Join(parts[:i+1], "/")
		if fd, err := in(p, unix.O_PATH|unix.O_DIRECTORY); err == nil {
			unix.Close(fd)
			continue
		}
		parent, err := in(filepath.Dir(p), unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return nil, fmt.Errorf("weights: socket directory %s in process %d's root: %w", filepath.Dir(p), pid, err)
		}
		err = unix.Mkdirat(parent, parts[i], 0o755)
		unix.Close(parent)
		if err != nil && err != unix.EEXIST {
			return nil, fmt.Errorf("weights: socket directory %s in process %d's root: %w", p, pid, err)
		}
	}
	fd, err := in(dir, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return nil, fmt.Errorf("weights: socket directory %s in process %d's root: %w", dir, pid, err)
	}
	return weights.ListenIn(os.NewFile(uintptr(fd), dir), filepath.Base(socket), socket)
}

func sameMountNS(pid int) bool {
	mine, err1 := os.Readlink("/proc/self/ns/mnt")
	theirs, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	return err1 == nil && err2 == nil && mine == theirs
}

// fileXattr reads the mount's FileXattr of path as process pid sees it:
// which image bytes it presents. In another mount namespace the path is
// resolved inside the process's root (RESOLVE_IN_ROOT): a symbolic link in
// a container cannot point gpuwarm at a file of the host's.
func fileXattr(pid int, path string) (digest.ID, string, error) {
	buf := make([]byte, 4096)
	var n int
	if sameMountNS(pid) {
		var err error
		if n, err = unix.Getxattr(path, manifest.FileXattr, buf); err != nil {
			return digest.Zero, "", err
		}
	} else {
		root, err := unix.Open(fmt.Sprintf("/proc/%d/root", pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return digest.Zero, "", fmt.Errorf("process %d's root: %w", pid, err)
		}
		defer unix.Close(root)
		fd, err := unix.Openat2(root, path, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
		if err != nil {
			return digest.Zero, "", fmt.Errorf("%s in process %d's root: %w", path, pid, err)
		}
		defer unix.Close(fd)
		if n, err = unix.Fgetxattr(fd, manifest.FileXattr, buf); err != nil {
			return digest.Zero, "", err
		}
	}
	return manifest.ParseFileXattr(string(buf[:n]))
}

// releaseWeights runs a release session with each library of expect (root
// is the tree's root process: the socket is in its mount namespace).
func releaseWeights(ctx context.Context, root int, socket string, expect []int, log *slog.Logger) (*WeightsMeta, []int, int, error) {
	srv, err := listenFor(root, socket)
	if err != nil {
		return nil, nil, 0, err
	}
	peers, err := acceptAll(ctx, srv, expect, weightsConnectWait)
	srv.Close() // no library connects again during the dump
	if err != nil {
		return nil, nil, 0, err
	}
	if len(peers) == 0 {
		log.Info("no weights library answered on the workload's weights socket; snapshotting its weights with the rest", "socket", socket)
		return nil, nil, 0, nil
	}
	m := &WeightsMeta{Socket: socket}
	var released []int
	kept := 0
	defer func() {
		for _, p := range peers {
			p.Close()
		}
	}()
	for _, p := range peers {
		if p.Hello.State != "resident" {
			return nil, released, 0, fmt.Errorf("snapshot: process %d's weights are already released (a snapshot in progress elsewhere?)", p.PID)
		}
		sources, img := resolveWeightFiles(p.PID, p.Hello.Files, log)
		if len(sources) == 0 {
			p.Done(ctx)
			continue
		}
		// A library that fails a release uploads what it had freed again
		// before it answers.
		r, err := p.Release(ctx, sources)
		if err != nil {
			return nil, released, 0, fmt.Errorf("snapshot: %w", err)
		}
		released = append(released, p.PID)
		kept += len(r.Kept)
		for name, why := range r.Kept {
			log.Debug("weights: tensor kept in the snapshot", "pid", p.PID, "tensor", name, "why", why)
		}
		for _, t := range r.Tensors {
			loc := img[t.File]
			m.Refs = append(m.Refs, WeightRef{Name: t.Name, Image: loc.id, Path: loc.path, Source: t.File, Offset: t.Offset, Length: t.Length, Local: loc.local})
			m.Bytes += t.Length
		}
		m.Processes++
	}
	if m.Processes == 0 {
		return nil, released, kept, nil
	}
	return m, released, kept, nil
}

type imageFile struct {
	id    digest.ID
	path  string
	local bool
}

// resolveWeightFiles maps each file of process pid on a gpuwarm mount
// (MOUNT/TAG/PATH or MOUNT/by-id/ID/PATH) to the same bytes by image ID,
// which no tag move changes. In a container (another mount namespace) the
// file, wherever the mount's files appear there (a bind mount, the image
// as root filesystem under an overlay), is resolved by the mount's
// FileXattr, and offered as it is. Files elsewhere are left out: their
// tensors stay in the snapshot.
func resolveWeightFiles(pid int, files []string, log *slog.Logger) (map[string]string, map[string]imageFile) {
	sources := map[string]string{}
	img := map[string]imageFile{}
	if !sameMountNS(pid) {
		for _, f := range files {
			id, rel, err := fileXattr(pid, f)
			if err != nil || !filepath.IsAbs(f) {
				log.Info("weights: file in the container is not in an image on a gpuwarm mount; its tensors stay in the snapshot", "file", f, "err", err)
				continue
			}
			sources[f] = f
			img[f] = imageFile{id: id, path: rel, local: true}
		}
		return sources, img
	}
	mounts := gpuwarmMounts()
	for _, f := range files {
		var found bool
		for _, m := range mounts {
			rest, ok := strings.CutPrefix(f, m+"/")
			if !ok {
				continue
			}
			first, rel, ok := strings.Cut(rest, "/")
			if !ok {
				break
			}
			var id digest.ID
			var err error
			if first == manifest.ByIDDir || first == manifest.RootfsDir {
				var idStr string
				idStr, rel, ok = strings.Cut(rel, "/")
				if !ok {
					break
				}
				id, err = digest.Parse(idStr)
			} else {
				id, err = imageIDAt(filepath.Join(m, first))
			}
			if err != nil || manifest.ValidPath(rel) != nil {
				break
			}
			src := filepath.Join(m, "by-id", id.String(), rel)
			sources[f] = src
			img[src] = imageFile{id: id, path: rel}
			found = true
			break
		}
		if !found {
			log.Info("weights: file is not in an image on a gpuwarm mount; its tensors stay in the snapshot", "file", f)
		}
	}
	return sources, img
}

// reloadInPlace asks the libraries of pids (which released their weights in
// a snapshot) to upload them again, from the sources they released them
// from.
func reloadInPlace(ctx context.Context, root int, socket string, pids []int) error {
	srv, err := listenFor(root, socket)
	if err != nil {
		return err
	}
	defer srv.Close()
	peers, err := acceptAll(ctx, srv, pids, 60*time.Second)
	if err != nil {
		return err
	}
	if len(peers) < len(pids) {
		return fmt.Errorf("weights: %d of %d processes connected to %s within 60 s", len(peers), len(pids), socket)
	}
	var errs []error
	for _, p := range peers {
		if _, err := p.Reload(ctx, nil); err != nil {
			errs = append(errs, err)
		}
		p.Close()
	}
	return errors.Join(errs...)
}

// WeightsRestoreHooks makes a restore of a snapshot with weight references
// refuse a worker that cannot serve them (an image gone from the store, a
// file shorter than referenced) before anything starts, read them ahead
// through the mount while CRIU and the CUDA driver restore the rest, and,
// once the tree runs, have each library upload its weights from the mount
// at mount (every chunk verified on its way in); a failure kills the tree.
// Install it after GPURestoreHooks. warm, if set, is started with the
// referenced images as the restore begins and canceled when it ends: the
// CLI has the mount daemon fetch them into the cache with its parallel
// fetches, so that a cold worker reads them at the store's rate.
func WeightsRestoreHooks(opt *Options, st store.Store, mount string, log *slog.Logger, warm func(ctx context.Context, images []digest.ID)) *WeightsReport {
	if log == nil {
		log = slog.Default()
	}
	before, after := opt.BeforeRestore, opt.AfterRestore
	rep := &WeightsReport{}
	var paths map[string]string
	var innerDone bool
	stopWarm := func() {}
	opt.BeforeRestore = func(ctx context.Context, ann map[string]string) error {
		m, err := ParseWeightsMeta(ann[AnnWeights])
		if err != nil {
			return err
		}
		if m != nil {
			if paths, err = checkWeights(ctx, st, mount, m); err != nil {
				return err
			}
		}
		// The GPU checks next: a refused worker starts no reads.
		if before != nil {
			if err := before(ctx, ann); err != nil {
				return err
			}
		}
		if m != nil {
			rep.Meta = m
			go readAhead(m, paths)
			if warm != nil {
				wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
				stopWarm = cancel
				go warm(wctx, m.Images())
			}
		}
		return nil
	}
	opt.AfterRestore = func(ctx context.Context, pid int) error {
		inner := func() error {
			if after == nil || innerDone {
				return nil
			}
			if err := after(ctx, pid); err != nil {
				return err
			}
			innerDone = true
			return nil
		}
		if rep.Meta == nil {
			return inner()
		}
		// Whatever the upload's outcome, the warm has done its part.
		defer stopWarm()
		// The libraries connect, and map their staging memory, while the
		// inner hooks (the CUDA restore) run; the reload is asked once
		// those are done. The inner hooks always finish before this
		// returns.
		ctx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		innerErr := make(chan error, 1)
		go func() {
			err := inner()
			if err != nil {
				cancel(err)
			}
			innerErr <- err
		}()
		var innerOnce sync.Once
		var ierr error
		waitInner := func() error {
			innerOnce.Do(func() { ierr = <-innerErr })
			return ierr
		}
		defer waitInner()
		t := time.Now()
		read, err := readPaths(pid, rep.Meta, paths)
		if err != nil {
			return errors.Join(err, waitInner())
		}
		srv, err := listenFor(pid, rep.Meta.Socket)
		if err != nil {
			return errors.Join(err, waitInner())
		}
		defer srv.Close()
		// Stop waiting when the tree dies.
		go func() {
			for ctx.Err() == nil {
				if syscall.Kill(pid, 0) != nil {
					cancel(fmt.Errorf("the restored process %d exited before its weights were uploaded", pid))
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
		tree := map[int]bool{}
		for _, p := range proctree.Tree(pid) {
			tree[p] = true
		}
		todo, err := acceptPeers(ctx, srv, rep.Meta.Processes, 60*time.Second, func(pid int) bool { return tree[pid] },
			func(p *weights.Peer) bool { return p.Hello.State == "released" })
		defer func() {
			for _, p := range todo {
				p.Close()
			}
		}()
		rep.Wait = time.Since(t)
		if err := waitInner(); err != nil {
			return err
		}
		if c := context.Cause(ctx); c != nil {
			return c
		}
		if err != nil {
			return err
		}
		if len(todo) < rep.Meta.Processes {
			return fmt.Errorf("%d of the %d processes that released weights in the snapshot connected within 60 s (is the weights library running in the restored workload?)", len(todo), rep.Meta.Processes)
		}
		t = time.Now()
		var wg sync.WaitGroup
		errs := make([]error, len(todo))
		var got int64
		var mu sync.Mutex
		for i, p := range todo {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := p.Reload(ctx, read)
				errs[i] = err
				if err == nil {
					mu.Lock()
					got += r.Bytes
					rep.Alloc = max(rep.Alloc, time.Duration(r.AllocSeconds*float64(time.Second)))
					rep.Pinned = max(rep.Pinned, time.Duration(r.PinnedSeconds*float64(time.Second)))
					rep.Moved += r.Moved
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		rep.Duration = time.Since(t)
		if err := errors.Join(errs...); err != nil {
			return err
		}
		if got != rep.Meta.Bytes {
			return fmt.Errorf("weights: the workload uploaded %d bytes, the snapshot references %d", got, rep.Meta.Bytes)
		}
		log.Info("weights uploaded from the cache", "bytes", got, "seconds", rep.Duration.Seconds(), "GB/s", rep.GBps(),
			"allocation", rep.Alloc.Seconds(), "pinned", rep.Pinned.Seconds(), "connect_wait", rep.Wait.Seconds())
		if rep.Moved > 0 {
			log.Warn("weights: tensors came back at other GPU addresses; CUDA graphs captured over them must be captured again", "tensors", rep.Moved)
		}
		return nil
	}
	return rep
}

// readPaths maps each reference's source to the path its library reads now:
// the host's by-id path (paths), or, for a source in the restored
// container (WeightRef.Local), that path once it is checked to present the
// same image bytes (a volume bound from another tag, or an image whose file
// changed, is refused).
func readPaths(pid int, m *WeightsMeta, paths map[string]string) (map[string]string, error) {
	read := map[string]string{}
	for _, r := range m.Refs {
		if _, done := read[r.Source]; done {
			continue
		}
		if !r.Local {
			read[r.Source] = paths[r.Source]
			continue
		}
		id, rel, err := fileXattr(pid, r.Source)
		if err != nil {
			return nil, fmt.Errorf("restore: the restored workload's weights file %s is not on a gpuwarm mount (%w): bind the volume it was snapshotted with", r.Source, err)
		}
		if id != r.Image || rel != r.Path {
			return nil, fmt.Errorf("restore: the restored workload's %s presents %s of image %s, the snapshot released %s of image %s: bind the volume by the image it was snapshotted with (MOUNT/by-id/%s)",
				r.Source, rel, id.Short(), r.Path, r.Image.Short(), r.Image)
		}
		read[r.Source] = r.Source
	}
	return read, nil
}

// checkWeights refuses references this worker cannot serve and returns the
// path of each source on this worker's mount.
func checkWeights(ctx context.Context, st store.Store, mount string, m *WeightsMeta) (map[string]string, error) {
	if mount == "" {
		return nil, errors.New("restore: the snapshot's workload reads its weights from a gpuwarm mount: restore with the mount given")
	}
	ixs := map[digest.ID]*manifest.Index{}
	for _, id := range m.Images() {
		ix, err := manifest.Load(ctx, st, id)
		if err != nil {
			return nil, fmt.Errorf("restore: the snapshot references weights in image %s, which the store cannot give (%w): pack the weights again under the same content, or snapshot again", id.Short(), err)
		}
		ixs[id] = ix
	}
	paths := map[string]string{}
	for _, r := range m.Refs {
		ix := ixs[r.Image]
		i, ok := ix.Lookup(r.Path)
		if ok {
			i = ix.Resolve(i)
		}
		if !ok || ix.Entries[i].Type != manifest.Regular || ix.Entries[i].Size < r.Offset+r.Length {
			return nil, fmt.Errorf("restore: the snapshot references %d bytes at %d of %s in image %s, which that image does not hold", r.Length, r.Offset, r.Path, r.Image.Short())
		}
		paths[r.Source] = filepath.Join(mount, "by-id", r.Image.String(), r.Path)
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("restore: weights file: %w (is the mount up?)", err)
		}
		break
	}
	return paths, nil
}

// readAhead asks the kernel to read the referenced ranges through the mount
// while the rest restores, so that the workload's reads find them in the
// page cache; ranges already there cost nothing.
func readAhead(m *WeightsMeta, paths map[string]string) {
	byFile := map[string][][2]int64{}
	for _, r := range m.Refs {
		byFile[paths[r.Source]] = append(byFile[paths[r.Source]], [2]int64{r.Offset, r.Length})
	}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for p, rs := range byFile {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f, err := os.Open(p)
			if err != nil {
				return
			}
			defer f.Close()
			for _, r := range rs {
				unix.Fadvise(int(f.Fd()), r[0], r[1], unix.FADV_WILLNEED)
			}
		}()
	}
	wg.Wait()
}
