package cache

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"sync"
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// indexedChunk stores a raw chunk of random bytes and its block index, as a
// pack does, and returns its bytes and reference.
func indexedChunk(t *testing.T, st store.Store, size int, seed int64) ([]byte, chunk.Ref) {
	t.Helper()
	b := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(b)
	ctx := context.Background()
	blob := chunk.Encode(b)
	if !chunk.Indexed(len(b), len(blob)) {
		t.Fatal("random bytes were not stored raw")
	}
	ix := chunk.BlockIndex(b)
	ref := chunk.Ref{ID: digest.Of(b), Size: uint32(size), Blocks: digest.Of(ix)}
	for _, o := range []struct {
		id   digest.ID
		blob []byte
	}{{ref.ID, blob}, {ref.Blocks, chunk.Encode(ix)}} {
		if err := st.Put(ctx, store.H(store.Chunk, o.id), o.blob); err != nil {
			t.Fatal(err)
		}
	}
	return b, ref
}

func viewRange(t *testing.T, c *Cache, ref chunk.Ref, off int64, n int) []byte {
	t.Helper()
	v, release, err := c.ViewRange(context.Background(), ref, off, n)
	if err != nil {
		t.Fatalf("ViewRange(%d, %d): %v", off, n, err)
	}
	defer release()
	return append([]byte(nil), v...)
}

