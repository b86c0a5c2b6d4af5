package fusefs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/fusefs/transport/poll"
	"github.com/gpuwarm/gpuwarm/fusefs/transport/uring"
	"github.com/gpuwarm/gpuwarm/internal/histo"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sync/singleflight"
	"golang.org/x/sys/unix"
)

// Options configure a mount.
type Options struct {
	Cache  *cache.Cache
	Logger *slog.Logger
	// TagTTL is how long a tag's resolution is trusted (default 2s).
	TagTTL time.Duration
	// Observer, if set, sees every chunk touched by reads.
	Observer manifest.Observer
	// OnImage, if set, is called once when an image is first loaded, with
	// the filesystem that loaded it; the Observer it returns (a prefetch
	// replay, say) sees that image's reads.
	OnImage func(f *FS, ix *manifest.Index) manifest.Observer
	// Loading, if set, is called as an image's manifest starts loading
	// (once per image), so that work needing only the image's ID — fetching
	// its prefetch profile — overlaps the manifest's fetch.
	Loading func(id digest.ID)
	// Group, if above 0, restricts the mount to root and the members of
	// that group: the root directory is mode 0550, group Group, so no one
	// else can list tags, enter images or make the daemon load one. 0:
	// every local user may (mode 0555), as programs and containers running
	// from the mount as other users need by default.
	Group int
	// PublicStats lets every user read MOUNTPOINT/.stats; by default only
	// root may (it names every image the mount has loaded).
	PublicStats bool
	// NonEmpty mounts over a directory that holds files, hiding them;
	// without it such a mount point is refused.
	NonEmpty bool
	// NoPassthrough disables FUSE passthrough.
	NoPassthrough bool
	// AssembleFiles assembles multi-chunk files whose chunks are all cached
	// into one disk-tier entry (in the background, one file at a time, up
	// to cache.MaxAssemble), so later opens use passthrough too, at the
	// disk's speed instead of through the daemon.
	AssembleFiles bool
	// Readahead is how many chunks after the one being read are fetched in
	// the background on sequential reads (default 2; negative disables).
	Readahead int
	// KernelReadahead is the kernel's readahead window for the mount in
	// bytes (default 4 MiB). FUSE starts at 128 KiB, which makes every
	// sequential read a string of small requests.
	KernelReadahead int
	// Readers is how many goroutines wait for requests on /dev/fuse (default
	// a quarter of GOMAXPROCS, at least 2). Mount sets GOMAXPROCS to at
	// least Readers+2 (see Mount).
	Readers int
	// POSIXACL has the kernel enforce the POSIX ACLs packed with the files
	// (their system.posix_acl_* xattrs) and keep them. Off, the xattrs are
	// still served as packed, but permission checks use the mode bits only,
	// whose group class is an ACL's mask: a file's owning group may then
	// read what its ACL denies it. Off by default: it slows cold lazy
	// restores (docs/design.md), and program and snapshot trees seldom
	// carry ACLs.
	POSIXACL bool
	// URing has the kernel send requests through io_uring queues, one per
	// CPU, each answered by a thread pinned to its CPU (package transport/uring),
	// where the kernel offers it (Linux 6.14 or later, with the fuse
	// module's enable_uring parameter set); through /dev/fuse otherwise.
	URing bool
	// URingEntries is how many requests each CPU's ring holds at once (0:
	// transport/uring's default); each entry has a payload buffer of 1 MiB.
	URingEntries int
	// Spin, if positive, has one thread answer /dev/fuse's requests and
	// read on without sleeping for up to this long after each (package
	// transport/poll); go-fuse's readers, which sleep in read(2), otherwise.
	// Not with URing where the kernel offers the rings.
	Spin  time.Duration
	Debug bool
}

