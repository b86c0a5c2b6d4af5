package pack

import (
	"bytes"
	"context"
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
