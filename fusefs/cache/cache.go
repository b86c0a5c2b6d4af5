// Package cache is the worker-local block cache shared by every image on a
// worker: a memory tier (bounded bytes, LRU) over a disk tier (bounded
// bytes, LRU, crash-safe) over the store.
//
// Chunks are cached as plaintext, keyed by their SHA-256. Bytes reach the
// cache only after chunk.Decode has checked them against that digest. A disk
// file is named "<sha256>.<xxhash64>" and written to a temporary file then
// renamed; every read recomputes the xxhash and drops the file when it does
// not match (torn write, bit rot, tampering), so the chunk is fetched again.
//
// Concurrent misses of one chunk fetch it once (a flight each waiter joins
// with its own buffer reference). Fetches from the store are bounded, and
// demand reads keep a share of the fetch slots that prefetching can never
// take, so background work cannot starve them. Plaintexts live in pooled,
// reference-counted buffers (buf.go) that readers copy out of (ReadAt).
package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/internal/histo"

	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"golang.org/x/sys/unix"
)

// Config sizes the cache.
type Config struct {
	// Dir holds the disk tier; empty means no disk tier.
	Dir       string
	MemBytes  int64
	DiskBytes int64
	// Fetches bounds concurrent store reads (default 64); demand reads
	// always have at least half of them.
	Fetches int
	Logger  *slog.Logger
}

// Priority says who is asking for a chunk.
type Priority int

const (
	Demand   Priority = iota // a reader is waiting
	Prefetch                 // speculative; yields to demand
)

// Cache is the block cache. It is safe for concurrent use.
type Cache struct {
	st   store.Store
	cfg  Config
	log  *slog.Logger
	mem  *memTier
	disk *diskTier
	pool *bufPool

	flightMu sync.Mutex
	flights  map[digest.ID]*flight

	demandSlots   chan struct{}
	prefetchSlots chan struct{}
	sharedSlots   chan struct{}

	fetches, fetchBytes, fetchErrors, corrupt atomic.Int64
	// rangedFetches counts the store reads of blocks (blocks.go), which
	// fetches and fetchBytes include.
	rangedFetches atomic.Int64
	ranged        rangedCounts
	// fetchLatency times every store read; fetchErrKinds counts failures
	// by kind (fetchErrorKinds).
	fetchLatency  histo.Histogram
	fetchErrKinds [len(fetchErrorKinds)]atomic.Int64
	closeOnce     sync.Once

	// active is when a reader last asked for a chunk or a store read
	// ended (unix nanoseconds), fetching counts store reads in flight, cpu
	// watches the machine's idle CPUs: the disk tier's background writes
	// wait until all are quiet (busy).
	active   atomic.Int64
	fetching atomic.Int32
	cpu      cpuMeter
}