// FS is the state shared by every node of a mount.
type FS struct {
	opLatency   [nOps]histo.Histogram
	interrupted atomic.Int64
	opt         Options
	cache       *cache.Cache
	st          store.Store
	log         *slog.Logger

	mu        sync.Mutex
	images    map[digest.ID]*manifest.Index
	observers map[digest.ID]manifest.Observer
	warmers   map[digest.ID]*Warmer
	loadSF    singleflight.Group

	// tags is the last full list of tags (readdir of the root, preloads
	// of "*"); named holds tags looked up one by one. Both are trusted
	// for TagTTL.
	tagsMu   sync.Mutex
	tags     map[string]digest.ID
	tagsTime time.Time
	named    map[string]namedTag
	tagSF    singleflight.Group

	ra   chan readahead
	scan scan
	// pushQ holds the chunks reads out of sequence hand to the kernel's
	// page cache (pushRest).
	pushQ chan pushJob

	// opens counts file opens by how they are served.
	passthroughOpens, cachedOpens atomic.Int64
	// pageCacheOpens counts cached-mode opens of files whose pages the
	// kernel held in full; pageCacheLost, files asked for again after that.
	pageCacheOpens, pageCacheLost atomic.Int64
	// residentOpens counts passthrough opens of assembled files whose copy
	// was in the kernel's page cache.
	residentOpens atomic.Int64

	// live holds the file nodes the kernel knows (liveKey: *node), mounted
	// the mount point once the kernel serves it: a Warmer needs both.
	live    sync.Map
	mounted atomic.Pointer[string]
	// ring serves the requests through io_uring queues, if it does.
	ring        atomic.Pointer[uring.Server]
	poller      atomic.Pointer[poll.Server]
	pushedBytes atomic.Int64

	assembling sync.Map
	// Assemblies running, finished and failed, and files whose FUSE pages
	// were dropped after theirs (.stats).
	assemblyRunning, assemblyDone, assemblyFailed, assemblyDropped atomic.Int64
	assembleSlot                                                   chan struct{}
}

type namedTag struct {
	id digest.ID
	at time.Time
}

type readahead struct {
	id   digest.ID
	size uint32
}

// New returns the filesystem; Mount serves it.
func New(opt Options) *FS {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.TagTTL <= 0 {
		opt.TagTTL = 2 * time.Second
	}
	if opt.Readahead == 0 {
		opt.Readahead = 2
	}
	f := &FS{opt: opt, cache: opt.Cache, st: opt.Cache.Store(), log: opt.Logger,
		images: make(map[digest.ID]*manifest.Index), named: make(map[string]namedTag), observers: make(map[digest.ID]manifest.Observer), warmers: make(map[digest.ID]*Warmer), ra: make(chan readahead, 64), pushQ: make(chan pushJob, 64),
		assembleSlot: make(chan struct{}, 1)}
	return f
}

