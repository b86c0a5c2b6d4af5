package cache

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

// Ranged reads. A chunk stored raw carries a block index (chunk.BlockIndex):
// the SHA-256 of each of its 16 KiB blocks, stored as a chunk of its own. A
// random read of such a chunk that neither tier holds fetches the index
// (once; it is cached like any chunk) and then only the blocks the read
// touches, each checked against the index. Blocks are cached under their
// own digest, as chunks are, so they are shared by every chunk and image
// holding the same bytes, and nothing in either tier is ever named by
// anything but the SHA-256 of what it holds.
//
// A read that sees a whole chunk cached or being fetched uses it; a
// sequential pass fetches chunks whole (the caller decides: see
// ViewRange), and so does a read of a chunk of which maxRangedPerChunk
// blocks were fetched already. A block that does not match its index (a chunk stored
// compressed by another gpuwarm under the same ID, or a damaged store)
// sends the read to the whole chunk, which is checked against its ID.

// maxRangedBlocks bounds the blocks one ranged read fetches: a read wider
// than this (128 KiB) costs little more as a whole-chunk fetch, which the
// next read of the chunk then finds cached.
const maxRangedBlocks = 8

// maxRangedPerChunk is how many blocks of one chunk are fetched by range
// before its next read fetches it whole: a quarter of a 1 MiB chunk's
// blocks. Reads that dense go on to touch most of the chunk, and one
// request for it costs less than dozens for its blocks; sparser reads keep
// fetching blocks, whose bytes then stay under 4x what they ask for.
const maxRangedPerChunk = 16

// rangedCounts counts, per chunk, the blocks fetched from the store by
// range (bounded: forgotten all at once when full).
type rangedCounts struct {
	mu sync.Mutex
	n  map[digest.ID]int
}

func (r *rangedCounts) add(id digest.ID) {
	r.mu.Lock()
	if r.n == nil || len(r.n) >= 1<<16 {
		r.n = make(map[digest.ID]int)
	}
	r.n[id]++
	r.mu.Unlock()
}

func (r *rangedCounts) get(id digest.ID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[id]
}

// ViewRange is View for a reader that is not reading sequentially: if the
// chunk has a block index and neither tier holds it, only the blocks that
// [off, off+n) touches are fetched. It otherwise behaves as View.
func (c *Cache) ViewRange(ctx context.Context, ref chunk.Ref, off int64, n int) ([]byte, func(), error) {
	if ref.Blocks.IsZero() || n <= 0 || off < 0 || off >= int64(ref.Size) || c.Contains(ref.ID) || c.flying(ref.ID) ||
		c.ranged.get(ref.ID) >= maxRangedPerChunk {
		return c.View(ctx, ref.ID, ref.Size, off, n)
	}
	end := min(off+int64(n), int64(ref.Size))
	k0, k1 := int(off/chunk.BlockSize), int((end-1)/chunk.BlockSize)
	if k1-k0+1 > maxRangedBlocks {
		return c.View(ctx, ref.ID, ref.Size, off, n)
	}
	c.Active()
	v, release, err := c.viewBlocks(ctx, ref, off, end, k0, k1)
	if err == nil {
		return v, release, nil
	}
	if ctx.Err() != nil {
		return nil, nil, err
	}
	c.log.Warn("ranged read failed; fetching the whole chunk", "chunk", ref.ID.Short(), "err", err)
	return c.View(ctx, ref.ID, ref.Size, off, n)
}

func (c *Cache) flying(id digest.ID) bool {
	c.flightMu.Lock()
	defer c.flightMu.Unlock()
	_, ok := c.flights[id]
	return ok
}

func (c *Cache) viewBlocks(ctx context.Context, ref chunk.Ref, off, end int64, k0, k1 int) ([]byte, func(), error) {
	ix, err := c.get(ctx, ref.Blocks, uint32(chunk.Blocks(ref.Size)*digest.Size), Demand)
	if err != nil {
		return nil, nil, fmt.Errorf("block index %s: %w", ref.Blocks.Short(), err)
	}
	defer ix.release()
	ids := make([]digest.ID, k1-k0+1)
	for k := k0; k <= k1; k++ {
		if ids[k-k0], err = chunk.BlockID(ix.b, ref.Size, k); err != nil {
			return nil, nil, fmt.Errorf("block index %s: %w", ref.Blocks.Short(), err)
		}
	}
	bufs := make([]*buf, len(ids))
	releaseAll := func() {
		for _, b := range bufs {
			if b != nil {
				b.release()
			}
		}
	}
	for i := range ids {
		k := k0 + i
		lo, hi := chunk.BlockSpan(ref.Size, k)
		bufs[i], err = c.join(ctx, ids[i], func(ctx context.Context) (*buf, error) {
			return c.loadBlock(ctx, ref.ID, ids[i], lo, hi)
		})
		if err == nil && len(bufs[i].b) != int(hi-lo) {
			err = fmt.Errorf("%w: block %s is %d bytes, its chunk's index says %d", chunk.ErrCorrupt, ids[i].Short(), len(bufs[i].b), hi-lo)
		}
		if err != nil {
			releaseAll()
			return nil, nil, err
		}
	}
	base := int64(k0) * chunk.BlockSize
	if len(bufs) == 1 {
		b := bufs[0]
		var once sync.Once
		v := b.b[off-base : end-base : end-base]
		return v, func() { once.Do(b.release) }, nil
	}
	// Across blocks: one copy (reads this wide are rare when random).
	out := make([]byte, 0, end-off)
	for i, b := range bufs {
		lo := max(off-base-int64(i)*chunk.BlockSize, 0)
		hi := min(end-base-int64(i)*chunk.BlockSize, int64(len(b.b)))
		out = append(out, b.b[lo:hi]...)
	}
	releaseAll()
	return out, func() {}, nil
}

// loadBlock reads one block (bytes [lo, hi) of chunk id, named blk) from
// the disk tier or, by range, from the store, and puts it in the memory
// tier.
func (c *Cache) loadBlock(ctx context.Context, id, blk digest.ID, lo, hi int64) (*buf, error) {
	size := uint32(hi - lo)
	if b, ok := c.fromTiers(blk, size); ok {
		return b, nil
	}
	release, err := c.acquire(ctx, Demand)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	// The blob is raw: a codec byte, then the chunk.
	data, err := c.st.Get(ctx, store.H(store.Chunk, id), 1+lo, hi-lo)
	release()
	if err := c.fetched(start, len(data), err); err != nil {
		return nil, fmt.Errorf("fetch block of chunk %s from %s: %w", id.Short(), c.st.Location(), err)
	}
	c.rangedFetches.Add(1)
	c.ranged.add(id)
	if len(data) != int(size) || digest.Of(data) != blk {
		c.fetchFailed(chunk.ErrCorrupt)
		return nil, fmt.Errorf("%w: bytes %d-%d of chunk %s from %s do not match its block index", chunk.ErrCorrupt, lo, hi, id.Short(), c.st.Location())
	}
	b := heapBuf(data)
	c.keep(blk, b)
	return b, nil
}