// Open creates a cache over st. With a disk tier, Dir is locked for the
// life of the cache and what an earlier process left there is reused.
func Open(st store.Store, cfg Config) (*Cache, error) {
	if cfg.Fetches <= 0 {
		cfg.Fetches = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	c := &Cache{st: st, cfg: cfg, log: cfg.Logger, mem: newMemTier(cfg.MemBytes),
		// The tier's bytes, the buffers readers and fetches hold for a
		// moment, and what free lists of other sizes keep.
		pool:    newBufPool(cfg.MemBytes + cfg.MemBytes/4 + int64(cfg.Fetches)<<20 + 256<<20),
		flights: make(map[digest.ID]*flight)}
	reserved := (cfg.Fetches + 1) / 2
	c.demandSlots = make(chan struct{}, reserved)
	c.sharedSlots = make(chan struct{}, cfg.Fetches-reserved)
	c.prefetchSlots = c.sharedSlots
	if cfg.Dir != "" {
		d, err := openDiskTier(cfg.Dir, cfg.DiskBytes, c.log, c.busy)
		if err != nil {
			return nil, err
		}
		c.disk = d
		c.mem.onDrop = d.droppedFromMemory
	}
	return c, nil
}

// Store returns the store the cache reads from.
func (c *Cache) Store() store.Store { return c.st }

// Close finishes pending disk writes and releases the disk tier's lock. It
// may be called more than once.
func (c *Cache) Close() error {
	var err error
	c.closeOnce.Do(func() {
		if c.disk != nil {
			err = c.disk.close()
		}
	})
	return err
}

// Flush waits until every chunk fetched so far is written to the disk tier
// (the writes go ahead at once, busy or not).
func (c *Cache) Flush() {
	if c.disk != nil {
		c.disk.flushing.Add(1)
		defer c.disk.flushing.Add(-1)
		c.disk.pending.wait()
	}
}

// Get returns a copy of the plaintext of chunk id (size bytes; 0 if not
// known). ReadAt copies only what a caller needs.
func (c *Cache) Get(ctx context.Context, id digest.ID, size uint32) ([]byte, error) {
	b, err := c.get(ctx, id, size, Demand)
	if err != nil {
		return nil, err
	}
	defer b.release()
	return append([]byte(nil), b.b...), nil
}

// ReadAt copies chunk id's bytes from off into dst and returns how many it
// copied (fewer than len(dst) only at the chunk's end).
func (c *Cache) ReadAt(ctx context.Context, id digest.ID, size uint32, dst []byte, off int64) (int, error) {
	b, err := c.get(ctx, id, size, Demand)
	if err != nil {
		return 0, err
	}
	defer b.release()
	if off < 0 || off > int64(len(b.b)) {
		return 0, fmt.Errorf("chunk %s: read at %d of %d bytes", id.Short(), off, len(b.b))
	}
	return copy(dst, b.b[off:]), nil
}

// View returns the bytes [off, off+n) of chunk id (clipped to the chunk)
// without copying them, and release, which the caller must call once it is
// done with them: FUSE replies hand them to the kernel straight from the
// memory tier (a copy into a fresh reply buffer cost more than the read on
// the benchmark VM, where first-touching a page costs ~17 µs). The bytes
// are shared and read-only; after release their buffer may be recycled.
// release may be called more than once.
func (c *Cache) View(ctx context.Context, id digest.ID, size uint32, off int64, n int) ([]byte, func(), error) {
	b, err := c.get(ctx, id, size, Demand)
	if err != nil {
		return nil, nil, err
	}
	if off < 0 || off > int64(len(b.b)) || n < 0 {
		b.release()
		return nil, nil, fmt.Errorf("chunk %s: view of %d bytes at %d of %d", id.Short(), n, off, len(b.b))
	}
	end := min(int64(len(b.b)), off+int64(n))
	var once sync.Once
	return b.b[off:end:end], func() { once.Do(b.release) }, nil
}

// Fetch makes chunk id present in the cache without returning it. Prefetch
// priority waits for a free slot behind demand reads.
func (c *Cache) Fetch(ctx context.Context, id digest.ID, size uint32, p Priority) error {
	if c.mem.has(id) || (c.disk != nil && c.disk.has(id)) {
		return nil
	}
	return c.fill(ctx, id, size, p)
}

// Warm makes chunk id present in the memory tier, reading it from the disk
// tier or the store, at priority p: readahead of a file being read, which
// must not wait for a disk read per chunk.
func (c *Cache) Warm(ctx context.Context, id digest.ID, size uint32, p Priority) error {
	if c.mem.has(id) {
		return nil
	}
	return c.fill(ctx, id, size, p)
}

// fill gets a chunk into the cache and lets go of it.
func (c *Cache) fill(ctx context.Context, id digest.ID, size uint32, p Priority) error {
	b, err := c.get(ctx, id, size, p)
	if err == nil {
		b.release()
	}
	return err
}

// InMemory reports whether the chunk is in the memory tier.
func (c *Cache) InMemory(id digest.ID) bool { return c.mem.has(id) }

// Contains reports whether the chunk is in either tier (without reading it).
func (c *Cache) Contains(id digest.ID) bool {
	return c.mem.has(id) || (c.disk != nil && c.disk.has(id))
}

// Kept reports whether the chunk is in either tier or queued to be written
// to the disk tier (evicted from memory before its write was done).
func (c *Cache) Kept(id digest.ID) bool {
	return c.Contains(id) || c.disk != nil && c.disk.queued(id)
}

// flight is one load of a chunk that concurrent callers wait for. Each
// joins before the load ends and is handed a reference of its own.
type flight struct {
	done    chan struct{}
	b       *buf
	err     error
	waiters int32
}

// get returns the chunk with a reference the caller releases.
func (c *Cache) get(ctx context.Context, id digest.ID, size uint32, p Priority) (*buf, error) {
	b, err := c.getAny(ctx, id, size, p)
	if err == nil && size != 0 && len(b.b) != int(size) {
		// (Size 0: the caller does not know the length; manifests give
		// every chunk one.) The chunk is what its ID says, but the caller's
		// image gives it another length: whichever length came first (the
		// memory tier, or a flight another image started) must not decide
		// what this caller gets. Always an error, as a cold read of it is.
		n := len(b.b)
		b.release()
		return nil, fmt.Errorf("%w: chunk %s is %d bytes, the image says %d", ErrSizeMismatch, id.Short(), n, size)
	}
	return b, err
}

// ErrSizeMismatch is returned (wrapped) for a chunk whose length is not the
// one the caller's image gives it: the image is inconsistent.
var ErrSizeMismatch = errors.New("chunk size does not match the image")

func (c *Cache) getAny(ctx context.Context, id digest.ID, size uint32, p Priority) (*buf, error) {
	c.Active()
	if b, ok := c.mem.get(id); ok {
		return b, nil
	}
	return c.join(ctx, id, func(ctx context.Context) (*buf, error) { return c.load(ctx, id, size, p) })
}

// join waits for the flight loading id, starting it with load if there is
// none, and returns the buffer with a reference the caller releases.
func (c *Cache) join(ctx context.Context, id digest.ID, load func(context.Context) (*buf, error)) (*buf, error) {
	c.flightMu.Lock()
	f, ok := c.flights[id]
	if !ok {
		f = &flight{done: make(chan struct{})}
		c.flights[id] = f
		// The load outlives a canceled caller: others may be waiting.
		go c.fly(context.WithoutCancel(ctx), f, id, load)
	}
	f.waiters++
	c.flightMu.Unlock()
	select {
	case <-f.done:
		return f.b, f.err
	case <-ctx.Done():
		go func() {
			<-f.done
			if f.b != nil {
				f.b.release()
			}
		}()
		return nil, ctx.Err()
	}
}

func (c *Cache) fly(ctx context.Context, f *flight, id digest.ID, load func(context.Context) (*buf, error)) {
	b, err := load(ctx)
	c.flightMu.Lock()
	delete(c.flights, id)
	if b != nil {
		b.refs.Add(f.waiters) // one for each waiter; no one joins any more
	}
	f.b, f.err = b, err
	c.flightMu.Unlock()
	if b != nil {
		b.release() // the load's own
	}
	close(f.done)
}

// load reads a chunk from the disk tier or the store into a buffer with one
// reference, and puts it in the memory tier.
func (c *Cache) load(ctx context.Context, id digest.ID, size uint32, p Priority) (*buf, error) {
	if b, ok := c.fromTiers(id, size); ok {
		return b, nil
	}
	release, err := c.acquire(ctx, p)
	if err != nil {
		return nil, err
	}
	if gi, ok := c.st.(store.GetIntoer); ok && size != 0 {
		b, err := c.fetchInto(ctx, gi, id, size)
		release()
		if err != nil {
			return nil, err
		}
		c.keep(id, b)
		return b, nil
	}
	start := time.Now()
	blob, err := store.ReadAll(ctx, c.st, store.H(store.Chunk, id))
	release()
	if err := c.fetched(start, len(blob), err); err != nil {
		return nil, fmt.Errorf("fetch chunk %s from %s: %w", id.Short(), c.st.Location(), err)
	}
	var b *buf
	var data []byte
	if size != 0 {
		b = c.pool.get(int(size))
		data, err = chunk.DecodeTo(b.b[:0], blob, id)
	} else {
		data, err = chunk.Decode(blob, id)
	}
	if err != nil {
		if b != nil {
			b.release()
		}
		c.fetchFailed(chunk.ErrCorrupt)
		c.corrupt.Add(1)
		return nil, fmt.Errorf("chunk from %s: %w", c.st.Location(), err)
	}
	if size != 0 && uint32(len(data)) != size {
		b.release()
		c.fetchFailed(chunk.ErrCorrupt)
		return nil, fmt.Errorf("chunk %s: %w: %d bytes, manifest says %d", id.Short(), chunk.ErrCorrupt, len(data), size)
	}
	switch {
	case b != nil && len(data) > 0 && &data[0] == &b.b[:1][0]:
		b.b = data
	case b != nil:
		b.release()
		fallthrough
	default:
		if len(blob) > 0 && blob[0] == chunk.CodecRaw {
			data = append([]byte(nil), data...) // don't pin the blob's extra byte
		}
		b = heapBuf(data)
	}
	c.keep(id, b)
	return b, nil
}

// keep puts what was just fetched from the store in the memory tier and
// queues its write to the disk tier.
func (c *Cache) keep(id digest.ID, b *buf) {
	c.mem.add(id, b)
	if c.disk != nil {
		c.queueWrite(id, b)
	}
}

// queueWrite queues b's write to the disk tier (which counts b's memory
// against the queue's bound once the memory tier no longer holds it).
func (c *Cache) queueWrite(id digest.ID, b *buf) {
	c.disk.addAsync(id, b, func() bool { return c.mem.holds(id, b) })
}

// fromTiers returns chunk id from the memory tier (filled by a flight that
// just ended) or the disk tier (putting it in the memory tier), if either
// holds it whole and good.
func (c *Cache) fromTiers(id digest.ID, size uint32) (*buf, bool) {
	if b, ok := c.mem.peek(id); ok {
		return b, true
	}
	if c.disk == nil {
		return nil, false
	}
	b, err := c.disk.get(id, size, c.pool)
	if errors.Is(err, fs.ErrNotExist) {
		b, err = c.disk.getInFile(id, size, c.pool)
	}
	if err == nil {
		c.mem.add(id, b)
		return b, true
	}
	if errors.Is(err, errCorruptEntry) {
		c.corrupt.Add(1)
		c.log.Warn("disk cache entry corrupt; refetching", "chunk", id.Short(), "err", err)
	}
	return nil, false
}

// fetchInto fetches chunk id from a store that reads into the caller's
// memory: the codec byte into a header and the payload straight into a
// pooled buffer, where a raw chunk (model weights, process memory) stays,
// verified in place: no buffer per fetch and no copy (cold reads of a
// 400 MB file through the mount went from 399 to 668 MB/s on the benchmark
// VM). A compressed payload is decoded into a second pooled buffer.
func (c *Cache) fetchInto(ctx context.Context, gi store.GetIntoer, id digest.ID, size uint32) (*buf, error) {
	var hdr [1]byte
	b := c.pool.get(int(size))
	start := time.Now()
	n, err := gi.GetInto(ctx, store.H(store.Chunk, id), hdr[:], b.b[:size])
	readErr := err
	if errors.Is(err, store.ErrShortBuffer) {
		readErr = nil // the read brought bytes; a blob too long is judged below
	}
	if readErr = c.fetched(start, n, readErr); readErr != nil {
		b.release()
		return nil, fmt.Errorf("fetch chunk %s from %s: %w", id.Short(), c.st.Location(), readErr)
	}
	bad := func(b *buf, err error) (*buf, error) {
		b.release()
		c.fetchFailed(chunk.ErrCorrupt)
		c.corrupt.Add(1)
		return nil, fmt.Errorf("chunk from %s: %w", c.st.Location(), err)
	}
	switch {
	case err != nil: // no codec makes a blob longer than 1+size
		return bad(b, fmt.Errorf("chunk %s: %w: stored blob longer than %d bytes", id.Short(), chunk.ErrCorrupt, size+1))
	case n == 0:
		return bad(b, fmt.Errorf("chunk %s: %w: empty blob", id.Short(), chunk.ErrCorrupt))
	}
	payload := b.b[:n-1]
	if hdr[0] == chunk.CodecRaw {
		// The payload is already where the chunk belongs: nothing moves.
		data, err := chunk.DecodeParts(b.b[:0], hdr[0], payload, id)
		if err == nil && len(data) != int(size) {
			err = fmt.Errorf("chunk %s: %w: %d bytes, manifest says %d", id.Short(), chunk.ErrCorrupt, len(data), size)
		}
		if err != nil {
			return bad(b, err)
		}
		b.b = data
		return b, nil
	}
	out := c.pool.get(int(size))
	data, err := chunk.DecodeParts(out.b[:0], hdr[0], payload, id)
	b.release()
	if err == nil && len(data) != int(size) {
		err = fmt.Errorf("chunk %s: %w: %d bytes, manifest says %d", id.Short(), chunk.ErrCorrupt, len(data), size)
	}
	if err != nil {
		return bad(out, err)
	}
	if &data[0] != &out.b[:1][0] { // decoded elsewhere (cannot happen: it fits)
		out.release()
		return heapBuf(data), nil
	}
	out.b = data
	return out, nil
}

// acquire takes a slot for one store read; the returned func gives it back.
// While it is held the cache counts as busy (see busyFor).
func (c *Cache) acquire(ctx context.Context, p Priority) (func(), error) {
	var slots chan struct{}
	if p == Demand {
		// Demand takes a reserved slot or a shared one, whichever frees first.
		select {
		case c.demandSlots <- struct{}{}:
			slots = c.demandSlots
		case c.sharedSlots <- struct{}{}:
			slots = c.sharedSlots
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	} else {
		select {
		case c.prefetchSlots <- struct{}{}:
			slots = c.prefetchSlots
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c.fetching.Add(1)
	return func() {
		c.Active()
		c.fetching.Add(-1)
		<-slots
	}, nil
}

// DiskFile opens the verified disk-tier file holding chunk id, for serving
// it directly (FUSE passthrough). ok is false when the chunk is not on disk.
func (c *Cache) DiskFile(id digest.ID, size int64) (*os.File, bool) {
	if c.disk == nil {
		return nil, false
	}
	f, err := c.disk.open(id, size)
	if err != nil {
		if errors.Is(err, errCorruptEntry) {
			c.corrupt.Add(1)
		}
		return nil, false
	}
	return f, true
}

// Identity is what an open disk-tier file's stat says of its contents.
type Identity struct {
	stamp fileStamp
	mtime int64
	nlink uint64
}

// IdentityOf returns f's identity; ok is false if f cannot be stat'ed.
func IdentityOf(f *os.File) (Identity, bool) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return Identity{}, false
	}
	s, _ := stampFrom(&st, nil)
	return Identity{stamp: s, mtime: st.Mtim.Nano(), nlink: uint64(st.Nlink)}, true
}

// Unchanged reports whether the file whose identity was a still holds the
// same bytes by its identity now, b: the same inode, size and ctime (a
// write moves ctime), or unlinked since (the tier's eviction: ctime moves
// with the link count) with size and mtime as they were.
func (a Identity) Unchanged(b Identity) bool {
	if a.stamp == b.stamp {
		return true
	}
	return b.nlink == 0 && a.stamp.ino == b.stamp.ino && a.stamp.size == b.stamp.size && a.mtime == b.mtime
}

// WaitRechecked waits until the disk tier has re-hashed every file an
// earlier daemon's journal trusted (see recheck.go).
func (c *Cache) WaitRechecked(ctx context.Context) error {
	if c.disk == nil {
		return nil
	}
	select {
	case <-c.disk.rechecked:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// WouldHash reports whether DiskFile(id) would hash the file before
// handing it out (it is in the disk tier, not verified since this cache
// or its journal last hashed it): ~0.3 s a GiB. A file changed since it
// was verified is found only by DiskFile (and hashed then).
func (c *Cache) WouldHash(id digest.ID) bool {
	if c.disk == nil {
		return false
	}
	e, ok := c.disk.peek(id)
	return ok && (e.verified == (fileStamp{}) || e.recheck)
}

// MaxAssemble is the largest file Assemble copies: hashing it at its first
// passthrough open takes ~0.3 s from an NVMe disk.
const MaxAssemble = 1 << 30

// FileID names the assembled copy of a whole file made of chunks.
func FileID(chunks []chunk.Ref) digest.ID {
	b := []byte("gpuwarm-file\x00")
	for _, c := range chunks {
		b = append(b, c.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, c.Size)
	}
	return digest.Of(b)
}

// Assemble writes the whole file made of chunks into the disk tier as one
// entry (named FileID), so that FUSE passthrough can serve it. Every chunk
// is read verified. Files larger than MaxAssemble or a quarter of the tier
// are skipped: a passthrough open first hashes the whole file (once per
// daemon), which must not stall an open for long.
//
// With cached set the file is written through the page cache, which keeps
// it (an open then asks for any page the kernel let go): the kernel serves
// it from there in large folios (a FUSE file's own page cache holds single
// pages, which makes it copy at half the speed). Without, it is written
// with O_DIRECT and leaves the page cache alone. Either way it is trusted
// for passthrough as written (see verified.go).
//
// Assembly is background work: it first waits for a quiet moment, as the
// disk tier's queued writes do (waitQuiet), so that a cold pass which reads
// one file whole and goes on to others is not slowed by the copy.
func (c *Cache) Assemble(ctx context.Context, chunks []chunk.Ref, cached bool) error {
	size, ok := c.CanAssemble(chunks)
	if !ok {
		return nil
	}
	// Queued writes of the chunks wait meanwhile, and are skipped once the
	// file holds them: its bytes are written once.
	release := c.disk.holdWrites(chunks)
	defer release()
	c.disk.waitQuiet(time.Now())
	id := FileID(chunks)
	err := c.disk.addStream(id, size, cached, func(w io.Writer) error {
		for _, ch := range chunks {
			b, err := c.get(ctx, ch.ID, ch.Size, Prefetch)
			if err != nil {
				return err
			}
			_, err = w.Write(b.b)
			b.release()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// One copy per byte: the file replaces its chunks' own entries.
	if err := c.disk.replaceChunks(id, chunks); err != nil {
		c.log.Warn("cannot index the chunks of an assembled file; they stay cached twice", "file", id.Short(), "err", err)
	}
	if !cached {
		return nil
	}
	f, err := c.disk.open(id, size) // as its first passthrough open would
	if err != nil {
		if errors.Is(err, errCorruptEntry) {
			c.corrupt.Add(1)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil // evicted already, or no room: nothing assembled
		}
		return fmt.Errorf("assembled file %s: %w", id.Short(), err)
	}
	return f.Close()
}

// CanAssemble reports whether Assemble copies the file made of chunks, and
// the file's size: not without a disk tier, nor above MaxAssemble or a
// quarter of the tier, nor a small file's piece of a shared chunk (it is
// served from that chunk).
func (c *Cache) CanAssemble(chunks []chunk.Ref) (size int64, ok bool) {
	for _, ch := range chunks {
		if ch.Shared() {
			return 0, false
		}
		size += int64(ch.Size)
	}
	return size, c.disk != nil && size <= c.disk.limit/4 && size <= MaxAssemble
}

// Resident reports whether the kernel's page cache holds all of f's first
// size bytes (cachestat(2), Linux 6.5+; false where it is missing).
func Resident(f *os.File, size int64) bool {
	var st unix.Cachestat_t
	if err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{Off: 0, Len: uint64(size)}, &st, 0); err != nil {
		return false
	}
	return int64(st.Cache)*int64(os.Getpagesize()) >= size
}

// TierStats counts one tier's activity.
type TierStats struct {
	Hits      int64 `json:"hits"`
	Misses    int64 `json:"misses"`
	Bytes     int64 `json:"bytes"`
	Limit     int64 `json:"limit"`
	Entries   int64 `json:"entries"`
	Evictions int64 `json:"evictions"`
	// Queued is the bytes fetched but not yet written (disk tier only).
	Queued int64 `json:"queued"`
	// Hashed is the files passthrough opens hashed before handing them to
	// the kernel (disk tier only); files verified earlier in this boot
	// (see the journal in verified.go) are not hashed again.
	Hashed int64 `json:"hashed"`
	// Full counts writes the disk tier's filesystem refused for lack of
	// room (disk tier only); Limit then shows the room the tier keeps to.
	Full int64 `json:"full"`
	// Unchecked is the files an earlier daemon handed to the kernel that
	// this one has not re-hashed yet (served through it until then);
	// Rechecked those it has, and found good (disk tier only).
	Unchecked int64 `json:"unchecked"`
	Rechecked int64 `json:"rechecked"`
}

// Stats is a snapshot of the cache's counters.
type Stats struct {
	Memory      TierStats `json:"memory"`
	Disk        TierStats `json:"disk"`
	Store       string    `json:"store"`        // where chunks are fetched from
	Fetches     int64     `json:"fetches"`      // store reads
	FetchBytes  int64     `json:"fetch_bytes"`  // bytes they brought
	FetchErrors int64     `json:"fetch_errors"` // store reads that failed
	// RangedFetches is how many of Fetches read blocks of a chunk (a
	// random read), not the whole chunk.
	RangedFetches int64 `json:"ranged_fetches"`
	// FetchErrorKinds splits FetchErrors: not_found, corrupt, canceled
	// (the reader gave up: an interrupted read), store (anything else:
	// the network, the server).
	FetchErrorKinds map[string]int64 `json:"fetch_error_kinds"`
	FetchLatency    histo.Snapshot   `json:"fetch_latency"`
	Corrupt         int64            `json:"corrupt"` // chunks refused: their bytes did not hash to their ID
}

// fetchErrorKinds names the kinds of failed store reads.
var fetchErrorKinds = [...]string{"not_found", "corrupt", "canceled", "store"}

// fetchFailed counts a failed store read by its kind.
// fetched accounts for one store read begun at start that brought n bytes
// or failed with err, which it returns.
func (c *Cache) fetched(start time.Time, n int, err error) error {
	c.fetchLatency.Since(start)
	if err != nil {
		c.fetchFailed(err)
		return err
	}
	c.fetches.Add(1)
	c.fetchBytes.Add(int64(n))
	return nil
}

func (c *Cache) fetchFailed(err error) {
	c.fetchErrors.Add(1)
	k := 3
	switch {
	case errors.Is(err, store.ErrNotFound):
		k = 0
	case errors.Is(err, chunk.ErrCorrupt):
		k = 1
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		k = 2
	}
	c.fetchErrKinds[k].Add(1)
}

// Stats returns the current counters.
func (c *Cache) Stats() Stats {
	s := Stats{
		Memory:          c.mem.stats(),
		Store:           c.st.Location(),
		Fetches:         c.fetches.Load(),
		FetchBytes:      c.fetchBytes.Load(),
		FetchErrors:     c.fetchErrors.Load(),
		RangedFetches:   c.rangedFetches.Load(),
		FetchErrorKinds: map[string]int64{},
		FetchLatency:    c.fetchLatency.Snapshot(),
		Corrupt:         c.corrupt.Load(),
	}
	for i, k := range fetchErrorKinds {
		s.FetchErrorKinds[k] = c.fetchErrKinds[i].Load()
	}
	if c.disk != nil {
		s.Disk = c.disk.stats()
		s.Corrupt += c.disk.corruptFound.Load()
	}
	return s
}

// Residency says where a chunk is: memory, disk (either or both), or
// neither.
func (c *Cache) Residency(id digest.ID) (inMemory, onDisk bool) {
	return c.mem.has(id), c.disk != nil && (c.disk.has(id) || c.disk.inFileHas(id))
}

// WarmDisk makes chunk id present in the disk tier (the memory tier
// without one), fetching it from the store if need be, at priority p.
// Flush waits for the writes it queued.
func (c *Cache) WarmDisk(ctx context.Context, id digest.ID, size uint32, p Priority) error {
	if c.disk == nil {
		return c.Warm(ctx, id, size, p)
	}
	if c.disk.has(id) || c.disk.queued(id) || c.disk.inFileHas(id) {
		return nil
	}
	b, err := c.get(ctx, id, size, p)
	if err != nil {
		return err
	}
	if !c.disk.has(id) && !c.disk.queued(id) {
		c.queueWrite(id, b)
	}
	b.release()
	return nil
}

// Evict drops chunk id (or a whole-file copy, by its FileID) from both
// tiers; it reports whether it was held. A kernel reading the file by
// passthrough keeps the copy it has open until it closes it.
func (c *Cache) Evict(id digest.ID) bool {
	held := c.mem.remove(id)
	if c.disk != nil {
		if e, ok := c.disk.peek(id); ok {
			c.disk.drop(id, e)
			held = true
		}
	}
	return held
}

// DropMemory empties the memory tier (benchmarks, tests, memory pressure).
func (c *Cache) DropMemory() { c.mem.clear() }

func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		owner, _ := os.ReadFile(filepath.Join(dir, ".lock"))
		return nil, fmt.Errorf("cache directory %s is in use by another gpuwarm process (pid %s); give each mount its own --cache-dir", dir, string(owner))
	}
	f.Truncate(0)
	f.WriteAt([]byte(fmt.Sprint(os.Getpid())), 0)
	return f, nil
}