// Image loads, verifies and indexes an image's manifest (once per mount).
func (f *FS) Image(ctx context.Context, id digest.ID) (*manifest.Index, error) {
	f.mu.Lock()
	ix, ok := f.images[id]
	f.mu.Unlock()
	if ok {
		return ix, nil
	}
	v, err := shared(ctx, &f.loadSF, id.String(), func() (any, error) {
		// Shared by every caller waiting: one caller's interrupted
		// request (a signal to its process) must not fail the others.
		if f.opt.Loading != nil {
			f.opt.Loading(id)
		}
		ix, err := manifest.Load(context.WithoutCancel(ctx), f.st, id)
		if err != nil {
			return nil, err
		}
		var o manifest.Observer
		if f.opt.OnImage != nil {
			o = f.opt.OnImage(f, ix)
		}
		f.mu.Lock()
		f.images[id] = ix
		if o != nil {
			f.observers[id] = o
		}
		f.mu.Unlock()
		return ix, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*manifest.Index), nil
}

// Preload loads, ahead of any access, the images that names call for (tags
// or image IDs; "*" is every tagged image), so that a worker's first exec
// does not wait for a manifest and the images' prefetch profiles (Options.
// OnImage) start replaying while the mount is still idle. Names that match
// nothing or images that cannot be loaded are reported together; the rest
// are loaded anyway.
func (f *FS) Preload(ctx context.Context, names []string) error {
	ids := map[digest.ID]string{}
	var errs []error
	for _, n := range names {
		if n == "*" {
			tags, err := f.resolveTags(ctx, true)
			if err != nil {
				errs = append(errs, fmt.Errorf("preload: cannot list tags: %w", err))
				continue
			}
			for t, id := range tags {
				ids[id] = t
			}
			continue
		}
		if id, err := digest.Parse(n); err == nil {
			ids[id] = n
			continue
		}
		switch id, ok, err := f.resolveTag(ctx, n, true); {
		case err != nil:
			errs = append(errs, fmt.Errorf("preload %s: %w", n, err))
		case !ok:
			errs = append(errs, fmt.Errorf("preload: no tag %q in %s (pack it, or fix the list)", n, f.st.Location()))
		default:
			ids[id] = n
		}
	}
	for id, name := range ids {
		if _, err := f.Image(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("preload %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func (f *FS) resolveTags(ctx context.Context, fresh bool) (map[string]digest.ID, error) {
	f.tagsMu.Lock()
	defer f.tagsMu.Unlock()
	if f.tags != nil && !fresh && time.Since(f.tagsTime) < f.opt.TagTTL {
		return f.tags, nil
	}
	// The list is shared: an interrupted caller does not cancel it.
	tags, bad, err := store.ListTags(context.WithoutCancel(ctx), f.st)
	for name, e := range bad {
		f.log.Warn("a tag cannot be read; it is left out of the listing", "tag", name, "err", e)
	}
	if err != nil {
		if f.tags != nil {
			f.log.Warn("listing tags failed; using the last list", "store", f.st.Location(), "err", err)
			return f.tags, nil
		}
		return nil, err
	}
	f.tags, f.tagsTime = tags, time.Now()
	return tags, nil
}

// resolveTag returns the image tag name points at; ok is false if there is
// no such tag. It reads that one tag object (a lookup must not wait for a
// listing of every tag in a fleet's store), unless the last full list or
// an earlier lookup of the name is younger than TagTTL and fresh is false.
// If the store cannot be read, the last answer for the name is used.
func (f *FS) resolveTag(ctx context.Context, name string, fresh bool) (id digest.ID, ok bool, err error) {
	h := store.Handle{Kind: store.Tag, Name: name}
	if h.Validate() != nil {
		return digest.Zero, false, nil // no tag can have this name
	}
	f.tagsMu.Lock()
	if !fresh {
		if e, ok := f.named[name]; ok && time.Since(e.at) < f.opt.TagTTL {
			f.tagsMu.Unlock()
			return e.id, true, nil
		}
		if id, ok := f.tags[name]; ok && time.Since(f.tagsTime) < f.opt.TagTTL {
			f.tagsMu.Unlock()
			return id, true, nil
		}
	}
	f.tagsMu.Unlock()
	// Shared by concurrent lookups of the name: one caller's interrupt
	// does not fail the others.
	v, err := shared(ctx, &f.tagSF, name, func() (any, error) {
		id, err := store.ReadTag(context.WithoutCancel(ctx), f.st, name)
		if errors.Is(err, store.ErrNotFound) {
			f.tagsMu.Lock()
			delete(f.named, name)
			f.tagsMu.Unlock()
			return digest.Zero, nil
		}
		if err != nil {
			return nil, err
		}
		f.tagsMu.Lock()
		f.named[name] = namedTag{id, time.Now()}
		f.tagsMu.Unlock()
		return id, nil
	})
	if errors.Is(err, context.Canceled) {
		return digest.Zero, false, err // the caller is being killed: no fallback
	}
	if err != nil {
		f.tagsMu.Lock()
		e, seen := f.named[name]
		f.tagsMu.Unlock()
		if seen {
			f.log.Warn("reading a tag failed; using its last image", "tag", name, "store", f.st.Location(), "err", err)
			return e.id, true, nil
		}
		return digest.Zero, false, err
	}
	id = v.(digest.ID)
	return id, id != digest.Zero, nil
}

// shared runs fn once for every concurrent caller of key (fn must not use
// a caller's ctx: it works for them all) and returns its result. If the
// caller's request is interrupted (a signal to its process) because the
// process is being killed, it returns ctx's error at once (the kernel holds
// a dying process until its request is answered), and fn goes on for the
// others and for the next caller. Any other signal is not a reason to fail
// a lookup: many programs do not retry an open or a stat that fails EINTR.
func shared(ctx context.Context, g *singleflight.Group, key string, fn func() (any, error)) (any, error) {
	dying, done := untilDying(ctx)
	defer done()
	select {
	case r := <-g.DoChan(key, fn):
		return r.Val, r.Err
	case <-dying.Done():
		return nil, dying.Err()
	}
}

// untilDying returns a context that ends with ctx only if ctx ends
// because its caller is being killed (callerDying), and a function that
// lets it go. A FUSE request's context ends at any signal to the caller
// (FUSE_INTERRUPT); failing a read for a signal the program handles would
// fail its read(2) with EINTR, which few programs retry on a file, or its
// page fault on a mapped file with SIGBUS.
func untilDying(ctx context.Context) (context.Context, func()) {
	c, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		if callerDying(ctx) {
			cancel()
		}
	})
	return c, func() { stop(); cancel() }
}

// callerDying reports whether the thread that made the request behind ctx
// is being killed: a fatal signal leaves SIGKILL pending on every thread of
// its process (/proc/TID/status, SigPnd). A caller whose thread is gone or
// unknown counts as dying.
func callerDying(ctx context.Context) bool {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Pid == 0 {
		return true
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(int(c.Pid)) + "/status")
	if err != nil {
		return true
	}
	return sigkillPending(string(b))
}

// sigkillPending reads a /proc/PID/status for SIGKILL pending on the thread
// or its process.
func sigkillPending(status string) bool {
	for _, l := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok || (k != "SigPnd" && k != "ShdPnd") {
			continue
		}
		mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err == nil && mask&(1<<(syscall.SIGKILL-1)) != 0 {
			return true
		}
	}
	return false
}

// readaheadLoop serves background reads: chunks a sequential reader will
// want next are brought into the memory tier, from the store (at prefetch
// priority) or from the disk tier, so neither a fetch nor a disk read
// stands between the reader and its next chunk. The queue is bounded and
// drops requests when full.
func (f *FS) readaheadLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-f.ra:
			if err := f.cache.Warm(ctx, r.id, r.size, cache.Prefetch); err != nil && ctx.Err() == nil {
				f.log.Debug("readahead failed", "chunk", r.id.Short(), "err", err)
			}
		}
	}
}

