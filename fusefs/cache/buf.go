package cache

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Chunk plaintexts live in reference-counted buffers from a pool of
// huge-page-backed arenas, recycled once the memory tier has dropped them
// and no reader holds them.
//
// Why: the memory tier keeps up to its limit of chunk data, so a worker
// that reads a fresh image keeps touching memory it has never touched
// before. On the benchmark VM a first touch of a 4 KiB page costs 17 µs
// (240 MB/s) and a 2 MiB huge page far less: a warm-disk read of a 384 MB
// file went from 224-273 to 398-816 MB/s with arenas madvised for huge
// pages. A Go heap allocation cannot ask for huge pages, and a recycled
// buffer costs no fault at all.
//
// Rules: a buf is handed out with one reference; ref adds one, release
// drops one, and the last release returns a pooled buffer to its size
// class. Nobody may touch b after their release. The memory tier holds one
// reference while the chunk is in it; a reader holds one while it copies
// out (Cache.ReadAt), so no bytes ever escape the cache by reference.

// buf is one chunk's plaintext.
type buf struct {
	b     []byte
	refs  atomic.Int32
	class int8 // -1: a Go heap buffer, left to the garbage collector
	pool  *bufPool
	// diskQ is where the buffer's disk-tier write stands: none queued,
	// queued while the memory tier holds the buffer too, or queued after
	// the memory tier let it go (its memory then counts against the
	// queue's bound; see diskTier.outsideBytes).
	diskQ atomic.Int32
}

const (
	notQueued int32 = iota
	queuedInMemory
	queuedOutside
)

func (b *buf) ref() { b.refs.Add(1) }

func (b *buf) release() {
	switch n := b.refs.Add(-1); {
	case n == 0 && b.class >= 0:
		b.pool.put(b)
	case n < 0:
		panic("cache: chunk buffer released more often than referenced")
	}
}

// size is the memory the buffer occupies (its class size if pooled).
func (b *buf) size() int64 { return int64(cap(b.b)) }

// heapBuf wraps bytes the garbage collector owns.
func heapBuf(b []byte) *buf {
	x := &buf{b: b, class: -1}
	x.refs.Store(1)
	return x
}

// Size classes: powers of two from 64 KiB and the halfway points between
// them, up to the largest chunk (64 MiB), so a buffer wastes at most a
// third of itself.
var classSizes = func() []int {
	var s []int
	for n := 64 << 10; n <= 64<<20; n *= 2 {
		s = append(s, n)
		if n < 64<<20 {
			s = append(s, n+n/2)
		}
	}
	return s
}()

const arenaSize = 64 << 20

// bufPool hands out buffers from arenas it never unmaps; limit bounds the
// bytes mapped, past which buffers come from the Go heap.
type bufPool struct {
	mu     sync.Mutex
	free   [][]*buf // by class
	arena  []byte   // unused tail of the newest arena
	mapped int64
	limit  int64
	noMmap bool
	carved int // buffers ever cut from arenas (tests: all come back)
}

func newBufPool(limit int64) *bufPool {
	return &bufPool{free: make([][]*buf, len(classSizes)), limit: limit}
}

func classOf(n int) int {
	for i, s := range classSizes {
		if n <= s {
			return i
		}
	}
	return -1
}

// get returns a buffer of length n with one reference.
func (p *bufPool) get(n int) *buf {
	c := -1
	if p != nil && n >= classSizes[0]/2 {
		c = classOf(n)
	}
	if c < 0 {
		return heapBuf(make([]byte, n))
	}
	p.mu.Lock()
	var b *buf
	if l := len(p.free[c]); l > 0 {
		b = p.free[c][l-1]
		p.free[c] = p.free[c][:l-1]
	} else if mem := p.carve(classSizes[c]); mem != nil {
		b = &buf{b: mem, class: int8(c), pool: p}
		p.carved++
	}
	p.mu.Unlock()
	if b == nil {
		return heapBuf(make([]byte, n))
	}
	b.b = b.b[:n]
	b.refs.Store(1)
	return b
}

// carve cuts size bytes from the current arena, mapping a new one (madvised
// for transparent huge pages) when it is used up. Nil past the limit.
func (p *bufPool) carve(size int) []byte {
	if len(p.arena) < size {
		if p.noMmap || p.mapped+arenaSize > p.limit {
			return nil
		}
		// The rest of the old arena is too small for this class: it is
		// left unused (at most one class size per arena).
		m, err := unix.Mmap(-1, 0, arenaSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			p.noMmap = true
			return nil
		}
		unix.Madvise(m, unix.MADV_HUGEPAGE)
		p.arena = m
		p.mapped += arenaSize
	}
	b := p.arena[:size:size]
	p.arena = p.arena[size:]
	return b
}

func (p *bufPool) put(b *buf) {
	p.mu.Lock()
	p.free[b.class] = append(p.free[b.class], b)
	p.mu.Unlock()
}

// idle reports how many pooled buffers exist and how many are free.
func (p *bufPool) idle() (carved, free int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.free {
		free += len(l)
	}
	return p.carved, free
}
