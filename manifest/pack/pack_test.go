package pack

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// Chunks stored raw get a block index, stored as a chunk; compressed ones
// and one-block ones do not. A second pack into the same store, which finds
// every chunk there, indexes the same chunks (it tells raw ones by their
// stored length) and so makes the same image.
func TestPackIndexesRawChunks(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	random := make([]byte, 3<<20+5000)
	rand.New(rand.NewSource(1)).Read(random)
	text := bytes.Repeat([]byte("a line of text that compresses\n"), 100000)
	for name, b := range map[string][]byte{"weights.bin": random, "notes.txt": text, "small": random[:9000]} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	res, err := Dir(ctx, st, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := manifest.Load(ctx, st, res.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ix.Manifest.Entries {
		for k, c := range e.Chunks {
			raw := e.Path == "weights.bin" && int(c.Size) > chunk.BlockSize
			if raw != !c.Blocks.IsZero() {
				t.Fatalf("%s chunk %d (%d bytes): block index %v, want one: %v", e.Path, k, c.Size, c.Blocks.Short(), raw)
			}
			if !raw {
				continue
			}
			blob, err := store.ReadAll(ctx, st, store.H(store.Chunk, c.Blocks))
			if err != nil {
				t.Fatalf("%s chunk %d: block index not stored: %v", e.Path, k, err)
			}
			got, err := chunk.Decode(blob, c.Blocks)
			if err != nil {
				t.Fatal(err)
			}
			off := int64(k) * int64(e.Chunks[0].Size) // every chunk but the last is full
			want := chunk.BlockIndex(random[off : off+int64(c.Size)])
			if !bytes.Equal(got, want) {
				t.Fatalf("%s chunk %d: the stored block index is not the chunk's", e.Path, k)
			}
		}
	}
	if ids := ix.Manifest.ChunkIDs(); !contains(ids, ix.Manifest.Entries[3].Chunks[0].Blocks) {
		t.Fatal("ChunkIDs leaves out block indexes (gc would delete them)")
	}
	again, err := Dir(ctx, st, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if again.ID != res.ID || again.NewChunks != 0 {
		t.Fatalf("re-pack into the same store: image %s (was %s), %d new chunks", again.ID.Short(), res.ID.Short(), again.NewChunks)
	}
}

func contains(ids []digest.ID, id digest.ID) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// Small files are packed together, per directory, in shared chunks of at
// most DefaultSharedChunk bytes; each file's piece holds its bytes; a file
// alone in its directory keeps a chunk of its own; and a directory that did
// not change packs into the same chunks in another image (deduplicated).
func TestPackSharesChunksAmongSmallFiles(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewSource(2))
	files := map[string][]byte{"d2/x": []byte("x"), "d2/y": []byte("yy"), "d3/alone": []byte("by itself"), "d1/empty": nil}
	for i := range 40 {
		b := make([]byte, 5000+rng.Intn(5000))
		rng.Read(b)
		files[fmt.Sprintf("d1/f%02d", i)] = b
	}
	big := make([]byte, 100<<10)
	rng.Read(big)
	files["d1/big"] = big
	write := func(files map[string][]byte) string {
		dir := t.TempDir()
		for name, b := range files {
			p := filepath.Join(dir, name)
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	res, err := Dir(ctx, st, write(files), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := manifest.Load(ctx, st, res.ID)
	if err != nil {
		t.Fatal(err)
	}
	shared := map[string]map[digest.ID]bool{}
	for _, e := range ix.Manifest.Entries {
		if e.Type != manifest.Regular || e.Size == 0 {
			continue
		}
		c := e.Chunks[0]
		small := e.Size <= DefaultSmallFile && e.Path != "d3/alone"
		if c.Shared() != small || len(e.Chunks) != 1 && small {
			t.Fatalf("%s (%d bytes): %d chunks, first %+v; want shared: %v", e.Path, e.Size, len(e.Chunks), c, small)
		}
		blob, err := store.ReadAll(ctx, st, store.H(store.Chunk, c.ID))
		if err != nil {
			t.Fatal(err)
		}
		whole, err := chunk.Decode(blob, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(whole) != int(c.Len()) || c.Len() > DefaultSharedChunk {
			t.Fatalf("%s: chunk of %d bytes, reference says %d (limit %d)", e.Path, len(whole), c.Len(), DefaultSharedChunk)
		}
		if got := whole[c.Off : c.Off+c.Size]; small && !bytes.Equal(got, files[e.Path]) {
			t.Fatalf("%s: its piece of the shared chunk is not its bytes", e.Path)
		}
		if small {
			dir := filepath.Dir(e.Path)
			if shared[dir] == nil {
				shared[dir] = map[digest.ID]bool{}
			}
			shared[dir][c.ID] = true
		}
	}
	// 40 files of 5-10 KB: two chunks of up to 256 KiB; d2's two files: one.
	if len(shared["d1"]) != 2 || len(shared["d2"]) != 1 {
		t.Fatalf("shared chunks per directory: d1 %d, d2 %d; want 2 and 1", len(shared["d1"]), len(shared["d2"]))
	}
	files["d2/y"] = []byte("changed")
	res2, err := Dir(ctx, st, write(files), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res2.NewChunks != 1 {
		t.Fatalf("a change to one small file stored %d new chunks, want 1 (its directory's)", res2.NewChunks)
	}
	// Unpacked, every small file is a chunk of its own.
	res3, err := Dir(ctx, st, write(files), Options{SmallFile: -1})
	if err != nil {
		t.Fatal(err)
	}
	if s := res3.Stats; s.UniqueChunks != 44 {
		t.Fatalf("SmallFile -1: %d distinct chunks, want 44, one per file", s.UniqueChunks)
	}
}
