package fusefs

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/fusefs/transport/uring"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sync/errgroup"
)

// handle is an open file. A passthrough handle is served by the kernel
// from the node's backing file (the chunk's verified disk-tier file).
type handle struct {
	n           *node
	passthrough bool
}

var (
	_ = (fs.FilePassthroughFder)((*handle)(nil))
	_ = (fs.FileReleaser)((*handle)(nil))
	_ = (fs.FileFlusher)((*handle)(nil))
)

// Flush says the filesystem has nothing to flush: the kernel then stops
// sending FLUSH, which it does synchronously on every close(), for good.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return syscall.ENOSYS }

func (h *handle) PassthroughFd() (int, bool) {
	if !h.passthrough {
		return 0, false
	}
	// n.backing stays open while any passthrough handle is.
	return int(h.n.backing.Fd()), true
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.n.openMu.Lock()
	defer h.n.openMu.Unlock()
	if h.passthrough {
		h.n.passthroughOpens--
		if h.n.passthroughOpens == 0 {
			h.n.backing.Close()
			h.n.backing = nil
		}
	} else {
		h.n.cachedOpens--
	}
	return 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	defer n.fsys.timeOp(ctx, opOpen, time.Now())
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	e := n.entry()
	if e.Type != manifest.Regular {
		return nil, 0, syscall.EINVAL
	}
	// The kernel refuses (EIO) to mix passthrough and cached opens of one
	// inode, and all passthrough opens must share one backing file. So while
	// any open is live, new opens take its mode; the backing file, verified
	// when the first passthrough open took it, stays open until the last
	// passthrough handle is released, even if the cache evicts the chunk.
	n.fsys.cache.Active()
	h := &handle{n: n}
	onQueue := uring.OnQueueThread()
	if !onQueue {
		n.openMu.Lock()
	} else if !n.openMu.TryLock() {
		// Another open of the file may be hashing its copy.
		return nil, 0, uring.WouldWait
	}
	defer n.openMu.Unlock()
	switch {
	case n.passthroughOpens > 0:
		// The backing file was verified when the first of them took it:
		// a write to it since (same file, as the kernel requires; its
		// identity moved) fails the new open rather than serve it. The
		// first open after the last of them closes hashes it again.
		if id, ok := cache.IdentityOf(n.backing); !ok || !n.backingID.Unchanged(id) {
			n.fsys.log.Error("a disk-tier file served by passthrough was written since it was verified; refusing new opens until the open ones close", "image", n.img.ID.Short(), "path", e.Path, "file", n.backing.Name())
			return nil, 0, syscall.EIO
		}
		h.passthrough = true
	case n.cachedOpens > 0 || n.fsys.opt.NoPassthrough || n.rootfs:
	case onQueue && n.wouldHash(e):
		// Opening the disk-tier copy means hashing it first.
		return nil, 0, uring.WouldWait
	case len(e.Chunks) > 1 && n.fsys.opt.AssembleFiles:
		h.passthrough = n.openAssembled(e)
	case n.inPageCache.Load():
		// Served from the kernel's page cache (see node.served).
		n.fsys.pageCacheOpens.Add(1)
	case len(e.Chunks) == 1 && !e.Chunks[0].Shared() && !n.fsys.cache.InMemory(e.Chunks[0].ID):
		// A chunk in the memory tier is served from there: passthrough
		// would read the disk-tier file, from the disk once the kernel
		// has dropped its pages.
		if f, ok := n.fsys.cache.DiskFile(e.Chunks[0].ID, int64(e.Chunks[0].Size)); ok {
			n.backing = f
			h.passthrough = true
		}
	}
	if h.passthrough && n.passthroughOpens == 0 {
		n.backingID, _ = cache.IdentityOf(n.backing)
	}
	if h.passthrough {
		// The kernel does not keep (or use) the FUSE file's own pages
		// across a passthrough open.
		n.inPageCache.Store(false)
		n.served.Store(0)
		n.passthroughOpens++
		n.fsys.passthroughOpens.Add(1)
	} else {
		n.cachedOpens++
		n.fsys.cachedOpens.Add(1)
	}
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *node) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer n.fsys.timeOp(ctx, opRead, time.Now())
	e := n.entry()
	if off >= e.Size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	size := min(int64(len(dest)), e.Size-off)
	if off == 0 && n.readEnd.Load() == 0 {
		// Before this read waits: the files after it may be fetched
		// meanwhile.
		n.fsys.noteFirstRead(n.img, n.idx)
	}
	first, last := n.img.ChunkSpan(n.idx, off, size)
	// A read that does not follow the last one fetches only the blocks it
	// touches of chunks that have a block index (cache.ViewRange), in
	// files larger than rangedMinFile.
	seq := n.sequential(off, size)
	ranged := !seq && e.Size > rangedMinFile
	if !every(e.Chunks[first:last], n.fsys.cache.InMemory) {
		if uring.OnQueueThread() {
			// Not from memory: a goroutine asks again (the ring's CPU
			// has other requests to answer meanwhile).
			return nil, uring.WouldWait
		}
		// A wait on the disk or the store ends early only for a caller
		// being killed (see untilDying).
		var done func()
		ctx, done = untilDying(ctx)
		defer done()
	}
	// The reply is the chunks' own bytes in the memory tier (views), not a
	// copy in go-fuse's reply buffer (dest stays untouched): the kernel
	// copies them into its page cache, and the views are let go once it has.
	res := &viewResult{vecs: make([][]byte, last-first), rel: make([]func(), last-first)}
	view := func(j int) error {
		c := e.Chunks[j]
		n.fsys.observe(n.img.ID, n.idx, j, c.ID, c.Len())
		cOff := n.img.ChunkOffset(n.idx, j)
		// The overlap of [cOff, cOff+size) and [off, off+size).
		lo, hi := max(cOff, off), min(cOff+int64(c.Size), off+size)
		var b []byte
		var release func()
		var err error
		switch {
		case c.Shared():
			// A small file's piece of a chunk it shares with others.
			b, release, err = n.fsys.cache.View(ctx, c.ID, c.Whole, int64(c.Off)+lo-cOff, int(hi-lo))
		case !ranged:
			b, release, err = n.fsys.cache.View(ctx, c.ID, c.Size, lo-cOff, int(hi-lo))
		default:
			b, release, err = n.fsys.cache.ViewRange(ctx, c, lo-cOff, int(hi-lo))
		}
		if err != nil {
			return err
		}
		res.vecs[j-first], res.rel[j-first] = b, release
		if len(b) != int(hi-lo) {
			return fmt.Errorf("chunk %s: %d bytes where the manifest promises %d", c.ID.Short(), len(b), hi-lo)
		}
		return nil
	}
	var err error
	if last-first == 1 {
		err = view(first)
	} else {
		var g errgroup.Group
		g.SetLimit(8)
		for j := first; j < last; j++ {
			g.Go(func() error { return view(j) })
		}
		err = g.Wait()
	}
	if err != nil {
		res.Done()
		e2 := errno(err)
		if e2 != syscall.EINTR {
			n.fsys.log.Error("read failed", "image", n.img.ID.Short(), "path", e.Path, "offset", off, "err", err)
		}
		return nil, e2
	}
	n.noteServed(int64(res.Size()), e.Size)
	if !seq && !ranged {
		n.pushRest(e, first, last, off, size)
	}
	if seq {
		for k := 0; k < n.fsys.opt.Readahead && last+k < len(e.Chunks); k++ {
			c := e.Chunks[last+k]
			n.fsys.queueReadahead(c.ID, c.Len())
		}
	}
	return res, 0
}