// pushLoop hands the kernel what reads out of sequence queued (pushRest),
// one job at a time.
func (f *FS) pushLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-f.pushQ:
			j.run()
		}
	}
}

func (f *FS) queueReadahead(id digest.ID, size uint32) {
	if f.cache.InMemory(id) {
		return
	}
	select {
	case f.ra <- readahead{id, size}:
	default: // drop: readahead is only a hint
	}
}

// ino derives a stable inode number from an image and a path.
// nodeIno is ino under RootfsDir's own number space when rootfs is set.
func nodeIno(img digest.ID, path string, rootfs bool) uint64 {
	if rootfs {
		return ino(img, "\x00"+rootfsName+"\x00"+path) // no path holds a NUL
	}
	return ino(img, path)
}

func ino(img digest.ID, path string) uint64 {
	h := xxhash.New()
	h.Write(img[:])
	h.Write([]byte(path))
	v := h.Sum64()
	if v < 2 {
		v += 2
	}
	return v
}

func tagIno(name string) uint64 {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 0x7461670000000000)
	v := xxhash.Sum64(append(b[:], name...))
	if v < 2 {
		v += 2
	}
	return v
}

// errno maps an error from the store or the cache to what the kernel gets.
// A canceled context means the kernel interrupted the request because the
// caller is being killed: EINTR. Anything else is EIO, a missing object
// included: a chunk or manifest the store lacks is a broken store, not a
// missing name, and ENOENT on read(2) or open(2) would tell a program that
// a file it found does not exist. ENOENT comes only from lookups of names
// that are in no image (or, under by-id, of images the store does not have).
func errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}

