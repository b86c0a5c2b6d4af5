package cache

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/gpuwarm/gpuwarm/internal/directio"
	"github.com/gpuwarm/gpuwarm/internal/rofile"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

var errCorruptEntry = errors.New("disk cache entry corrupt")

// diskTier keeps chunk plaintexts as files named "<sha256>.<xxh64>" under
// dir/<first two hex digits>/, bounded in bytes with LRU eviction.
type diskTier struct {
	dir  string
	lock *os.File
	log  *slog.Logger
	seq  atomic.Uint64
	// noDirect is set once the filesystem refused O_DIRECT.
	noDirect atomic.Bool

	// Writes happen off the read path: queue feeds writers, niced threads
	// that wait for the cache to be quiet (waitQuiet) and yield the CPU to
	// the reads being served; a full queue makes the caller write itself
	// (back-pressure, nothing dropped).
	queue   chan pendingWrite
	writers sync.WaitGroup
	pending counter // queued writes not done yet
	// busy says how long the cache will still be busy, and whether only
	// the CPUs are (nil: never busy).
	busy func() (time.Duration, bool)
	// flushing counts callers waiting for every queued write (Cache.Flush).
	flushing atomic.Int32
	// closed (under closeMu) ends writing: a fetch still in flight when the
	// cache closes (a daemon stopping) is not written, since the directory
	// lock is let go and another daemon may own the directory next.
	closeMu sync.RWMutex
	closed  atomic.Bool
	// closeBy (unix nanoseconds) is when close stops writing what is still
	// queued (see closeWriteLimit); skippedAtClose counts what it left.
	closeBy        atomic.Int64
	skippedAtClose atomic.Int64
	// released (under releaseMu) says the directory lock is let go: from
	// then on nothing is committed. Writes queued before close still are,
	// for closeWriteLimit.
	releaseMu sync.RWMutex
	released  bool
	// queuedBytes is what the queue holds; outsideBytes, what of it the
	// memory tier no longer holds: the memory the queue costs beyond
	// --mem-cache, bounded by maxQueuedBytes.
	queuedBytes  atomic.Int64
	outsideBytes atomic.Int64
	chunkWrites  atomic.Int64 // chunk files written by addBuf
	// queuedIDs counts the queued writes of each chunk.
	queuedMu  sync.Mutex
	queuedIDs map[digest.ID]int
	// held counts, per chunk, the assemblies about to take it in (see
	// holdWrites); heldCond wakes the writers waiting on them.
	heldMu   sync.Mutex
	heldCond *sync.Cond
	held     map[digest.ID]int

	mu sync.Mutex
	// limit is the most the tier holds: configured, or less while the
	// filesystem under dir has less room (see fit). lastFit is when fit
	// last looked; full counts writes the filesystem refused for room.
	limit, configured int64
	lastFit, warned   time.Time
	full              int64
	used              int64
	lru               *list.List // values *diskEntry
	entries           map[digest.ID]*list.Element
	hits              int64
	misses            int64
	evicted           int64
	// hashed counts files hashed by passthrough opens.
	hashed int64
	// unchecked counts entries still marked recheck, rechecks those
	// rechecked and found good (recheck.go).
	unchecked, rechecks int64
	corruptFound        atomic.Int64
	rechecked           chan struct{} // closed when no recheck is left
	recheckers          sync.WaitGroup

	// journal keeps passthrough verifications across restarts (verified.go).
	journal *journal
	// inFile says which assembled file holds each chunk whose own entry
	// was dropped, fileChunks which chunks each assembled file indexes
	// (infile.go).
	inFile     map[digest.ID]inFileLoc
	fileChunks map[digest.ID][]digest.ID
}

type pendingWrite struct {
	id digest.ID
	b  *buf // referenced until written
	at time.Time
}

type diskEntry struct {
	id   digest.ID
	sum  uint64
	size int64
	// verified is the file's identity when its contents last matched sum
	// on a passthrough open; an unchanged file (same inode, size, ctime: any
	// write moves ctime) need not be hashed again.
	verified fileStamp
	// unread says the file was trusted without being read back (written
	// by this cache) and no open has read it since (see diskTier.open).
	unread bool
	// recheck says an earlier daemon's journal trusted the file, which
	// this one has not hashed yet: no passthrough until it has
	// (recheck.go).
	recheck bool
}

type fileStamp struct {
	ino, size int64
	ctime     int64
}

// statStamp is the identity of the file at path, stampOf of an open one.
func statStamp(path string) (fileStamp, bool) {
	var st syscall.Stat_t
	return stampFrom(&st, syscall.Stat(path, &st))
}