// seqWindow is how far from the last read's end a read may start and still
// count as sequential: the kernel's readahead has several requests in
// flight, which arrive a little out of order.
const seqWindow = 4 << 20

// rangedMinFile is the largest file whose chunks are always fetched whole:
// a program reading a small file at random reads much of it (on the 2-CPU
// VM, 100 random reads of each of 200 files of 0.25-1.3 MB ran at 0.6x the
// rate block by block), and a few requests fetch all of it.
const rangedMinFile = 4 << 20

// seqMinRead is the smallest read that counts as sequential anywhere in the
// window: the kernel's readahead asks for 128 KiB and more, a program's
// random reads for what they need (4 KiB). A small read counts only where
// the last one ended.
const seqMinRead = 64 << 10

// sequential records a read of [off, off+size) and reports whether it
// continues a sequential pass (a file's first read counts): only those are
// fetched ahead of and fetched whole, so that random reads fetch no more
// than they touch.
func (n *node) sequential(off, size int64) bool {
	prev := n.readEnd.Swap(off + size)
	return off == 0 || off == prev || size >= seqMinRead && off >= prev-seqWindow && off <= prev+seqWindow
}

// wouldHash reports whether this open of e (the node's first live one)
// may have to hash a disk-tier copy not yet verified by this daemon, as
// Open takes it: ~0.3 s a GiB, too long to hold up, on a ring queue's
// thread, the other requests made on its CPU.
func (n *node) wouldHash(e *manifest.Entry) bool {
	f := n.fsys
	switch {
	case len(e.Chunks) > 1 && f.opt.AssembleFiles:
		return f.cache.WouldHash(cache.FileID(e.Chunks))
	case len(e.Chunks) == 1 && !e.Chunks[0].Shared():
		return !n.inPageCache.Load() && !f.cache.InMemory(e.Chunks[0].ID) && f.cache.WouldHash(e.Chunks[0].ID)
	}
	return false
}