func TestRangedReadsFetchTheirBlocks(t *testing.T) {
	fs, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &countingStore{Store: fs}
	data, ref := indexedChunk(t, fs, 1<<20+1000, 1)
	c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 64 << 20, DiskBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ixLen := int64(chunk.Blocks(ref.Size) * digest.Size)

	// A 4 KiB read inside one block: the index, then that block.
	off := int64(5*chunk.BlockSize + 100)
	if got := viewRange(t, c, ref, off, 4096); !bytes.Equal(got, data[off:off+4096]) {
		t.Fatal("ranged read returned the wrong bytes")
	}
	s := c.Stats()
	if s.Fetches != 2 || s.RangedFetches != 1 || s.FetchBytes > ixLen+1+chunk.BlockSize {
		t.Fatalf("one 4 KiB read: %d fetches (%d ranged), %d bytes; want the index (%d bytes) and one block", s.Fetches, s.RangedFetches, s.FetchBytes, ixLen)
	}
	// The same block again: from the memory tier.
	viewRange(t, c, ref, off+4096, 4096)
	if s2 := c.Stats(); s2.Fetches != 2 {
		t.Fatalf("a read of a cached block fetched again (%d fetches)", s2.Fetches)
	}
	// Across two blocks, and the chunk's short last block.
	off = int64(9*chunk.BlockSize - 2000)
	if got := viewRange(t, c, ref, off, 4096); !bytes.Equal(got, data[off:off+4096]) {
		t.Fatal("a read across two blocks returned the wrong bytes")
	}
	off = int64(len(data) - 500)
	if got := viewRange(t, c, ref, off, 4096); !bytes.Equal(got, data[off:]) {
		t.Fatal("a read of the last block returned the wrong bytes")
	}
	if s3 := c.Stats(); s3.RangedFetches != 4 {
		t.Fatalf("%d ranged fetches, want 4", s3.RangedFetches)
	}
	// A wide read fetches the whole chunk, after which reads use it.
	viewRange(t, c, ref, 0, 256<<10)
	before := c.Stats()
	viewRange(t, c, ref, int64(40*chunk.BlockSize), 4096)
	if after := c.Stats(); after.Fetches != before.Fetches || !c.Contains(ref.ID) {
		t.Fatal("a read after the whole chunk was fetched went to the store")
	}

	// Blocks are kept on disk: a new cache over the same directory reads
	// them without the store.
	c.Flush()
	c.Close()
	c2, err := Open(st, Config{Dir: c.cfg.Dir, MemBytes: 64 << 20, DiskBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Evict(ref.ID) // the whole chunk, so that the read goes by blocks
	gets := st.gets.Load()
	off = int64(5*chunk.BlockSize + 100)
	if got := viewRange(t, c2, ref, off, 4096); !bytes.Equal(got, data[off:off+4096]) {
		t.Fatal("a block from the disk tier has the wrong bytes")
	}
	if st.gets.Load() != gets {
		t.Fatal("a block in the disk tier was fetched from the store")
	}
}

func TestRangedReadsNeverServeUnverifiedBytes(t *testing.T) {
	ctx := context.Background()
	fs, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data, ref := indexedChunk(t, fs, 1<<20, 2)
	c, err := Open(fs, Config{MemBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// The chunk stored compressed under its ID (as another gpuwarm might
	// have): its bytes do not sit at their offsets, the blocks do not
	// match their index, and the read goes to the whole chunk.
	data2 := bytes.Repeat([]byte("compressible "), 1<<20/13)
	ix2 := chunk.BlockIndex(data2)
	ref2 := chunk.Ref{ID: digest.Of(data2), Size: uint32(len(data2)), Blocks: digest.Of(ix2)}
	fs.Put(ctx, store.H(store.Chunk, ref2.ID), chunk.Encode(data2))
	fs.Put(ctx, store.H(store.Chunk, ref2.Blocks), chunk.Encode(ix2))
	if got := viewRange(t, c, ref2, 70000, 4096); !bytes.Equal(got, data2[70000:70000+4096]) {
		t.Fatal("a compressed chunk read by range returned the wrong bytes")
	}
	if !c.Contains(ref2.ID) {
		t.Fatal("the whole chunk was not fetched after its blocks did not match")
	}

	// A damaged block in the store: refused by its index, then by the
	// whole chunk's digest: an error, never the bytes.
	blob, err := store.ReadAll(ctx, fs, store.H(store.Chunk, ref.ID))
	if err != nil {
		t.Fatal(err)
	}
	blob[1+3*chunk.BlockSize+7] ^= 1
	if err := fs.Delete(ctx, store.H(store.Chunk, ref.ID)); err != nil {
		t.Fatal(err)
	}
	if err := fs.Put(ctx, store.H(store.Chunk, ref.ID), blob); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ViewRange(ctx, ref, 3*chunk.BlockSize, 4096); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("a damaged block: want ErrCorrupt, got %v", err)
	}
	// Other blocks are still served, each checked.
	if got := viewRange(t, c, ref, 0, 4096); !bytes.Equal(got, data[:4096]) {
		t.Fatal("an intact block returned the wrong bytes")
	}
	// An index that does not fit the chunk is refused too.
	bad := chunk.Ref{ID: ref.ID, Size: ref.Size, Blocks: ref2.Blocks}
	if _, _, err := c.ViewRange(ctx, bad, 5*chunk.BlockSize, 4096); err == nil {
		t.Fatal("a read through a wrong block index succeeded")
	}
}

// TestFlushWhileWritesAreQueued: Flush may be called while reads go on
// queueing disk writes (a weights warm-up on a busy mount); it once used a
// WaitGroup, which panics when added to while it is waited on.
func TestFlushWhileWritesAreQueued(t *testing.T) {
	fs, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var refs []chunk.Ref
	for i := 0; i < 400; i++ {
		_, ref := indexedChunk(t, fs, 20000+i, int64(i))
		refs = append(refs, ref)
	}
	c, err := Open(fs, Config{Dir: t.TempDir(), MemBytes: 1 << 20, DiskBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	done := make(chan struct{})
	var readers sync.WaitGroup
	for g := 0; g < 4; g++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := g; i < len(refs); i += 4 {
				if _, err := c.Get(ctx, refs[i].ID, refs[i].Size); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	go func() { readers.Wait(); close(done) }()
	var flushers sync.WaitGroup
	for g := 0; g < 4; g++ {
		flushers.Add(1)
		go func() {
			defer flushers.Done()
			for {
				select {
				case <-done:
					return
				default:
					c.Flush()
				}
			}
		}()
	}
	flushers.Wait()
	c.Flush()
	if s := c.Stats(); s.Disk.Entries < int64(len(refs)) {
		t.Fatalf("%d of %d chunks written after the last Flush", s.Disk.Entries, len(refs))
	}
}

// TestDenseRandomReadsFetchTheChunk: once maxRangedPerChunk blocks of a
// chunk were fetched by range, its next read fetches it whole (one request
// instead of many), after which reads are served from it.
func TestDenseRandomReadsFetchTheChunk(t *testing.T) {
	fs, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data, ref := indexedChunk(t, fs, 1<<20, 4)
	c, err := Open(fs, Config{MemBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for k := 0; k < maxRangedPerChunk; k++ {
		off := int64(k*3*chunk.BlockSize + 10)
		if got := viewRange(t, c, ref, off, 4096); !bytes.Equal(got, data[off:off+4096]) {
			t.Fatalf("read %d: wrong bytes", k)
		}
	}
	if s := c.Stats(); s.RangedFetches != maxRangedPerChunk || c.Contains(ref.ID) {
		t.Fatalf("%d reads of distinct blocks: %d ranged fetches, whole chunk cached: %v", maxRangedPerChunk, s.RangedFetches, c.Contains(ref.ID))
	}
	off := int64(50 * chunk.BlockSize)
	if got := viewRange(t, c, ref, off, 4096); !bytes.Equal(got, data[off:off+4096]) {
		t.Fatal("the read after them: wrong bytes")
	}
	if s := c.Stats(); s.RangedFetches != maxRangedPerChunk || !c.Contains(ref.ID) {
		t.Fatalf("the read after %d ranged fetches of a chunk did not fetch it whole (%d ranged)", maxRangedPerChunk, s.RangedFetches)
	}
}