func sortedNames(m map[string]digest.ID) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DefaultSpin is the Options.Spin gpuwarm mount uses unless told: polling
// pays where a core can be spared (8 CPUs or more); on fewer the polling
// thread takes the core the program needs, so none there (figures in
// docs/design.md).
func DefaultSpin() time.Duration {
	if runtime.NumCPU() >= 8 {
		return 200 * time.Microsecond
	}
	return 0
}

// Server is a running mount.
type Server struct {
	*fuse.Server
	fs     *FS
	cancel context.CancelFunc
	Dir    string
	// ownMount: mounted here (not by go-fuse), for the ring queues,
	// which need the connection's descriptor; ring, if the kernel took
	// them.
	ownMount bool
	ring     *uring.Server
}

// Mount serves the filesystem at dir until Unmount. A stale gpuwarm mount
// left at dir by a killed daemon is detached first.
func Mount(dir string, opt Options) (*Server, error) {
	return New(opt).Mount(dir)
}

// Mount serves f at dir (see the function Mount). Work may start on f
// before it is mounted: a worker's daemon preloads images (Preload) while
// the kernel sets the mount up.
func (f *FS) Mount(dir string) (*Server, error) {
	opt := f.opt
	hour := time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	root := &rootNode{fsys: f}
	if err := prepareMountpoint(dir, opt.NonEmpty, f.log); err != nil {
		cancel()
		return nil, err
	}
	mo := fuse.MountOptions{
		FsName:        "gpuwarm",
		Name:          "gpuwarm",
		AllowOther:    true,
		DirectMount:   true,
		MaxWrite:      1 << 20,
		MaxReadAhead:  1 << 20,
		MaxBackground: 64,
		Options:       []string{"ro", "default_permissions"},
		Debug:         opt.Debug,
		DisableSplice: true,
		DisableXAttrs: false,
		// An inode's contents never change (a tag moved to another image
		// names other inodes), so the kernel need not check a file's
		// attributes on every read to see whether to drop its pages, and
		// may keep link targets in its page cache (the dynamic loader
		// follows a library's symlinks at every start).
		ExplicitDataCacheControl: true,
		EnableSymlinkCaching:     true,
		EnableAcl:                opt.POSIXACL,
	}
	// go-fuse keeps as many goroutines waiting in read(2) on /dev/fuse as
	// GOMAXPROCS when it makes the server (2 to 16), and offers no other
	// knob: so GOMAXPROCS is the readers' count while it does, and then at
	// least two more, so that Ps stay idle. A goroutine blocked in a system
	// call keeps its P only while idle Ps exist; once every P is held by a
	// waiting reader, the runtime's monitor takes them back and starts
	// threads to look for work, and each request's reader must find a P
	// again: futex wakeups and sleeps that cost more than the request on a
	// paravirtualized VM.
	n := runtime.GOMAXPROCS(0)
	readers := opt.Readers
	if readers <= 0 {
		readers = max(2, n/4)
	}
	runtime.GOMAXPROCS(readers)
	rawFS := fs.NewNodeFS(root, &fs.Options{
		MountOptions:      mo,
		EntryTimeout:      &hour,
		AttrTimeout:       &hour,
		NegativeTimeout:   &hour,
		NullPermissions:   true,
		FirstAutomaticIno: 1 << 62,
	})
	srv, devFd, poller, err := mountServer(dir, rawFS, &mo, opt.URing, opt.Spin, f.log)
	runtime.GOMAXPROCS(max(n, readers+2))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("mount %s: %w (is fuse3 installed and /dev/fuse present? run make setup)", dir, err)
	}
	s := &Server{Server: srv, fs: f, cancel: cancel, Dir: dir, ownMount: devFd >= 0}
	f.poller.Store(poller)
	if devFd >= 0 && opt.URing {
		if s.ring, err = serveRing(dir, srv, devFd, rawFS, &mo, opt.URingEntries, f.log); err != nil {
			srv.Wait()
			cancel()
			return nil, fmt.Errorf("mount %s: %w", dir, err)
		}
		f.ring.Store(s.ring)
	}
	if devFd >= 0 {
		// go-fuse's WaitMount does not for a "/dev/fd/N" mount; not before
		// the rings are up either (the kernel holds requests for them).
		if err := poll.PollHack(dir); err != nil {
			f.log.Warn("the kernel may ask the filesystem for POLL: this process must not open files on its own mount", "err", err)
		}
	}
	f.mounted.Store(&dir)
	if err := raiseReadahead(dir, opt.KernelReadahead); err != nil {
		f.log.Warn("cannot raise the kernel's readahead for the mount; sequential reads will be slower", "err", err)
	}
	for i := 0; i < 4; i++ {
		go f.readaheadLoop(ctx)
	}
	go f.pushLoop(ctx)
	go func() { s.Wait(); cancel() }()
	return s, nil
}