func stampOf(f *os.File) (fileStamp, bool) {
	var st syscall.Stat_t
	return stampFrom(&st, syscall.Fstat(int(f.Fd()), &st))
}

func stampFrom(st *syscall.Stat_t, err error) (fileStamp, bool) {
	if err != nil {
		return fileStamp{}, false
	}
	return fileStamp{ino: int64(st.Ino), size: st.Size, ctime: st.Ctim.Nano()}, true
}

func openDiskTier(dir string, limit int64, log *slog.Logger, busy func() (time.Duration, bool)) (*diskTier, error) {
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("cache directory: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	d := &diskTier{dir: dir, lock: lock, log: log, busy: busy, limit: limit, configured: limit, lru: list.New(), entries: make(map[digest.ID]*list.Element), queuedIDs: map[digest.ID]int{}, held: map[digest.ID]int{},
		inFile: map[digest.ID]inFileLoc{}, fileChunks: map[digest.ID][]digest.ID{}}
	// Writes in flight when an earlier process died are garbage: temporary
	// files are named by a sequence number (or are the journal's).
	tmps, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	for _, t := range tmps {
		if _, err := strconv.ParseUint(t.Name(), 10, 64); (err == nil || t.Name() == journalName) && t.Type().IsRegular() {
			os.Remove(filepath.Join(dir, "tmp", t.Name()))
		}
	}
	type found struct {
		e     diskEntry
		atime int64
	}
	var all []found
	// Only the shard directories (two hex digits) are the disk tier's: a
	// file there that is not a chunk file is debris and goes. Anything else
	// under dir (the journal, the restores' replay records, whatever else a
	// misdirected --cache-dir holds) is left alone.
	top, err := os.ReadDir(dir)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("scan cache directory %s: %w", dir, err)
	}
	// The shards in parallel: a daemon starting on a full disk tier
	// stats every file before it mounts (50k files after a reboot: 570-680
	// ms one shard at a time on the 2-CPU benchmark VM).
	shards := make([][]found, len(top))
	var debris atomic.Int64
	var g errgroup.Group
	g.SetLimit(16)
	for k, sd := range top {
		if !sd.IsDir() || !isShard(sd.Name()) {
			continue
		}
		g.Go(func() error {
			files, err := os.ReadDir(filepath.Join(dir, sd.Name()))
			if err != nil {
				return err
			}
			for _, de := range files {
				p := filepath.Join(dir, sd.Name(), de.Name())
				if de.IsDir() {
					continue
				}
				id, sum, ok := parseName(de.Name())
				info, ierr := de.Info()
				if !ok || ierr != nil || sd.Name() != id.String()[:2] {
					os.Remove(p)
					debris.Add(1)
					continue
				}
				shards[k] = append(shards[k], found{diskEntry{id: id, sum: sum, size: info.Size()}, info.ModTime().UnixNano()})
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("scan cache directory %s: %w", dir, err)
	}
	for _, sh := range shards {
		all = append(all, sh...)
	}
	if n := debris.Load(); n > 0 {
		log.Warn("removed files from the disk tier that are no cache entries (bad names, wrong shard, unreadable)", "dir", dir, "files", n)
	}
	// Oldest first, so the newest end up at the front of the LRU.
	sort.Slice(all, func(i, j int) bool { return all[i].atime < all[j].atime })
	for _, f := range all {
		e := f.e
		d.entries[e.id] = d.lru.PushFront(&e)
		d.used += e.size
	}
	d.mu.Lock()
	gone := d.evictLocked(0)
	d.mu.Unlock()
	removeFiles(gone)
	d.fit()
	var kept []verifiedRec
	d.journal, kept = openJournal(dir, log, func(r verifiedRec) bool {
		el, ok := d.entries[r.id]
		return ok && el.Value.(*diskEntry).sum == r.sum && el.Value.(*diskEntry).size == r.stamp.size
	})
	for _, r := range kept {
		d.entries[r.id].Value.(*diskEntry).recheck = true
	}
	d.loadMaps()
	d.heldCond = sync.NewCond(&d.heldMu)
	d.queue = make(chan pendingWrite, queueLen)
	for i := 0; i < 2; i++ {
		d.writers.Add(1)
		go func() {
			defer d.writers.Done()
			// Writing the disk tier is background work: its threads run
			// niced, so a program being served (and the fetches it waits
			// for) get the CPU first; the writes catch up when it idles.
			runtime.LockOSThread()
			unix.Setpriority(unix.PRIO_PROCESS, 0, 10)
			for w := range d.queue {
				if !d.has(w.id) && !d.inFileHas(w.id) {
					d.waitQuiet(w.at)
				} // else addBuf skips it: no wait for nothing
				d.waitHeld(w.id)
				if d.closed.Load() && time.Now().UnixNano() > d.closeBy.Load() {
					d.skippedAtClose.Add(1)
				} else if err := d.addBuf(w.id, w.b); err != nil {
					d.log.Warn("disk cache write failed", "chunk", w.id.Short(), "err", err)
				}
				d.queuedBytes.Add(-int64(len(w.b.b)))
				d.unqueue(w.b)
				d.dequeued(w.id)
				w.b.release()
				d.pending.add(-1)
			}
		}()
	}
	log.Debug("disk cache opened", "dir", dir, "entries", len(d.entries), "bytes", d.used)
	d.startRecheck()
	return d, nil
}

// remember journals a file trusted for passthrough, compacting the
// journal when it has grown past twice the live entries.
func (d *diskTier) remember(r verifiedRec) {
	d.mu.Lock()
	live := len(d.entries)
	d.mu.Unlock()
	if d.journal.add(r, live) {
		d.journal.compact(d.verifiedRecs())
	}
}

// verifiedRecs lists the entries verified for passthrough (the journal's
// live records).
func (d *diskTier) verifiedRecs() []verifiedRec {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []verifiedRec
	for id, el := range d.entries {
		if e := el.Value.(*diskEntry); e.verified != (fileStamp{}) {
			out = append(out, verifiedRec{id: id, sum: e.sum, stamp: e.verified})
		}
	}
	return out
}

// isShard says whether name is one of the disk tier's shard directories.
func isShard(name string) bool {
	if len(name) != 2 {
		return false
	}
	for _, c := range name {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func parseName(name string) (digest.ID, uint64, bool) {
	hexID, hexSum, ok := strings.Cut(name, ".")
	if !ok {
		return digest.Zero, 0, false
	}
	id, err := digest.Parse(hexID)
	if err != nil {
		return digest.Zero, 0, false
	}
	sum, err := strconv.ParseUint(hexSum, 16, 64)
	if err != nil || len(hexSum) != 16 {
		return digest.Zero, 0, false
	}
	return id, sum, true
}

func (d *diskTier) path(id digest.ID, sum uint64) string {
	h := id.String()
	return filepath.Join(d.dir, h[:2], fmt.Sprintf("%s.%016x", h, sum))
}

func (d *diskTier) has(id digest.ID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.entries[id]
	return ok
}

func (d *diskTier) lookup(id digest.ID, countMiss bool) (diskEntry, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	el, ok := d.entries[id]
	if !ok {
		if countMiss {
			d.misses++
		}
		return diskEntry{}, false
	}
	d.lru.MoveToFront(el)
	return *el.Value.(*diskEntry), true
}

// peek returns the entry of id, without making it recently used.
func (d *diskTier) peek(id digest.ID) (diskEntry, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	el, ok := d.entries[id]
	if !ok {
		return diskEntry{}, false
	}
	return *el.Value.(*diskEntry), true
}

// get reads and verifies an entry into a buffer from pool (one reference).
func (d *diskTier) get(id digest.ID, size uint32, pool *bufPool) (*buf, error) {
	e, ok := d.lookup(id, true)
	if !ok {
		return nil, fs.ErrNotExist
	}
	if size == 0 {
		size = uint32(e.size)
	}
	b := pool.get(int(size))
	err := readWhole(d.path(id, e.sum), b.b)
	if errors.Is(err, fs.ErrNotExist) {
		// Evicted (or removed by hand) since the lookup: a plain miss.
		b.release()
		d.drop(id, e)
		return nil, err
	}
	if err == nil && (xxhash.Sum64(b.b) != e.sum || int64(len(b.b)) != e.size) {
		err = fmt.Errorf("%w: %s: checksum or size mismatch", errCorruptEntry, d.path(id, e.sum))
	}
	return d.readDone(b, err, func() { d.drop(id, e) })
}

// readDone ends a read of an entry into b: a hit, or, on err, the entry
// dropped (drop) and err reported as a corrupt entry.
func (d *diskTier) readDone(b *buf, err error, drop func()) (*buf, error) {
	if err != nil {
		b.release()
		drop()
		if !errors.Is(err, errCorruptEntry) {
			err = fmt.Errorf("%w: %v", errCorruptEntry, err)
		}
		return nil, err
	}
	d.mu.Lock()
	d.hits++
	d.mu.Unlock()
	return b, nil
}

// open returns the entry's file after verifying its contents.
func (d *diskTier) open(id digest.ID, size int64) (*os.File, error) {
	e, ok := d.lookup(id, false)
	if !ok {
		return nil, fs.ErrNotExist
	}
	f, err := rofile.Open(d.path(id, e.sum))
	if err != nil {
		d.drop(id, e)
		return nil, err
	}
	stamp, stamped := stampOf(f)
	hashed := false
	switch {
	case !stamped || e.recheck || stamp != e.verified || stamp.size != size:
		willNeed(f, size)
		h := xxhash.New()
		n, err := hashFile(h, f)
		if err != nil || h.Sum64() != e.sum || n != size {
			f.Close()
			d.drop(id, e)
			return nil, fmt.Errorf("%w: %s", errCorruptEntry, d.path(id, e.sum))
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			f.Close()
			return nil, err
		}
		hashed = true
	case e.unread:
		// Trusted without being hashed back, so not read either: ask for
		// all of it now, as hashing it would have (random reads then find
		// it in the page cache), without waiting.
		willNeed(f, size)
	}
	d.mu.Lock()
	d.hits++
	if hashed {
		d.hashed++
	}
	if el, ok := d.entries[id]; ok && stamped && el.Value.(*diskEntry).sum == e.sum {
		x := el.Value.(*diskEntry)
		x.verified, x.unread = stamp, false
		if x.recheck {
			x.recheck = false // hashed here, ahead of the background pass
			d.unchecked--
		}
	}
	d.mu.Unlock()
	if hashed && stamped {
		d.remember(verifiedRec{id: id, sum: e.sum, stamp: stamp})
	}
	return f, nil
}

func (d *diskTier) drop(id digest.ID, e diskEntry) {
	d.mu.Lock()
	m := ""
	if el, ok := d.entries[id]; ok && el.Value.(*diskEntry).sum == e.sum {
		d.lru.Remove(el)
		delete(d.entries, id)
		d.used -= e.size
		m = d.forgetLocked(id)
	}
	d.mu.Unlock()
	os.Remove(d.path(id, e.sum))
	if m != "" {
		os.Remove(m)
	}
}

// addAsync queues a write of b's bytes, holding a reference until done;
// inMemory reports whether the memory tier holds b (asked once b counts as
// queued, so that a drop between the two is counted once). A buffer whose
// write is queued already is not queued again.
func (d *diskTier) addAsync(id digest.ID, b *buf, inMemory func() bool) {
	d.closeMu.RLock() // not while close closes the queue
	defer d.closeMu.RUnlock()
	if d.closed.Load() {
		return
	}
	if !b.diskQ.CompareAndSwap(notQueued, queuedInMemory) {
		return
	}
	n := int64(len(b.b))
	if !inMemory() {
		d.droppedFromMemory(b)
	}
	d.pending.add(1)
	b.ref()
	if d.outsideBytes.Load() <= maxQueuedBytes {
		d.queuedBytes.Add(n)
		d.queuedMu.Lock()
		d.queuedIDs[id]++
		d.queuedMu.Unlock()
		select {
		case d.queue <- pendingWrite{id, b, time.Now()}:
			return
		default:
			d.dequeued(id)
			d.queuedBytes.Add(-n)
		}
	}
	// The queue is full: the caller writes (back-pressure, nothing dropped).
	d.unqueue(b)
	d.pending.add(-1)
	if err := d.addBuf(id, b); err != nil {
		d.log.Warn("disk cache write failed", "chunk", id.Short(), "err", err)
	}
	b.release()
}

// holdWrites holds back the queued writes of chunks (an assembly is taking
// them in, after which they are skipped) until release.
func (d *diskTier) holdWrites(chunks []chunk.Ref) (release func()) {
	d.heldMu.Lock()
	for _, c := range chunks {
		d.held[c.ID]++
	}
	d.heldMu.Unlock()
	return func() {
		d.heldMu.Lock()
		for _, c := range chunks {
			if d.held[c.ID]--; d.held[c.ID] <= 0 {
				delete(d.held, c.ID)
			}
		}
		d.heldMu.Unlock()
		d.heldCond.Broadcast()
	}
}

// waitHeld waits while an assembly holds chunk id's write back.
func (d *diskTier) waitHeld(id digest.ID) {
	d.heldMu.Lock()
	for d.held[id] > 0 {
		d.heldCond.Wait()
	}
	d.heldMu.Unlock()
}

// droppedFromMemory is told of each buffer the memory tier lets go: one
// whose write is still queued now costs memory of its own.
func (d *diskTier) droppedFromMemory(b *buf) {
	if b.diskQ.CompareAndSwap(queuedInMemory, queuedOutside) {
		d.outsideBytes.Add(int64(len(b.b)))
	}
}

// unqueue marks b's write as no longer queued.
func (d *diskTier) unqueue(b *buf) {
	if b.diskQ.Swap(notQueued) == queuedOutside {
		d.outsideBytes.Add(-int64(len(b.b)))
	}
}

func (d *diskTier) dequeued(id digest.ID) {
	d.queuedMu.Lock()
	if d.queuedIDs[id]--; d.queuedIDs[id] <= 0 {
		delete(d.queuedIDs, id)
	}
	d.queuedMu.Unlock()
}

// queued reports whether a write of chunk id is waiting in the queue.
func (d *diskTier) queued(id digest.ID) bool {
	d.queuedMu.Lock()
	defer d.queuedMu.Unlock()
	return d.queuedIDs[id] > 0
}

// maxQueuedBytes bounds the memory that queued disk-tier writes hold beyond
// the memory tier's; queueLen bounds their number (a queued write is 64
// bytes: the queue's buffer is 4 MiB); maxQueueAge, how long a write waits
// for a quiet moment. Both let a whole cold restore go by: a 16 GB model's
// fetches 16,000 chunks of 1 MiB over 12-15 s, and writes that go ahead
// meanwhile on a disk the store also reads from take the restore's share of
// it (docs/design.md, The block cache).
const (
	maxQueuedBytes = 256 << 20
	queueLen       = 1 << 16
	maxQueueAge    = 30 * time.Second
)

// closeWriteLimit bounds how long close writes what is still queued: the
// writes wait for quiet moments, so a busy mount may stop with thousands
// queued, and a stop must end within its service manager's timeout (30 s
// in deploy/). What is left is only not cached on disk.
var closeWriteLimit = 15 * time.Second

// waitQuiet holds a background write (queued at at) back while the cache
// is busy (see quiet.go). The writes cost the reads more than the CPU
// their niced threads take: the kernel's side of the I/O and the
// filesystem work they cause are not niced. On the benchmark VM they
// doubled the time a prefetch replay took to bring in python's 13 MB
// (86-103 ms against 30-53 ms with them held back), and a cold pass over
// 744 MB took 1.4-1.8 s with them against 0.9-1.1 s without. The writes go
// ahead anyway once the chunks the memory tier has let go fill half the
// queue's bound (so its memory stays bounded and no fetch has to write for
// itself) or the queue is half full, while Flush waits, at close, after
// maxQueueAge, and after maxCPUWait if only the CPUs are busy. Chunks the
// memory tier still holds cost the queue nothing: a cold pass that fits in
// it is written once the mount is quiet, and an assembled file's chunks
// are not written at all.
func (d *diskTier) waitQuiet(at time.Time) {
	for d.busy != nil && !d.closed.Load() && d.flushing.Load() == 0 &&
		d.outsideBytes.Load() < maxQueuedBytes/2 && len(d.queue) < cap(d.queue)/2 && time.Since(at) < maxQueueAge {
		wait, cpuOnly := d.busy()
		if wait <= 0 || cpuOnly && time.Since(at) > maxCPUWait {
			return
		}
		time.Sleep(wait)
	}
}

// addBuf writes a chunk with O_DIRECT: the data goes from memory that is
// already mapped straight to the device, instead of being copied into
// page-cache pages the kernel must first allocate (the largest cost of
// filling the disk tier on the benchmark VM). A pooled buffer pads to whole
// blocks in its own unused capacity; others are copied into an aligned
// scratch buffer. Filesystems that refuse O_DIRECT go through add.
func (d *diskTier) addBuf(id digest.ID, b *buf) error {
	size := len(b.b)
	if size == 0 || d.noDirect.Load() {
		return d.add(id, b.b)
	}
	if int64(size) > d.limitNow() || d.has(id) || d.inFileHas(id) {
		return nil // too large, or cached already (an assembled file holds it)
	}
	data := b.b
	if !directio.IsAligned(data) {
		padded, done := directio.Pad(data)
		defer done()
		data = padded[:size]
	}
	sum := xxhash.Sum64(b.b)
	for retried := false; ; retried = true {
		tmp := filepath.Join(d.dir, "tmp", strconv.FormatUint(d.seq.Add(1), 10))
		err := directio.WriteNew(tmp, data, 0o600, false)
		switch {
		case err == nil:
			d.chunkWrites.Add(1)
			return d.commit(id, tmp, int64(size), sum)
		case errors.Is(err, syscall.EINVAL):
			d.noDirect.Store(true)
			return d.add(id, b.b)
		case !retried && noRoom(err):
			// WriteNew removed the partial file. Shrink to what the
			// filesystem holds (evicting), then try once more.
			if !d.outOfRoom(int64(size)) {
				return nil
			}
		default:
			return err
		}
	}
}

// noRoom says whether err is the filesystem (or a quota) out of room.
func noRoom(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

func (d *diskTier) add(id digest.ID, b []byte) error {
	return d.addStream(id, int64(len(b)), false, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// addStream adds an entry of size bytes that write produces (write may be
// called again if the filesystem turns O_DIRECT down midway). The file is
// written with O_DIRECT through an aligned block buffer unless cached is
// set: assembling a 400 MB file through the page cache while the program
// was still reading it allocated 400 MB of cache pages under its reads,
// which halved them on the benchmark VM.
func (d *diskTier) addStream(id digest.ID, size int64, cached bool, write func(io.Writer) error) error {
	if size > d.limitNow() || d.has(id) {
		return nil
	}
	for retried := false; ; retried = true {
		tmp := filepath.Join(d.dir, "tmp", strconv.FormatUint(d.seq.Add(1), 10))
		var n int64
		var sum uint64
		var err error
		if !d.noDirect.Load() && !cached {
			n, sum, err = writeDirect(tmp, write)
			if errors.Is(err, syscall.EINVAL) {
				os.Remove(tmp)
				d.noDirect.Store(true)
			}
		}
		if d.noDirect.Load() || cached {
			n, sum, err = writeBuffered(tmp, write)
		}
		if err == nil && n != size {
			err = fmt.Errorf("disk cache entry %s: wrote %d bytes, want %d", id.Short(), n, size)
		}
		if err == nil {
			return d.commit(id, tmp, size, sum)
		}
		os.Remove(tmp)
		if retried || !noRoom(err) {
			return err
		}
		if !d.outOfRoom(size) {
			return nil
		}
	}
}

// limitNow is the current limit.
func (d *diskTier) limitNow() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.limit
}

// fsReserve is the most free space the tier leaves on its filesystem for
// the worker's other users of the disk (a twentieth of a smaller
// filesystem): a cache that filled the disk would fail everything else on
// the worker before itself.
const fsReserve = 256 << 20

// fitEvery is how often commits look at the filesystem's free space.
const fitEvery = 5 * time.Second

// fit sets the limit to what the filesystem under dir holds: the tier's own
// bytes plus the free space, less the reserve, when that is less than the
// configured limit (evicting down to it), and back up toward the configured
// limit as room comes back. A tier over a disk that other files fill keeps
// caching in the room left, instead of failing every write.
func (d *diskTier) fit() {
	var st unix.Statfs_t
	if err := unix.Statfs(d.dir, &st); err != nil || st.Blocks == 0 {
		return // a filesystem that does not say its size is not fitted to
	}
	bs := st.Frsize
	if bs <= 0 {
		bs = st.Bsize
	}
	avail, total := int64(st.Bavail)*bs, int64(st.Blocks)*bs
	d.mu.Lock()
	old, first := d.limit, d.lastFit.IsZero()
	d.limit = min(d.configured, max(d.used+avail-min(fsReserve, total/20), 0))
	d.lastFit = time.Now()
	lim, used := d.limit, d.used
	gone := d.evictLocked(0)
	// Said once a minute at most: at the edge of a full disk the room
	// moves by a few blocks at every look.
	say := lim < old && time.Since(d.warned) > time.Minute || lim == d.configured && old < d.configured
	if say {
		d.warned = time.Now()
	}
	d.mu.Unlock()
	removeFiles(gone)
	switch {
	case !say:
	case first:
		// A limit larger than the disk (the default's 50 GiB on a smaller
		// one) is what the tier starts with, not news.
		d.log.Info("the disk cache's filesystem is short of room for the tier's limit: it keeps what there is room for",
			"dir", d.dir, "keeps", lim, "limit", d.configured, "free", avail)
	case lim < old:
		d.log.Warn("the disk cache's filesystem is short of room: the tier keeps less than its limit until room comes back",
			"dir", d.dir, "keeps", lim, "limit", d.configured, "held", used, "free", avail)
	default:
		d.log.Info("the disk cache's filesystem has room for the tier's whole limit again", "dir", d.dir, "limit", d.configured)
	}
}

// outOfRoom handles a write of size bytes the filesystem refused for room:
// the limit shrinks to the room there is (fit) and the least recently used
// entries go to make room for size. It reports whether the write fits now.
func (d *diskTier) outOfRoom(size int64) bool {
	d.fit()
	d.mu.Lock()
	d.full++
	ok := size <= d.limit
	var gone []string
	if ok {
		gone = d.evictLocked(size)
	}
	d.mu.Unlock()
	removeFiles(gone)
	return ok
}

func writeBuffered(name string, write func(io.Writer) error) (int64, uint64, error) {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, 0, err
	}
	h := xxhash.New()
	cw := &countWriter{w: io.MultiWriter(f, h)}
	err = write(cw)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return cw.n, h.Sum64(), err
}

var streamBufs = sync.Pool{New: func() any {
	raw := make([]byte, 4<<20+directio.Align)
	b := directio.Aligned(raw, 4<<20)
	return &b
}}

func writeDirect(name string, write func(io.Writer) error) (int64, uint64, error) {
	fd, err := directio.OpenNew(name, 0o600)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(fd)
	bp := streamBufs.Get().(*[]byte)
	defer streamBufs.Put(bp)
	w := &directWriter{fd: fd, buf: *bp}
	h := xxhash.New()
	cw := &countWriter{w: io.MultiWriter(w, h)}
	if err := write(cw); err != nil {
		return cw.n, 0, err
	}
	return cw.n, h.Sum64(), w.finish(cw.n)
}

// directWriter collects writes in an aligned buffer and writes it out in
// whole blocks with O_DIRECT; finish writes the tail through the page
// cache.
type directWriter struct {
	fd  int
	buf []byte
	n   int
}

func (w *directWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		k := copy(w.buf[w.n:], p)
		w.n += k
		p = p[k:]
		if w.n == len(w.buf) {
			if err := directio.WriteAll(w.fd, w.buf); err != nil {
				return total - len(p), err
			}
			w.n = 0
		}
	}
	return total, nil
}

func (w *directWriter) finish(size int64) error {
	full := w.n &^ (directio.Align - 1)
	if err := directio.WriteAll(w.fd, w.buf[:full]); err != nil {
		return err
	}
	return directio.WriteTail(w.fd, w.buf[full:w.n], size-int64(w.n-full))
}

// commit moves a written temporary file into place as id's entry, making
// room first so that the limit always holds.
func (d *diskTier) commit(id digest.ID, tmp string, size int64, sum uint64) error {
	d.releaseMu.RLock()
	defer d.releaseMu.RUnlock()
	if d.released { // a background write that outlived the cache
		os.Remove(tmp)
		return nil
	}
	final := d.path(id, sum)
	// Make room (and reserve it) before the file becomes visible, so the
	// limit always holds; the entry becomes visible only once the file is.
	d.mu.Lock()
	if time.Since(d.lastFit) > fitEvery {
		d.mu.Unlock()
		d.fit()
		d.mu.Lock()
	}
	if _, ok := d.entries[id]; ok {
		d.mu.Unlock()
		os.Remove(tmp)
		return nil
	}
	if _, ok := d.inFile[id]; ok { // inside an assembled file already
		d.mu.Unlock()
		os.Remove(tmp)
		return nil
	}
	gone := d.evictLocked(size)
	if d.used+size > d.limit {
		// Other writes in flight hold the room: skip rather than overshoot.
		d.mu.Unlock()
		removeFiles(gone)
		os.Remove(tmp)
		return nil
	}
	d.used += size
	d.mu.Unlock()
	removeFiles(gone)
	err := os.Rename(tmp, final)
	if errors.Is(err, fs.ErrNotExist) {
		if err = os.MkdirAll(filepath.Dir(final), 0o700); err == nil {
			err = os.Rename(tmp, final)
		}
	}
	// The file holds the bytes just hashed into sum (verified against the
	// chunk's SHA-256 before they were cached): as trustworthy for
	// passthrough as a file hashed back, for as long as it is unchanged
	// (see verified.go). Rename moved its ctime, so its stamp is taken now.
	st, stamped := fileStamp{}, false
	if err == nil {
		st, stamped = statStamp(final)
		stamped = stamped && st.size == size
	}
	d.mu.Lock()
	if err != nil {
		d.used -= size
		d.mu.Unlock()
		os.Remove(tmp)
		return err
	}
	if _, ok := d.entries[id]; ok { // a concurrent add of the same chunk won
		d.used -= size
		d.mu.Unlock()
		return nil
	}
	e := &diskEntry{id: id, sum: sum, size: size}
	if stamped {
		e.verified, e.unread = st, true
	}
	d.entries[id] = d.lru.PushFront(e)
	d.mu.Unlock()
	if stamped {
		d.remember(verifiedRec{id: id, sum: sum, stamp: st})
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// evictLocked drops least recently used entries until need more bytes fit
// and returns their files, which the caller removes once it has let go of
// d.mu (unlinks under the lock would hold up every lookup, and the niced
// writers could be descheduled holding it).
func (d *diskTier) evictLocked(need int64) (gone []string) {
	for d.used+need > d.limit && d.lru.Len() > 0 {
		el := d.lru.Back()
		e := el.Value.(*diskEntry)
		d.lru.Remove(el)
		delete(d.entries, e.id)
		d.used -= e.size
		d.evicted++
		gone = append(gone, d.path(e.id, e.sum))
		if m := d.forgetLocked(e.id); m != "" {
			gone = append(gone, m)
		}
	}
	return gone
}

func removeFiles(paths []string) {
	for _, p := range paths {
		os.Remove(p)
	}
}

func (d *diskTier) stats() TierStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return TierStats{Hits: d.hits, Misses: d.misses, Bytes: d.used, Limit: d.limit,
		Entries: int64(len(d.entries)), Evictions: d.evicted, Queued: d.queuedBytes.Load(), Hashed: d.hashed, Full: d.full,
		Unchecked: d.unchecked, Rechecked: d.rechecks}
}

// close finishes queued writes and releases the directory.
func (d *diskTier) close() error {
	d.closeMu.Lock()
	d.closeBy.Store(time.Now().Add(closeWriteLimit).UnixNano())
	d.closed.Store(true)
	close(d.queue)
	d.closeMu.Unlock()
	d.writers.Wait() // the queued writes, committed
	if n := d.skippedAtClose.Load(); n > 0 {
		d.log.Info("disk cache: queued chunks not written at close (their time ran out); they are fetched again when needed", "chunks", n, "limit", closeWriteLimit)
	}
	d.recheckers.Wait()
	d.releaseMu.Lock()
	d.released = true
	d.releaseMu.Unlock()
	d.journal.close()
	return d.lock.Close()
}

// Dir returns the directory of the disk tier.
func (d *diskTier) Dir() string { return d.dir }

// readWhole fills dst with a disk-tier file, which must be exactly that
// long. The kernel would read a cold file in readahead-window steps (128
// KiB by default), each waited for: asking for the whole file first puts
// all of its I/O in flight at once.
func readWhole(path string, dst []byte) error {
	f, err := rofile.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	willNeed(f, int64(len(dst)))
	if _, err := io.ReadFull(f, dst); err != nil {
		if err == io.ErrUnexpectedEOF || err == io.EOF {
			return fmt.Errorf("%w: %s is shorter than %d bytes", errCorruptEntry, path, len(dst))
		}
		return err
	}
	var one [1]byte
	if n, _ := f.Read(one[:]); n > 0 {
		return fmt.Errorf("%w: %s is longer than %d bytes", errCorruptEntry, path, len(dst))
	}
	return nil
}

// willNeed starts reading the first size bytes of f in the background.
func willNeed(f *os.File, size int64) {
	unix.Fadvise(int(f.Fd()), 0, size, unix.FADV_WILLNEED)
}

// verifyBufs are the buffers passthrough opens hash their files through:
// 1 MiB reads instead of io.Copy's 32 KiB (32 times fewer reads, and
// ~10% less time verifying 200 small files on the benchmark VM).
var verifyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

func hashFile(h io.Writer, f *os.File) (int64, error) {
	bp := verifyBufs.Get().(*[]byte)
	defer verifyBufs.Put(bp)
	return io.CopyBuffer(h, onlyReader{f}, *bp)
}

// onlyReader hides f's WriterTo, which would make io.CopyBuffer ignore
// the buffer it is given.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// counter counts work in progress; wait returns once none is left. Unlike
// sync.WaitGroup it may be waited on while work is being added (a Flush
// while reads go on and queue more writes), which a WaitGroup forbids.
type counter struct {
	mu   sync.Mutex
	n    int
	zero sync.Cond
}

func (c *counter) add(d int) {
	c.mu.Lock()
	c.n += d
	if c.n == 0 && c.zero.L != nil {
		c.zero.Broadcast()
	}
	c.mu.Unlock()
}

func (c *counter) wait() {
	c.mu.Lock()
	if c.zero.L == nil {
		c.zero.L = &c.mu
	}
	for c.n > 0 {
		c.zero.Wait()
	}
	c.mu.Unlock()
}