// openAssembled decides how a multi-chunk file is opened while no other
// open of it is live, and reports whether by passthrough (n.backing set).
// The file's whole copy in the disk tier (assembled once all of its chunks
// were cached) is served by passthrough when the kernel's page cache holds
// it: the kernel copies it from there in large folios, twice as fast as
// from the FUSE file's own page cache (single pages). Otherwise the copy
// would be read from the disk, so the file is served through the daemon if
// the kernel's page cache of the FUSE file has it all (see node.served) or
// the memory tier does (a 384 MB file read at 2.8-4.5 GB/s from there after
// drop_caches, at the disk's speed by passthrough), and by passthrough
// from the disk if neither does.
func (n *node) openAssembled(e *manifest.Entry) bool {
	f, ok := n.fsys.cache.DiskFile(cache.FileID(e.Chunks), e.Size)
	if !ok {
		if n.inPageCache.Load() {
			// Not assembled now: the kernel serves it, and the copy would
			// compete with the program for the CPU and the disk. It is
			// once the daemon is asked for the file whole again.
			n.fsys.pageCacheOpens.Add(1)
		} else {
			n.fsys.maybeAssemble(e.Chunks, nil)
		}
		return false
	}
	switch {
	case cache.Resident(f, e.Size):
		n.fsys.residentOpens.Add(1)
	case n.inPageCache.Load():
		n.fsys.pageCacheOpens.Add(1)
		f.Close()
		return false
	case every(e.Chunks, n.fsys.cache.InMemory):
		f.Close()
		return false
	}
	n.backing = f
	return true
}

// noteServed counts k bytes handed to the kernel's page cache of a file of
// size bytes (see node.served).
func (n *node) noteServed(k, size int64) {
	if n.inPageCache.Load() {
		// Asked again for bytes it was given: the kernel has dropped pages.
		n.inPageCache.Store(false)
		n.served.Store(0)
		n.forgetPushed()
		n.fsys.pageCacheLost.Add(1)
	}
	if n.served.Add(k) >= size && !n.inPageCache.Swap(true) {
		// Every chunk has just been read: the moment to assemble the file
		// for passthrough opens by a later daemon or once these pages go.
		if e := n.entry(); len(e.Chunks) > 1 && n.fsys.opt.AssembleFiles && !n.fsys.opt.NoPassthrough {
			n.fsys.maybeAssemble(e.Chunks, n.dropPageCache)
		}
	}
}

// dropPageCache has the kernel drop the FUSE file's own pages once the
// file's assembled copy is written (and, having been read back, sits in the
// page cache): the next open goes by passthrough from that copy, and the
// kernel would otherwise drop these pages inside that open, in the
// program's time (26 ms for a 384 MB file on the benchmark VM, a quarter
// of a hot read of the benchmark's files). It also keeps the file from
// being cached twice. Not while the file is open.
//
// openMu is not held across the notification: in it the kernel waits for
// pages that reads in flight (readahead outlives a close) have locked, and
// with --fuse-uring such a read may be queued for a ring whose thread is
// itself waiting for openMu in an OPEN made on its CPU: a deadlock. An open
// slipping in between finds its pages dropped, which only costs reads.
func (n *node) dropPageCache() {
	n.openMu.Lock()
	open := n.cachedOpens > 0 || n.passthroughOpens > 0
	n.openMu.Unlock()
	if open {
		return
	}
	if errno := n.NotifyContent(0, 0); errno != 0 {
		n.fsys.log.Debug("cannot drop a file's pages", "path", n.entry().Path, "err", errno)
		return
	}
	n.inPageCache.Store(false)
	n.served.Store(0)
	n.forgetPushed()
	n.fsys.assemblyDropped.Add(1)
}