// FS returns the mounted filesystem.
func (s *Server) FS() *FS { return s.fs }

// Close unmounts, detaching lazily if files are still open, and waits for
// the server to stop. It may be called more than once.
func (s *Server) Close() error {
	err := s.Unmount()
	if err != nil {
		err = syscall.Unmount(s.Dir, syscall.MNT_DETACH)
	}
	s.Wait()
	return err
}

// observe tells the observers about a chunk read.
func (f *FS) observe(img digest.ID, entry, idx int, id digest.ID, size uint32) {
	if o := f.opt.Observer; o != nil {
		o.Touch(img, entry, idx, id, size)
	}
	f.mu.Lock()
	o := f.observers[img]
	w := f.warmers[img]
	f.mu.Unlock()
	if o != nil {
		o.Touch(img, entry, idx, id, size)
	}
	if w != nil {
		// Read already: the kernel has these pages, or is getting them.
		w.done.LoadOrStore(id, true)
	}
}

// Observers returns the per-image observers (replays), by image.
func (f *FS) Observers() map[digest.ID]manifest.Observer {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[digest.ID]manifest.Observer, len(f.observers))
	for k, v := range f.observers {
		out[k] = v
	}
	return out
}

// every reports whether has holds for every chunk.
func every(chunks []manifest.Chunk, has func(digest.ID) bool) bool {
	for _, c := range chunks {
		if !has(c.ID) {
			return false
		}
	}
	return true
}

// maybeAssemble assembles, in the background and one file at a time, a
// file whose chunks are all in the cache, so later opens can use
// passthrough; done (if set) runs once the copy is in place.
func (f *FS) maybeAssemble(chunks []manifest.Chunk, done func()) {
	if _, ok := f.cache.CanAssemble(chunks); !ok {
		return
	}
	if !every(chunks, f.cache.Kept) {
		return
	}
	id := cache.FileID(chunks)
	if f.cache.Contains(id) {
		return // assembled already
	}
	if _, busy := f.assembling.LoadOrStore(id, true); busy {
		return
	}
	select {
	case f.assembleSlot <- struct{}{}:
	default:
		f.assembling.Delete(id)
		return
	}
	f.assemblyRunning.Add(1) // counted from now: .stats never shows a gap
	go func() {
		defer func() { f.assemblyRunning.Add(-1); <-f.assembleSlot; f.assembling.Delete(id) }()
		// Background work: a niced thread, so reads being served come first.
		runtime.LockOSThread()
		unix.Setpriority(unix.PRIO_PROCESS, 0, 10)
		// Chunks evicted from memory before their disk-tier write was done
		// are on disk once the queue gets to them: wait for that rather
		// than fetch them from the store again.
		for wait := 0; wait < 200 && !every(chunks, f.cache.Contains); wait++ {
			time.Sleep(50 * time.Millisecond)
		}
		if err := f.cache.Assemble(context.Background(), chunks, true); err != nil {
			f.assemblyFailed.Add(1)
			f.log.Debug("assembling a file for passthrough failed", "err", err)
			return
		}
		f.assemblyDone.Add(1)
		if done != nil {
			done()
		}
	}()
}
