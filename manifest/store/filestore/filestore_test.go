package filestore

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/gpuwarm/gpuwarm/internal/directio"
	"github.com/gpuwarm/gpuwarm/internal/directio/directiotest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/storetest"
)

var ctx = context.Background()

func TestConformance(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, s)
}

// Objects large enough for O_DIRECT come back byte for byte whatever their
// length's alignment, on a filesystem that does O_DIRECT (the test's
// directory) and on one that refuses it (tmpfs), which falls back to
// writing through the page cache.
func TestDirectWritesRoundTrip(t *testing.T) {
	directiotest.Each(t, func(name, dir string, refused bool) {
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range []int{directMin - 1, directMin, directMin + 1, 4096 * 100, 1<<20 + 3, 3<<20 - 511} {
			data := make([]byte, n)
			if i%2 == 1 {
				// In an aligned buffer with room for the last block, as
				// pack builds its blobs: written in place; the bytes in
				// the room past the end must not reach the object.
				raw := make([]byte, directio.Round(n)+2*directio.Align)
				for j := range raw {
					raw[j] = 0xAB
				}
				data = directio.Aligned(raw, directio.Round(n))[:n]
			}
			rand.New(rand.NewSource(int64(n))).Read(data)
			id := digest.Of(data)
			h := store.H(store.Chunk, id)
			if err := s.Put(ctx, h, data); err != nil {
				t.Fatalf("%s: put %d bytes: %v", name, n, err)
			}
			got, err := s.Get(ctx, h, 0, -1)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%s: %d bytes: got %d bytes back, %v", name, n, len(got), err)
			}
			if part, err := s.Get(ctx, h, int64(n-10), 10); err != nil || !bytes.Equal(part, data[n-10:]) {
				t.Fatalf("%s: %d bytes: ranged read of the tail: %v", name, n, err)
			}
		}
		left, _ := os.ReadDir(filepath.Join(dir, "tmp"))
		if len(left) != 0 {
			t.Fatalf("%s: %d temporary files left behind", name, len(left))
		}
		if s.noDirect.Load() != refused {
			t.Fatalf("%s: O_DIRECT refused: %v", name, s.noDirect.Load())
		}
	})
}

// A batch's objects are invisible until Commit; a writer that died before
// committing leaves temporary files, which the next Open removes.
func TestBatchVisibleOnlyAfterCommit(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("batch"), 50_000)
	h := store.H(store.Chunk, digest.Of(data))
	b := s.Batch()
	if err := b.Put(ctx, h, data); err != nil {
		t.Fatal(err)
	}
	if has, _ := store.Has(ctx, s, h); has {
		t.Fatal("an uncommitted object is visible")
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if has, _ := store.Has(ctx, s, h); !has {
		t.Fatal("a committed object is missing")
	}
	// A dead writer's leftovers (no process has PID 999999999) go; a live
	// writer's (ours) stay.
	dead := filepath.Join(dir, "tmp", "999999999.1")
	live := filepath.Join(dir, "tmp", strconv.Itoa(os.Getpid())+".999")
	os.WriteFile(dead, data, 0o644)
	os.WriteFile(live, data, 0o644)
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatal("a dead writer's temporary file survived Open")
	}
	if _, err := os.Stat(live); err != nil {
		t.Fatal("a live writer's temporary file was removed")
	}
}