// pushRest hands the kernel's page cache the rest of each chunk (or a
// small file's piece of a shared chunk) that a read out of sequence just
// fetched whole, once per chunk: the file's other reads there are then
// served by the kernel without a round trip to the daemon (a program
// reading a library or an index at random offsets, or faulting in the
// pages of a mapping of it). The bytes are verified and in the memory tier
// already; the push is one copy, made by a background goroutine after the
// reply (Read only queues it: it may run on a ring's thread). The pages the
// read itself asked for are left out: the kernel holds them locked until
// the reply, and would make the push wait for it.
func (n *node) pushRest(e *manifest.Entry, first, last int, off, size int64) {
	if n.fsys.mounted.Load() == nil {
		return // no kernel to hand them to (and no loop taking the jobs)
	}
	page := int64(os.Getpagesize())
	skipLo, skipHi := off&^(page-1), min((off+size+page-1)&^(page-1), e.Size)
	for j := first; j < last; j++ {
		if !n.markPushed(j) {
			continue
		}
		select {
		case n.fsys.pushQ <- pushJob{n: n, j: j, skipLo: skipLo, skipHi: skipHi}:
		default: // the queue is full: only a hint
			n.unmarkPushed(j)
		}
	}
}

// pushJob is chunk j of a file to hand to the kernel, less the file's
// bytes [skipLo, skipHi).
type pushJob struct {
	n              *node
	j              int
	skipLo, skipHi int64
}

// run pushes the chunk if the memory tier still holds it (nothing is
// fetched for a push).
func (job pushJob) run() {
	n, j := job.n, job.j
	c := n.entry().Chunks[j]
	if !n.fsys.cache.InMemory(c.ID) {
		n.unmarkPushed(j)
		return
	}
	// The file's piece of the chunk: all of it, or a small file's share.
	b, release, err := n.fsys.cache.View(context.Background(), c.ID, c.Len(), int64(c.Off), int(c.Size))
	if err != nil {
		n.unmarkPushed(j)
		return
	}
	defer release()
	off := n.img.ChunkOffset(n.idx, j)
	end := off + int64(len(b))
	if lo := min(max(job.skipLo, off), end); lo > off {
		n.push(off, b[:lo-off])
	}
	if hi := max(min(job.skipHi, end), off); hi < end {
		n.push(hi, b[hi-off:])
	}
}

// markPushed records that chunk j's bytes go to the kernel, and reports
// whether they had not already.
func (n *node) markPushed(j int) bool {
	n.pushMu.Lock()
	defer n.pushMu.Unlock()
	if _, ok := n.pushed[j]; ok {
		return false
	}
	if n.pushed == nil {
		n.pushed = map[int]struct{}{}
	}
	n.pushed[j] = struct{}{}
	return true
}

func (n *node) unmarkPushed(j int) {
	n.pushMu.Lock()
	delete(n.pushed, j)
	n.pushMu.Unlock()
}

// forgetPushed is called when the kernel's pages of the file are gone:
// the chunks may be pushed again.
func (n *node) forgetPushed() {
	n.pushMu.Lock()
	n.pushed = nil
	n.pushMu.Unlock()
}

// viewResult is a read reply made of views of cached chunks. go-fuse writes
// its Slices to the kernel with one writev and then calls Done, which lets
// the views go (also on every error path).
type viewResult struct {
	vecs [][]byte
	rel  []func()
}

var _ = (fuse.ReadResult)((*viewResult)(nil))

// Slices makes go-fuse write the views as they are (its withSlice).
func (r *viewResult) Slices() ([][]byte, fuse.Status) { return r.vecs, fuse.OK }

// Bytes copies the views into buf, for paths that want one buffer.
func (r *viewResult) Bytes(buf []byte) ([]byte, fuse.Status) {
	out := buf[:0]
	for _, v := range r.vecs {
		out = append(out, v...)
	}
	return out, fuse.OK
}

func (r *viewResult) Size() int {
	n := 0
	for _, v := range r.vecs {
		n += len(v)
	}
	return n
}

func (r *viewResult) Done() {
	for i, f := range r.rel {
		if f != nil {
			f()
			r.rel[i] = nil
		}
	}
}
