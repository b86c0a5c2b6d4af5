package e2e

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRandomReadHandsTheKernelItsChunk: a read out of sequence that
// fetches a chunk whole (a file of at most 4 MiB, or a small file's piece
// of a shared chunk) has the rest of that chunk put into the file's page
// cache, once: the right bytes, and the file's other reads there never
// reach the daemon. A file read by ranges of blocks (over 4 MiB) gets
// nothing pushed. Over every transport: the push is a notification written
// while reads are in flight.
func TestRandomReadHandsTheKernelItsChunk(t *testing.T) {
	requireFUSE(t)
	transports(t, randomReadHandsTheKernelItsChunk)
}

func randomReadHandsTheKernelItsChunk(t *testing.T, flags []string) {
	tmp := t.TempDir()
	src, storeDir, mnt := filepath.Join(tmp, "src"), filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	rnd := rand.New(rand.NewPCG(7, 8))
	files := map[string]int{"lib/mod.so": 1<<20 + 300<<10, "py/a.py": 20 << 10, "py/b.py": 9 << 10, "py/c.py": 17 << 10, "big.bin": 6 << 20}
	want := map[string][]byte{}
	for rel, size := range files {
		b := make([]byte, size)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		want[rel] = b
		if err := os.MkdirAll(filepath.Join(src, filepath.Dir(rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, rel), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gw(t, "pack", src, "--tag", "t", "--store", storeDir)
	d := startMount(t, storeDir, mnt, filepath.Join(tmp, "cache"), flags...)
	defer d.stop(t)

	pread := func(rel string, off int64, n int) {
		t.Helper()
		f, err := os.Open(filepath.Join(mnt, "t", rel))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, want[rel][off:off+int64(n)]) {
			t.Fatalf("%s at %d: wrong bytes", rel, off)
		}
	}
	waitPushed := func(n int64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for d.stats(t).PageCachePushed < n && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := d.stats(t).PageCachePushed; got != n {
			t.Fatalf("pushed %d bytes into page caches, want %d", got, n)
		}
	}
	pread("big.bin", 3<<20+8192, 4096) // by blocks: nothing to push
	pread("py/a.py", 8192, 4096)       // a piece of a shared chunk
	waitPushed(20<<10 - 4096)
	pread("lib/mod.so", 512<<10, 4096) // the first of its two chunks
	waitPushed(20<<10 - 4096 + 1<<20 - 4096)

	pages := func(rel string) int64 { return fusePages(t, filepath.Join(mnt, "t", rel)) }
	if got := pages("py/a.py"); got != 5 {
		t.Errorf("py/a.py: %d pages cached, want all 5", got)
	}
	if got := pages("lib/mod.so"); got != 256 {
		t.Errorf("lib/mod.so: %d pages cached, want the 256 of its first chunk", got)
	}
	// Their other reads there are the kernel's, with the right bytes.
	before := d.stats(t)
	for i := 0; i < 64; i++ {
		pread("lib/mod.so", rnd.Int64N(1<<20-4096), 4096)
		pread("py/a.py", rnd.Int64N(20<<10-100), 100)
	}
	after := d.stats(t)
	if after.Memory.Hits != before.Memory.Hits || after.Fetches != before.Fetches {
		t.Errorf("reads of pushed pages reached the daemon: memory hits %d -> %d, fetches %d -> %d",
			before.Memory.Hits, after.Memory.Hits, before.Fetches, after.Fetches)
	}
	// The second chunk of lib/mod.so is pushed at its own first read only.
	pread("lib/mod.so", 1<<20+4096, 4096)
	waitPushed(20<<10 - 4096 + 1<<20 - 4096 + 300<<10 - 4096)
	if got := pages("lib/mod.so"); got != 256+75 {
		t.Errorf("lib/mod.so: %d pages cached, want all %d", got, 256+75)
	}
	checkTransport(t, d, flags)
}
