package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/internal/directio/directiotest"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// countingStore counts Gets and can delay them.
type countingStore struct {
	store.Store
	gets  atomic.Int64
	delay time.Duration
}

func (c *countingStore) Get(ctx context.Context, h store.Handle, off, n int64) ([]byte, error) {
	c.gets.Add(1)
	if c.delay > 0 {
		time.Sleep(c.delay)
	}
	return c.Store.Get(ctx, h, off, n)
}

// GetInto counts too: the cache reads chunks of known size through it.
func (c *countingStore) GetInto(ctx context.Context, h store.Handle, bufs ...[]byte) (int, error) {
	c.gets.Add(1)
	if c.delay > 0 {
		time.Sleep(c.delay)
	}
	return store.GetInto(ctx, c.Store, h, bufs...)
}

func fixture(t *testing.T, n, size int) (*countingStore, [][]byte, []digest.ID) {
	t.Helper()
	fs, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewSource(int64(n)))
	var datas [][]byte
	var ids []digest.ID
	for i := 0; i < n; i++ {
		b := make([]byte, size)
		rnd.Read(b[:size/2]) // half random, half zeros: compressible
		id := digest.Of(b)
		if err := fs.Put(context.Background(), store.H(store.Chunk, id), chunk.Encode(b)); err != nil {
			t.Fatal(err)
		}
		datas = append(datas, b)
		ids = append(ids, id)
	}
	return &countingStore{Store: fs}, datas, ids
}

// getAll reads every chunk through c and checks its bytes.
func getAll(t *testing.T, c *Cache, ids []digest.ID, datas [][]byte, when string) {
	t.Helper()
	for i, id := range ids {
		b, err := c.Get(context.Background(), id, uint32(len(datas[i])))
		if err != nil || !bytes.Equal(b, datas[i]) {
			t.Fatalf("%s: chunk %d: %v", when, i, err)
		}
	}
}

func TestTiers(t *testing.T) {
	st, datas, ids := fixture(t, 4, 100_000)
	dir := t.TempDir()
	c, err := Open(st, Config{Dir: dir, MemBytes: 1 << 20, DiskBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for round := 0; round < 2; round++ {
		getAll(t, c, ids, datas, fmt.Sprintf("round %d", round))
	}
	if got := st.gets.Load(); got != 4 {
		t.Fatalf("store read %d times, want 4", got)
	}
	c.Flush()
	s := c.Stats()
	if s.Memory.Hits != 4 || s.Disk.Entries != 4 || s.Fetches != 4 {
		t.Fatalf("stats %+v", s)
	}
	// Memory dropped: served from disk, not the store.
	c.DropMemory()
	for i, id := range ids {
		if b, err := c.Get(ctx, id, 0); err != nil || !bytes.Equal(b, datas[i]) {
			t.Fatal(err)
		}
	}
	if got := st.gets.Load(); got != 4 || c.Stats().Disk.Hits != 4 {
		t.Fatalf("after memory drop: store gets %d, disk hits %d", got, c.Stats().Disk.Hits)
	}
	c.Close()

	// A new process reuses the disk tier.
	c2, err := Open(st, Config{Dir: dir, MemBytes: 1 << 20, DiskBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Get(ctx, ids[0], 0); err != nil || st.gets.Load() != 4 {
		t.Fatalf("reopened cache went to the store: %v, gets %d", err, st.gets.Load())
	}
	// A second user of the same directory is refused.
	if _, err := Open(st, Config{Dir: dir, DiskBytes: 1 << 20}); err == nil {
		t.Fatal("second cache on one directory accepted")
	}
}

func TestSingleflight(t *testing.T) {
	st, datas, ids := fixture(t, 1, 50_000)
	st.delay = 50 * time.Millisecond
	c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 1 << 20, DiskBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := c.Get(context.Background(), ids[0], 0)
			if err != nil || !bytes.Equal(b, datas[0]) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if got := st.gets.Load(); got != 1 {
		t.Fatalf("32 concurrent misses made %d store reads, want 1", got)
	}
}

func corruptDiskFiles(t *testing.T, dir string, f func(path string)) int {
	n := 0
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && info.Name() != ".lock" && info.Name() != journalName && filepath.Base(filepath.Dir(p)) != "tmp" {
			f(p)
			n++
		}
		return nil
	})
	return n
}

func TestCorruptDiskEntryRefetched(t *testing.T) {
	for _, mode := range []string{"flip", "truncate"} {
		t.Run(mode, func(t *testing.T) {
			st, datas, ids := fixture(t, 3, 64_000)
			dir := t.TempDir()
			c, err := Open(st, Config{Dir: dir, MemBytes: 1 << 20, DiskBytes: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx := context.Background()
			for _, id := range ids {
				c.Get(ctx, id, 0)
			}
			c.Flush()
			n := corruptDiskFiles(t, dir, func(p string) {
				b, _ := os.ReadFile(p)
				if mode == "flip" {
					b[len(b)/2] ^= 0x40
				} else {
					b = b[:len(b)/3]
				}
				os.WriteFile(p, b, 0o600)
			})
			if n != 3 {
				t.Fatalf("found %d disk entries", n)
			}
			c.DropMemory()
			for i, id := range ids {
				b, err := c.Get(ctx, id, uint32(len(datas[i])))
				if err != nil || !bytes.Equal(b, datas[i]) {
					t.Fatalf("chunk %d after corruption: %v", i, err)
				}
			}
			if s := c.Stats(); s.Corrupt != 3 || st.gets.Load() != 6 {
				t.Fatalf("corrupt=%d gets=%d, want 3 and 6", s.Corrupt, st.gets.Load())
			}
			// And the disk tier healed: a third pass reads from disk.
			c.Flush()
			c.DropMemory()
			for _, id := range ids {
				c.Get(ctx, id, 0)
			}
			if st.gets.Load() != 6 {
				t.Fatalf("healed entries not reused: gets=%d", st.gets.Load())
			}
		})
	}
}

func TestCorruptStoreChunk(t *testing.T) {
	st, _, ids := fixture(t, 2, 10_000)
	h := store.H(store.Chunk, ids[0])
	blob, _ := st.Store.Get(context.Background(), h, 0, -1)
	blob[len(blob)-1] ^= 1
	st.Delete(context.Background(), h)
	st.Put(context.Background(), h, blob)
	c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 1 << 20, DiskBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Get(context.Background(), ids[0], 0); !errors.Is(err, chunk.ErrCorrupt) {
		t.Fatalf("want ErrCorrupt, got %v", err)
	}
	if c.Contains(ids[0]) {
		t.Fatal("corrupt chunk entered the cache")
	}
	if _, err := c.Get(context.Background(), ids[1], 0); err != nil {
		t.Fatal(err)
	}
}

func TestLimitsUnderLoad(t *testing.T) {
	st, datas, ids := fixture(t, 40, 30_000)
	dir := t.TempDir()
	const memLimit, diskLimit = 100_000, 200_000
	c, err := Open(st, Config{Dir: dir, MemBytes: memLimit, DiskBytes: diskLimit, Fetches: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var violations atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			s := c.Stats()
			if s.Memory.Bytes > memLimit || s.Disk.Bytes > diskLimit {
				violations.Add(1)
			}
		}
	}()
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(w)))
			for i := 0; i < 200; i++ {
				k := rnd.Intn(len(ids))
				b, err := c.Get(context.Background(), ids[k], 0)
				if err != nil || !bytes.Equal(b, datas[k]) {
					t.Errorf("worker %d: chunk %d: %v", w, k, err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	if violations.Load() > 0 {
		t.Fatalf("limits exceeded %d times", violations.Load())
	}
	c.Flush()
	var onDisk int64
	corruptDiskFiles(t, dir, func(p string) {
		st, _ := os.Stat(p)
		onDisk += st.Size()
	})
	if onDisk > diskLimit {
		t.Fatalf("%d bytes on disk, limit %d", onDisk, diskLimit)
	}
	if s := c.Stats(); s.Memory.Evictions == 0 || s.Disk.Evictions == 0 {
		t.Fatalf("no evictions with tiny limits: %+v", s)
	}
}

// slowStore blocks every Get until released, to test fetch slots.
type gateStore struct {
	store.Store
	inflight, max atomic.Int64
	gate          chan struct{}
}

func (g *gateStore) Get(ctx context.Context, h store.Handle, off, n int64) ([]byte, error) {
	cur := g.inflight.Add(1)
	for {
		m := g.max.Load()
		if cur <= m || g.max.CompareAndSwap(m, cur) {
			break
		}
	}
	<-g.gate
	g.inflight.Add(-1)
	return g.Store.Get(ctx, h, off, n)
}

func TestDemandNotStarvedByPrefetch(t *testing.T) {
	st, _, ids := fixture(t, 20, 1000)
	g := &gateStore{Store: st.Store, gate: make(chan struct{})}
	c, err := Open(g, Config{MemBytes: 1 << 20, Fetches: 4})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Prefetch floods: it may hold at most half of the slots.
	for _, id := range ids[:10] {
		go c.Fetch(ctx, id, 0, Prefetch)
	}
	time.Sleep(50 * time.Millisecond)
	if n := g.inflight.Load(); n != 2 {
		t.Fatalf("%d prefetches in flight, want 2 (half the slots)", n)
	}
	done := make(chan error)
	go func() { _, err := c.Get(ctx, ids[15], 0); done <- err }()
	time.Sleep(50 * time.Millisecond)
	if n := g.inflight.Load(); n != 3 {
		t.Fatalf("demand read did not get a reserved slot: %d in flight", n)
	}
	close(g.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

}

// A passthrough open verifies the disk file once; an unchanged file is not
// hashed again, and a file written since (its ctime moved) is checked again
// and dropped when it no longer matches.
func TestDiskFileVerifiedOnceUntilChanged(t *testing.T) {
	st, datas, ids := fixture(t, 1, 200_000)
	dir := t.TempDir()
	c, err := Open(st, Config{Dir: dir, MemBytes: 1 << 20, DiskBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Get(context.Background(), ids[0], 0); err != nil {
		t.Fatal(err)
	}
	c.Flush()
	for i := 0; i < 2; i++ {
		f, ok := c.DiskFile(ids[0], int64(len(datas[0])))
		if !ok {
			t.Fatalf("open %d: not on disk", i)
		}
		b, _ := io.ReadAll(f)
		f.Close()
		if !bytes.Equal(b, datas[0]) {
			t.Fatalf("open %d: wrong bytes", i)
		}
	}
	time.Sleep(20 * time.Millisecond)
	corruptDiskFiles(t, dir, func(p string) {
		f, _ := os.OpenFile(p, os.O_WRONLY, 0)
		f.WriteAt([]byte{0xff, 0xee}, 100)
		f.Close()
	})
	if f, ok := c.DiskFile(ids[0], int64(len(datas[0]))); ok {
		f.Close()
		t.Fatal("a disk file written after its verification was served")
	}
	if c.Stats().Corrupt == 0 {
		t.Fatal("corruption not counted")
	}
}

// openFilled opens a cache on dir and brings every chunk of ids in, on
// disk too.
func openFilled(t *testing.T, st store.Store, dir string, ids []digest.ID, mem, disk int64) *Cache {
	t.Helper()
	c, err := Open(st, Config{Dir: dir, MemBytes: mem, DiskBytes: disk})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := c.Get(context.Background(), id, 0); err != nil {
			t.Fatal(err)
		}
	}
	c.Flush()
	return c
}

// A file the cache wrote, or hashed back, is trusted for passthrough while
// it runs. A later daemon of the same boot trusts none of them until it has
// hashed them again itself (in the background, an open's file first): a
// block changed beneath the filesystem without moving the file's ctime is
// caught then. A new boot, or a journal that is not one, leaves them to be
// hashed as they are opened.
func TestVerificationJournal(t *testing.T) {
	st, datas, ids := fixture(t, 3, 200_000)
	dir := t.TempDir()
	boot := "boot-a"
	defer func(old func() string) { bootID = old }(bootID)
	bootID = func() string { return boot }
	gate := make(chan struct{})
	defer func(old func()) { recheckGate = old }(recheckGate)
	recheckGate = func() { <-gate }
	open := func() *Cache {
		t.Helper()
		c, err := Open(st, Config{Dir: dir, MemBytes: 4 << 20, DiskBytes: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	rechecked := func(c *Cache) { t.Helper(); waitRechecked(t, c) }
	// pass opens chunk i by passthrough and says whether it was handed out
	// and how many files this cache has hashed so far.
	pass := func(c *Cache, i int) (bool, int64) {
		t.Helper()
		f, ok := c.DiskFile(ids[i], int64(len(datas[i])))
		if ok {
			b, _ := io.ReadAll(f)
			f.Close()
			if !bytes.Equal(b, datas[i]) {
				t.Fatalf("chunk %d: wrong bytes", i)
			}
		}
		return ok, c.Stats().Disk.Hashed
	}
	c := openFilled(t, st, dir, ids, 4<<20, 4<<20)
	// Files the cache wrote itself (from bytes verified against their
	// SHA-256) are not hashed back.
	if ok, h := pass(c, 0); !ok || h != 0 {
		t.Fatalf("first open of a file the cache wrote: served %v, hashed %d, want 0", ok, h)
	}
	for i := 1; i < len(ids); i++ {
		pass(c, i)
	}
	c.Close()

	c = open() // a restarted daemon, same boot
	if s := c.Stats().Disk; s.Unchecked != int64(len(ids)) {
		t.Fatalf("after a restart: %d files wait to be re-hashed, want %d", s.Unchecked, len(ids))
	}
	if !c.WouldHash(ids[0]) {
		t.Fatal("WouldHash: an open of a journaled file not yet re-hashed would not hash it")
	}
	if ok, h := pass(c, 0); !ok || h != 1 {
		t.Fatalf("after a restart, an open of a journaled file before the background pass: served %v, hashed %d, want 1", ok, h)
	}
	close(gate)
	rechecked(c)
	for i := range ids {
		if ok, h := pass(c, i); !ok || h != 1 {
			t.Fatalf("chunk %d once re-hashed: served %v, %d hashed in opens, want 1", i, ok, h)
		}
	}
	if s := c.Stats().Disk; s.Rechecked != int64(len(ids)-1) || s.Unchecked != 0 {
		t.Fatalf("rechecked %d, unchecked %d; want %d, 0", s.Rechecked, s.Unchecked, len(ids)-1)
	}
	c.Close()

	// A block changed beneath the filesystem: the bytes change, the
	// identity the journal holds does not (forged here by journaling the
	// file's new identity). The next daemon's re-hash finds it.
	corruptDiskFiles(t, dir, func(p string) {
		if strings.HasPrefix(filepath.Base(p), ids[2].String()) {
			f, _ := os.OpenFile(p, os.O_WRONLY, 0)
			f.WriteAt([]byte{0xff, 0xee}, 100)
			f.Close()
			recs := parseJournal(must(os.ReadFile(filepath.Join(dir, journalName))), boot)
			for k := range recs {
				if recs[k].id == ids[2] {
					recs[k].stamp, _ = statStamp(p)
				}
			}
			j := &journal{dir: dir, boot: boot, log: slog.New(slog.DiscardHandler)}
			j.mu.Lock()
			j.rewriteLocked(recs)
			j.mu.Unlock()
			j.close()
		}
	})
	c = open()
	rechecked(c)
	if ok, _ := pass(c, 2); ok {
		t.Fatal("a disk file changed beneath the filesystem was served by passthrough after a restart")
	}
	if c.Stats().Corrupt == 0 {
		t.Fatal("the changed file was not counted as corrupt")
	}
	c.Close()

	// Written while no daemon ran: its ctime moved, so it is hashed, and
	// dropped for not matching.
	if n := corruptDiskFiles(t, dir, func(p string) {
		if strings.HasPrefix(filepath.Base(p), ids[1].String()) {
			f, _ := os.OpenFile(p, os.O_WRONLY, 0)
			f.WriteAt([]byte{0xff, 0xee}, 100)
			f.Close()
		}
	}); n == 0 {
		t.Fatal("no disk files")
	}
	c = open()
	rechecked(c)
	if ok, _ := pass(c, 1); ok {
		t.Fatal("a disk file written after its verification was served")
	}
	if c.Stats().Corrupt == 0 {
		t.Fatal("corruption not counted")
	}
	if ok, h := pass(c, 0); !ok || h != 0 {
		t.Fatalf("the other verified file: served %v, hashed %d, want 0", ok, h)
	}
	c.Close()

	boot = "boot-b" // a reboot: nothing carried over
	c = open()
	if ok, h := pass(c, 0); !ok || h != 1 {
		t.Fatalf("after a reboot: served %v, hashed %d, want 1", ok, h)
	}
	c.Close()

	// A journal that is not one (or torn) is ignored.
	for _, junk := range []string{"junk\n", journalMagic + " " + boot + "\n" + ids[0].String() + " 00", ""} {
		if err := os.WriteFile(filepath.Join(dir, journalName), []byte(junk), 0o600); err != nil {
			t.Fatal(err)
		}
		c = open()
		if ok, h := pass(c, 0); !ok || h != 1 {
			t.Fatalf("journal %q: served %v, hashed %d, want 1", junk, ok, h)
		}
		c.Close()
	}
	if recs := parseJournal(must(os.ReadFile(filepath.Join(dir, journalName))), boot); len(recs) != 1 || recs[0].id != ids[0] {
		t.Fatalf("journal after the last run: %+v", recs)
	}
}

// A journal that grows (files verified again and again, as after every
// write to them) is compacted to the live verifications, which a restarted
// cache still re-hashes ahead of demand.
func TestVerificationJournalCompacts(t *testing.T) {
	st, datas, ids := fixture(t, 3, 50_000)
	dir := t.TempDir()
	defer func(old func() string, n int) { bootID, journalMinCompact = old, n }(bootID, journalMinCompact)
	bootID, journalMinCompact = func() string { return "b" }, 2
	c := openFilled(t, st, dir, ids, 4<<20, 4<<20)
	var path string
	corruptDiskFiles(t, dir, func(p string) {
		if strings.HasPrefix(filepath.Base(p), ids[0].String()) {
			path = p
		}
	})
	maxLines := 0
	for i := 0; i < 20; i++ {
		os.Chmod(path, fs.FileMode(0o600+i%2)) // moves ctime: verified again
		f, ok := c.DiskFile(ids[0], int64(len(datas[0])))
		if !ok {
			t.Fatalf("round %d: not served", i)
		}
		f.Close()
		b, _ := os.ReadFile(filepath.Join(dir, journalName))
		maxLines = max(maxLines, bytes.Count(b, []byte("\n")))
	}
	if h := c.Stats().Disk.Hashed; h != 20 {
		t.Fatalf("hashed %d times, want 20", h)
	}
	if maxLines > 1+2*len(ids)+1 {
		t.Fatalf("journal grew to %d lines for %d entries", maxLines, len(ids))
	}
	c.Close()
	c, err := Open(st, Config{Dir: dir, MemBytes: 4 << 20, DiskBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitRechecked(ctx); err != nil || c.Stats().Disk.Rechecked == 0 {
		t.Fatalf("after compaction and a restart: %v, %d files re-hashed ahead of demand", err, c.Stats().Disk.Rechecked)
	}
	if f, ok := c.DiskFile(ids[0], int64(len(datas[0]))); !ok || c.Stats().Disk.Hashed != 0 {
		t.Fatalf("after compaction and a restart: served %v, hashed %d, want 0", ok, c.Stats().Disk.Hashed)
	} else {
		f.Close()
	}
}

// A journal torn mid-line (a crash during an append) is rewritten at
// start, so the next append does not land on the torn fragment.
func TestJournalTornTail(t *testing.T) {
	defer func(old func() string) { bootID = old }(bootID)
	bootID = func() string { return "b" }
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "tmp"), 0o700)
	a := verifiedRec{id: digest.Of([]byte("a")), sum: 1, stamp: fileStamp{ino: 1, size: 2, ctime: 3}}
	b := verifiedRec{id: digest.Of([]byte("b")), sum: 4, stamp: fileStamp{ino: 5, size: 6, ctime: 7}}
	torn := journalMagic + " b\n" + a.line() + b.line()[:20]
	if err := os.WriteFile(filepath.Join(dir, journalName), []byte(torn), 0o600); err != nil {
		t.Fatal(err)
	}
	j, kept := openJournal(dir, slog.Default(), func(verifiedRec) bool { return true })
	if len(kept) != 1 || kept[0] != a {
		t.Fatalf("kept %+v, want the one whole record", kept)
	}
	j.add(b, 2)
	j.close()
	if got := parseJournal(must(os.ReadFile(filepath.Join(dir, journalName))), "b"); len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("journal after an append: %+v", got)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// FuzzJournal: any bytes parse without panicking, and what parses
// formats back into lines that parse to the same records.
func FuzzJournal(f *testing.F) {
	id := digest.Of([]byte("x"))
	f.Add([]byte(journalMagic + " b\n" + id.String() + " 00000000000000ff 12 34 56\n"))
	f.Add([]byte(journalMagic + " b\n" + id.String() + " 00000000000000ff 12 -1 56\nbad\n"))
	f.Add([]byte("junk"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs := parseJournal(b, "b")
		var out bytes.Buffer
		out.WriteString(journalMagic + " b\n")
		for _, r := range recs {
			out.WriteString(r.line())
		}
		again := parseJournal(out.Bytes(), "b")
		if len(again) != len(recs) {
			t.Fatalf("%d records, %d after a round trip", len(recs), len(again))
		}
		for i := range recs {
			if recs[i] != again[i] {
				t.Fatalf("record %d: %+v, after a round trip %+v", i, recs[i], again[i])
			}
		}
	})
}

// Opening a disk tier removes debris from its shard directories and
// nothing else: a --cache-dir that holds other files (the restores'
// replay records, or a directory given by mistake) loses none of them.
func TestDiskScanTouchesOnlyShards(t *testing.T) {
	st, datas, ids := fixture(t, 2, 100_000)
	dir := t.TempDir()
	openFilled(t, st, dir, ids, 1<<20, 4<<20).Close()
	keep := []string{"replays/" + ids[0].String() + ".json", "notes.txt", "zz/data", "0/x", "abc/y", "tmp/draft.txt"}
	for _, k := range keep {
		p := filepath.Join(dir, k)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("mine"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shard := ids[1].String()[:2]
	debris := []string{filepath.Join(dir, "tmp", "17"), filepath.Join(dir, shard, "leftover"), filepath.Join(dir, shard, ids[0].String()+".0000000000000000")}
	if ids[0].String()[:2] == shard {
		debris = debris[:2] // ids[0] belongs in this shard: not debris
	}
	for _, p := range debris {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, err := Open(st, Config{Dir: dir, MemBytes: 1 << 20, DiskBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, k := range keep {
		if b, err := os.ReadFile(filepath.Join(dir, k)); err != nil || string(b) != "mine" {
			t.Fatalf("%s: %q, %v: a file outside the shard directories was touched", k, b, err)
		}
	}
	for _, p := range debris {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("debris %s left in a shard directory (%v)", p, err)
		}
	}
	if n := c.Stats().Disk.Entries; n != int64(len(ids)) {
		t.Fatalf("%d disk entries after reopening, want %d", n, len(ids))
	}
	waitRechecked(t, c)
	for i, id := range ids {
		if f, ok := c.DiskFile(id, int64(len(datas[i]))); !ok {
			t.Fatalf("chunk %d lost", i)
		} else {
			f.Close()
		}
	}
}

// Readahead's Warm brings a chunk from the disk tier into memory (a reader
// that follows must not wait for the disk); Fetch, for prefetch profiles,
// leaves a chunk already on disk where it is.
func TestWarmPromotesFromDisk(t *testing.T) {
	st, datas, ids := fixture(t, 2, 300_000)
	c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 8 << 20, DiskBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for _, id := range ids {
		if _, err := c.Get(ctx, id, 0); err != nil {
			t.Fatal(err)
		}
	}
	c.Flush()
	c.DropMemory()
	if err := c.Fetch(ctx, ids[0], uint32(len(datas[0])), Prefetch); err != nil || c.InMemory(ids[0]) {
		t.Fatalf("Fetch of a chunk on disk: %v, in memory %v", err, c.InMemory(ids[0]))
	}
	fetches := c.Stats().Fetches
	if err := c.Warm(ctx, ids[1], uint32(len(datas[1])), Prefetch); err != nil || !c.InMemory(ids[1]) {
		t.Fatalf("Warm: %v, in memory %v", err, c.InMemory(ids[1]))
	}
	if c.Stats().Fetches != fetches {
		t.Fatal("Warm fetched from the store a chunk the disk tier held")
	}
	if b, err := c.Get(ctx, ids[1], 0); err != nil || !bytes.Equal(b, datas[1]) {
		t.Fatalf("after Warm: %v", err)
	}
}

// Pooled buffers under churn: readers copying out of chunks, or holding
// views of them, while a small
// memory tier evicts them, fetches are shared, some callers give up
// midway. Every byte read is right, the pool stays within its bound, and
// once the tier is emptied every pooled buffer is back in the pool (a
// double release would have panicked, a leak shows here).
func TestPooledBuffersUnderChurn(t *testing.T) {
	st, _, _ := fixture(t, 1, 10)
	var datas [][]byte
	var ids []digest.ID
	rnd := rand.New(rand.NewSource(7))
	for i := 0; i < 24; i++ {
		b := make([]byte, 100_000+rnd.Intn(200_000))
		rnd.Read(b)
		id := digest.Of(b)
		if err := st.Put(context.Background(), store.H(store.Chunk, id), chunk.Encode(b)); err != nil {
			t.Fatal(err)
		}
		datas, ids = append(datas, b), append(ids, id)
	}
	c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 1 << 20, DiskBytes: 2 << 20, Fetches: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rnd := rand.New(rand.NewSource(int64(w)))
			dst := make([]byte, 300_000)
			for i := 0; i < 300; i++ {
				k := rnd.Intn(len(ids))
				ctx := context.Background()
				if i%17 == 0 {
					cctx, cancel := context.WithCancel(ctx)
					cancel()
					ctx = cctx
				}
				off := rnd.Intn(len(datas[k]))
				if w%2 == 1 {
					// A view: the chunk's own bytes, held while others evict.
					v, release, err := c.View(ctx, ids[k], uint32(len(datas[k])), int64(off), rnd.Intn(len(dst)))
					if ctx.Err() != nil {
						if err == nil {
							release() // a hit needs no waiting: it succeeds canceled
						}
						continue
					}
					if err != nil || !bytes.Equal(v, datas[k][off:off+len(v)]) {
						t.Errorf("worker %d: view of chunk %d at %d: %d bytes, %v", w, k, off, len(v), err)
						return
					}
					time.Sleep(time.Duration(rnd.Intn(200)) * time.Microsecond)
					if !bytes.Equal(v, datas[k][off:off+len(v)]) {
						t.Errorf("worker %d: view of chunk %d changed while held", w, k)
					}
					release()
					release() // harmless
					continue
				}
				n, err := c.ReadAt(ctx, ids[k], uint32(len(datas[k])), dst[:rnd.Intn(len(dst))], int64(off))
				if ctx.Err() != nil {
					continue
				}
				if err != nil || !bytes.Equal(dst[:n], datas[k][off:off+n]) {
					t.Errorf("worker %d: chunk %d at %d: %d bytes, %v", w, k, off, n, err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	c.Flush()
	if c.pool.mapped > c.pool.limit {
		t.Fatalf("pool mapped %d bytes, bound %d", c.pool.mapped, c.pool.limit)
	}
	c.DropMemory()
	deadline := time.Now().Add(5 * time.Second)
	for {
		carved, free := c.pool.idle()
		if carved == free && carved > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pooled buffers, %d back in the pool", carved, free)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A fetch still in flight when the cache closes (a daemon stopping while a
// slow store answers) completes without writing to the closed disk tier;
// it used to panic sending on the closed write queue.
func TestFetchOutlivesClose(t *testing.T) {
	st, _, ids := fixture(t, 1, 4096)
	slow := &slowGets{Store: st, d: 100 * time.Millisecond}
	c, err := Open(slow, Config{Dir: t.TempDir(), MemBytes: 1 << 20, DiskBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Fetch(ctx, ids[0], 0, Demand)
	}()
	time.Sleep(20 * time.Millisecond) // the fetch is waiting on the store
	cancel()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-done
	time.Sleep(150 * time.Millisecond) // the detached load finishes
}

// Close finishes the disk-tier writes queued before it: a daemon stopped
// right after reading keeps every chunk it fetched (they were dropped, and
// a test expecting the next daemon to find one failed now and then).
func TestCloseKeepsQueuedWrites(t *testing.T) {
	ctx := context.Background()
	st, _, ids := fixture(t, 40, 256<<10)
	dir := t.TempDir()
	c, err := Open(st, Config{Dir: dir, MemBytes: 64 << 20, DiskBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if err := c.Fetch(ctx, id, 256<<10, Demand); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil { // no Flush
		t.Fatal(err)
	}
	c2, err := Open(st, Config{Dir: dir, MemBytes: 64 << 20, DiskBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if n := c2.Stats().Disk.Entries; n != int64(len(ids)) {
		t.Fatalf("the disk tier kept %d of %d chunks fetched before Close", n, len(ids))
	}
}

type slowGets struct {
	store.Store
	d time.Duration
}

func (s *slowGets) Get(ctx context.Context, h store.Handle, off, n int64) ([]byte, error) {
	time.Sleep(s.d)
	return s.Store.Get(ctx, h, off, n)
}

// Chunks of known size are read straight into pooled buffers (GetInto):
// raw and compressed ones come back right, and every kind of bad blob —
// flipped bytes, a blob a byte too long or too short, a wrong size in the
// manifest — is an error, never wrong bytes, and never enters the cache.
func TestFetchIntoBuffers(t *testing.T) {
	ctx := context.Background()
	fs, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewSource(3))
	random := make([]byte, 300_000)
	rnd.Read(random)
	small := random[:5000]
	zeros := make([]byte, 300_000)
	copy(zeros, random[:1000])
	put := func(blob []byte, data []byte) digest.ID {
		id := digest.Of(data)
		h := store.H(store.Chunk, id)
		fs.Delete(ctx, h)
		if err := fs.Put(ctx, h, blob); err != nil {
			t.Fatal(err)
		}
		return id
	}
	for _, data := range [][]byte{random, small, zeros} {
		id := put(chunk.Encode(data), data)
		c, err := Open(fs, Config{Dir: t.TempDir(), MemBytes: 4 << 20, DiskBytes: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(data))
		if n, err := c.ReadAt(ctx, id, uint32(len(data)), got, 0); err != nil || n != len(data) || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: ReadAt = %d, %v", len(data), n, err)
		}
		// A wrong size in the manifest is refused.
		c2, _ := Open(fs, Config{Dir: t.TempDir(), MemBytes: 4 << 20, DiskBytes: 4 << 20})
		for _, size := range []int{len(data) - 1, len(data) + 1} {
			if _, err := c2.ReadAt(ctx, id, uint32(size), got, 0); err == nil {
				t.Fatalf("%d bytes read with a manifest size of %d", len(data), size)
			}
		}
		c.Close()
		c2.Close()
	}
	bad := map[string][]byte{}
	raw := chunk.Encode(random)
	flip := append([]byte(nil), raw...)
	flip[len(flip)/2] ^= 1
	bad["raw, a flipped byte"] = flip
	bad["raw, a byte too long"] = append(append([]byte(nil), raw...), 0)
	bad["raw, a byte too short"] = raw[:len(raw)-1]
	z := chunk.Encode(zeros)
	if z[0] != chunk.CodecZstd {
		t.Fatal("fixture: zeros did not compress")
	}
	zflip := append([]byte(nil), z...)
	zflip[len(zflip)-3] ^= 0x40
	bad["zstd, a flipped byte"] = zflip
	bad["unknown codec"] = append([]byte{7}, random...)[:len(random)+1]
	bad["empty"] = []byte{}
	for name, blob := range bad {
		data := random
		if name[0] == 'z' {
			data = zeros
		}
		id := put(blob, data)
		c, err := Open(fs, Config{Dir: t.TempDir(), MemBytes: 4 << 20, DiskBytes: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(data))
		if _, err := c.ReadAt(ctx, id, uint32(len(data)), got, 0); !errors.Is(err, chunk.ErrCorrupt) {
			t.Errorf("%s: want ErrCorrupt, got %v", name, err)
		}
		if c.Contains(id) || c.Stats().Corrupt != 1 {
			t.Errorf("%s: in the cache %v, corrupt counter %d", name, c.Contains(id), c.Stats().Corrupt)
		}
		c.Close()
	}
}

// The disk tier writes chunks and assembled files with O_DIRECT, and
// through the page cache where the filesystem refuses it (tmpfs, some
// network filesystems): either way a new cache on the same directory reads
// them back right, chunk by chunk and as a whole assembled file.
func TestDiskTierWithAndWithoutDirectIO(t *testing.T) {
	ctx := context.Background()
	directiotest.Each(t, func(name, dir string, refused bool) {
		st, chunks, whole := fileFixture(t)
		c, err := Open(st, Config{Dir: dir, MemBytes: 4 << 20, DiskBytes: 16 << 20})
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range chunks {
			if err := c.Fetch(ctx, ch.ID, ch.Size, Demand); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		c.Flush()
		if err := c.Assemble(ctx, chunks, false); err != nil {
			t.Fatalf("%s: assemble: %v", name, err)
		}
		if c.disk.noDirect.Load() != refused && name != "tmpfs" {
			t.Fatalf("%s: O_DIRECT refused: %v", name, c.disk.noDirect.Load())
		}
		c.Close()
		c2, err := Open(st, Config{Dir: dir, MemBytes: 4 << 20, DiskBytes: 16 << 20})
		if err != nil {
			t.Fatal(err)
		}
		before := st.gets.Load()
		off := 0
		for i, ch := range chunks {
			got, err := c2.Get(ctx, ch.ID, ch.Size)
			want := whole[off : off+int(ch.Size)]
			off += int(ch.Size)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s: chunk %d from the disk tier: %v", name, i, err)
			}
		}
		waitRechecked(t, c2)
		f, ok := c2.DiskFile(FileID(chunks), int64(len(whole)))
		if !ok {
			t.Fatalf("%s: no assembled file", name)
		}
		got, err := io.ReadAll(f)
		f.Close()
		if err != nil || !bytes.Equal(got, whole) {
			t.Fatalf("%s: assembled file: %d bytes, %v", name, len(got), err)
		}
		if st.gets.Load() != before {
			t.Fatalf("%s: the store was read again", name)
		}
		c2.Close()
	})
}

// assembleFixture is a cache with a disk tier over fileFixture's store
// (closed when the test ends), the file's chunks and its bytes.
func assembleFixture(t *testing.T) (*Cache, []chunk.Ref, []byte) {
	st, chunks, whole := fileFixture(t)
	c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 4 << 20, DiskBytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, chunks, whole
}

// Assembly is background work: while the cache is busy (a cold pass goes
// on reading other files) it waits, and it goes ahead once all is quiet.
func TestAssembleWaitsForAQuietMoment(t *testing.T) {
	ctx := context.Background()
	c, chunks, whole := assembleFixture(t)
	var busy atomic.Bool
	busy.Store(true)
	c.disk.busy = func() (time.Duration, bool) { // before any write is queued
		if busy.Load() {
			return quietPeriod, false
		}
		return 0, false
	}
	for _, ch := range chunks {
		if err := c.Fetch(ctx, ch.ID, ch.Size, Demand); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- c.Assemble(ctx, chunks, true) }()
	select {
	case err := <-done:
		t.Fatalf("assembled while the cache was busy (err %v)", err)
	case <-time.After(6 * quietPeriod):
	}
	if _, ok := c.DiskFile(FileID(chunks), int64(len(whole))); ok {
		t.Fatal("an assembled file appeared while the cache was busy")
	}
	busy.Store(false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no assembly 5 s after the cache went quiet")
	}
	f, ok := c.DiskFile(FileID(chunks), int64(len(whole)))
	if !ok {
		t.Fatal("no assembled file once quiet")
	}
	f.Close()
}

// An assembled file written through the page cache is read back and
// verified once, found resident by Resident, opened without hashing it
// again, and still caught when its bytes change afterwards.
func TestAssembleCached(t *testing.T) {
	ctx := context.Background()
	c, chunks, whole := assembleFixture(t)
	if err := c.Assemble(ctx, chunks, true); err != nil {
		t.Fatal(err)
	}
	id, size := FileID(chunks), int64(len(whole))
	c.disk.mu.Lock()
	e := *c.disk.entries[id].Value.(*diskEntry)
	c.disk.mu.Unlock()
	if e.verified == (fileStamp{}) {
		t.Fatal("the assembled file was not verified when written")
	}
	f, ok := c.DiskFile(id, size)
	if !ok {
		t.Fatal("no assembled file")
	}
	if !Resident(f, size) {
		t.Error("a file just written through the page cache is not resident")
	}
	got, err := io.ReadAll(f)
	f.Close()
	if err != nil || !bytes.Equal(got, whole) {
		t.Fatalf("assembled file: %d bytes, %v", len(got), err)
	}
	// Change a byte (which moves the file's ctime): the next open hashes
	// it again and drops it.
	p := c.disk.path(id, e.sum)
	b, _ := os.ReadFile(p)
	b[len(b)/2] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if f, ok := c.DiskFile(id, size); ok {
		f.Close()
		t.Fatal("a changed assembled file was served")
	}
	if c.Stats().Corrupt != 1 {
		t.Fatalf("corrupt counter %d", c.Stats().Corrupt)
	}
}

// fileFixture is a store holding a file of three chunks: the chunks, and
// the file's bytes.
func fileFixture(t *testing.T) (*countingStore, []chunk.Ref, []byte) {
	st, datas, ids := fixture(t, 3, 150_001)
	var chunks []chunk.Ref
	var whole []byte
	for i, id := range ids {
		chunks = append(chunks, chunk.Ref{ID: id, Size: uint32(len(datas[i]))})
		whole = append(whole, datas[i]...)
	}
	return st, chunks, whole
}

// Disk-tier writes wait while the cache is serving (reads, lookups, store
// reads) and go ahead once it has been quiet for quietPeriod; Flush does
// not wait for quiet.
func TestDiskWritesWaitForQuiet(t *testing.T) {
	ctx := context.Background()
	st, _, ids := fixture(t, 8, 64<<10)
	c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 64 << 20, DiskBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	onDisk := func() int64 { return c.Stats().Disk.Entries }
	busy := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(quietPeriod / 5) {
			c.Active()
		}
	}
	for _, id := range ids[:4] {
		if err := c.Fetch(ctx, id, 64<<10, Demand); err != nil {
			t.Fatal(err)
		}
	}
	busy(4 * quietPeriod)
	if n := onDisk(); n != 0 {
		t.Fatalf("%d chunks written to the disk tier while the cache was busy", n)
	}
	if q := c.Stats().Disk.Queued; q != 4*64<<10 {
		t.Fatalf("queued %d bytes, want %d", q, 4*64<<10)
	}
	deadline := time.Now().Add(5 * time.Second)
	for onDisk() != 4 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 4 chunks on disk %v after the cache went quiet", onDisk(), 5*time.Second)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Flush writes at once, however busy the cache.
	for _, id := range ids[4:] {
		if err := c.Fetch(ctx, id, 64<<10, Demand); err != nil {
			t.Fatal(err)
		}
	}
	defer keepBusy(c)()
	c.Flush()
	if n := onDisk(); n != 8 {
		t.Fatalf("Flush returned with %d of 8 chunks on disk", n)
	}
}

// keepBusy reports activity to c every quietPeriod/5 until the returned
// func is called.
func keepBusy(c *Cache) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(quietPeriod / 5)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				c.Active()
			}
		}
	}()
	return func() { close(done) }
}

// Queued writes of chunks the memory tier has let go are written even while
// the cache stays busy once they fill half the bound: the queue's memory
// beyond the memory tier is bounded, and no fetch has to write for itself.
func TestDiskWritesGoAheadWhenQueueFills(t *testing.T) {
	ctx := context.Background()
	const size = 8 << 20
	n := maxQueuedBytes/2/size + 2
	st, _, ids := fixture(t, n, size)
	c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 2 * size, DiskBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer keepBusy(c)()
	for _, id := range ids {
		if err := c.Fetch(ctx, id, size, Demand); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(maxQueueAge / 2)
	for c.disk.outsideBytes.Load() >= maxQueuedBytes/2 || c.Stats().Disk.Entries == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("queue of %d bytes (%d outside the memory tier), %d entries on disk: writes held back past the bound",
				c.Stats().Disk.Queued, c.disk.outsideBytes.Load(), c.Stats().Disk.Entries)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestJournalNumbers(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"42", 42, true}, {"-7", -7, true},
		{"9223372036854775807", 9223372036854775807, true},
		{"-9223372036854775808", -9223372036854775808, true},
		{"9223372036854775808", 0, false}, {"-9223372036854775809", 0, false},
		{"", 0, false}, {"-", 0, false}, {"1a", 0, false}, {"+1", 0, false},
	} {
		if v, ok := parseInt([]byte(c.in)); ok != c.ok || v != c.want {
			t.Errorf("parseInt(%q) = %d, %v; want %d, %v", c.in, v, ok, c.want, c.ok)
		}
	}
	if v, ok := parseUint([]byte("ffffffffffffffff"), 16); !ok || v != 1<<64-1 {
		t.Errorf("max hex: %x %v", v, ok)
	}
	if _, ok := parseUint([]byte("10000000000000000"), 16); ok {
		t.Error("hex overflow accepted")
	}
	if v, ok := parseUint([]byte("00000000000000AB"), 16); !ok || v != 0xab {
		t.Errorf("upper-case hex: %x %v", v, ok)
	}
}

// Files in the disk tier's shards that are no cache entries are removed
// when the cache opens, and the log says so.
func TestDebrisRemovedWithALogLine(t *testing.T) {
	fst, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "ab"), 0o755)
	junk := filepath.Join(dir, "ab", "not-a-chunk")
	os.WriteFile(junk, []byte("x"), 0o644)
	var logs bytes.Buffer
	c, err := Open(fst, Config{Dir: dir, MemBytes: 1 << 20, DiskBytes: 1 << 30, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := os.Stat(junk); err == nil {
		t.Fatal("debris left in the disk tier")
	}
	if !strings.Contains(logs.String(), "no cache entries") {
		t.Fatalf("no log line for the removed debris:\n%s", logs.String())
	}
}

// A chunk asked for with a length other than its own is an error whether
// it is cold, in memory, or in flight for another caller: a crafted image
// cannot get another length served once a good image brought the chunk in.
func TestSizeMismatchAlwaysAnError(t *testing.T) {
	ctx := context.Background()
	fst, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("gpuwarm "), 512)
	id := digest.Of(data)
	enc := chunk.Encode(data)
	if err := fst.Put(ctx, store.H(store.Chunk, id), enc); err != nil {
		t.Fatal(err)
	}
	c, err := Open(fst, Config{Dir: t.TempDir(), MemBytes: 1 << 20, DiskBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Get(ctx, id, uint32(len(data)+10)); err == nil {
		t.Fatal("cold read with the wrong size succeeded")
	}
	if b, err := c.Get(ctx, id, uint32(len(data))); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("good read: %v", err)
	}
	if !c.InMemory(id) {
		t.Fatal("the chunk is not in memory after a read")
	}
	for _, size := range []int{len(data) - 1, len(data) + 10} {
		if _, err := c.Get(ctx, id, uint32(size)); !errors.Is(err, ErrSizeMismatch) {
			t.Fatalf("in-memory read with size %d: %v", size, err)
		}
	}
}

// waitRechecked waits for c's rechecks of journaled files (recheck.go).
func waitRechecked(t *testing.T, c *Cache) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitRechecked(ctx); err != nil {
		t.Fatal(err)
	}
}

// An assembled file replaces its chunks' own entries (one copy per byte);
// the chunks are still served from the disk tier, out of the file, without
// the store; a corrupt byte there is caught by the chunk's SHA-256, the
// file dropped and the chunk fetched again.
func TestAssembledFileReplacesChunks(t *testing.T) {
	ctx := context.Background()
	st, chunks, whole := fileFixture(t)
	dir := t.TempDir()
	c, err := Open(st, Config{Dir: dir, MemBytes: 4 << 20, DiskBytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, ch := range chunks {
		if err := c.Fetch(ctx, ch.ID, ch.Size, Demand); err != nil {
			t.Fatal(err)
		}
	}
	c.Flush()
	if s := c.Stats().Disk; s.Bytes != int64(len(whole)) || s.Entries != 3 {
		t.Fatalf("before assembly: %+v", s)
	}
	if err := c.Assemble(ctx, chunks, false); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats().Disk; s.Bytes != int64(len(whole)) || s.Entries != 1 {
		t.Fatalf("after assembly the disk tier holds %d bytes in %d entries, want %d in 1", s.Bytes, s.Entries, len(whole))
	}
	c.DropMemory()
	before := st.gets.Load()
	off := 0
	for i, ch := range chunks {
		if _, onDisk := c.Residency(ch.ID); !onDisk {
			t.Fatalf("chunk %d not on disk", i)
		}
		got, err := c.Get(ctx, ch.ID, ch.Size)
		if err != nil || !bytes.Equal(got, whole[off:off+int(ch.Size)]) {
			t.Fatalf("chunk %d out of the assembled file: %v", i, err)
		}
		off += int(ch.Size)
	}
	if st.gets.Load() != before {
		t.Fatal("the store was read for chunks inside the assembled file")
	}
	// A chunk fetched again is not written a second time.
	if err := c.WarmDisk(ctx, chunks[0].ID, chunks[0].Size, Prefetch); err != nil {
		t.Fatal(err)
	}
	c.Flush()
	if s := c.Stats().Disk; s.Entries != 1 {
		t.Fatalf("a chunk inside the file was cached again: %+v", s)
	}
	// Corrupt the middle chunk's bytes inside the file.
	id := FileID(chunks)
	e, _ := c.disk.peek(id)
	p := c.disk.path(id, e.sum)
	b, _ := os.ReadFile(p)
	b[int(chunks[0].Size)+10] ^= 1
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c.DropMemory()
	got, err := c.Get(ctx, chunks[1].ID, chunks[1].Size)
	if err != nil || !bytes.Equal(got, whole[chunks[0].Size:chunks[0].Size+chunks[1].Size]) {
		t.Fatalf("chunk after its bytes inside the file were corrupted: %v", err)
	}
	if st.gets.Load() != before+1 || c.Stats().Corrupt != 1 {
		t.Fatalf("store reads %d (want 1), corrupt %d (want 1)", st.gets.Load()-before, c.Stats().Corrupt)
	}
	if _, err := os.Stat(filepath.Join(dir, mapsDir, id.String())); !os.IsNotExist(err) {
		t.Fatalf("the dropped file's chunk map is still there: %v", err)
	}
}

// Chunk writes still queued when an assembled file takes in their chunks
// are dropped, not written and then thrown away: a cold pass over a file
// writes its bytes to the disk once.
func TestQueuedWritesOfAssembledChunksAreSkipped(t *testing.T) {
	ctx := context.Background()
	st, chunks, whole := fileFixture(t)
	c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 64 << 20, DiskBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // the cache keeps serving: the writes wait
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(quietPeriod / 5):
				c.Active()
			}
		}
	}()
	for _, ch := range chunks {
		if err := c.Fetch(ctx, ch.ID, ch.Size, Demand); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Assemble(ctx, chunks, false); err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-done
	c.Flush()
	if n := c.disk.chunkWrites.Load(); n != 0 {
		t.Fatalf("%d chunk files written after their file was assembled", n)
	}
	if s := c.Stats().Disk; s.Bytes != int64(len(whole)) || s.Entries != 1 || s.Queued != 0 {
		t.Fatalf("disk tier %+v, want the assembled file alone", s)
	}
}

// Chunks the memory tier still holds cost the queue nothing: while the
// cache is busy their writes wait (a cold pass is not slowed by them), past
// half the queue's byte bound, and nothing is written before the cache
// goes quiet.
// The same holds for many writes (more than the 2,048 the queue once had
// room for before it let them go ahead): a cold restore fetches tens of
// thousands of chunks.
func TestDiskWritesOfChunksInMemoryWait(t *testing.T) {
	for _, tc := range []struct{ n, size int }{
		{maxQueuedBytes/2/(8<<20) + 4, 8 << 20},
		{3000, 4 << 10},
	} {
		t.Run(fmt.Sprintf("%dx%d", tc.n, tc.size), func(t *testing.T) {
			ctx := context.Background()
			n, size := tc.n, tc.size
			st, _, ids := fixture(t, n, size)
			c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 1 << 30, DiskBytes: 1 << 30})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			stop := keepBusy(c)
			for _, id := range ids {
				if err := c.Fetch(ctx, id, uint32(size), Demand); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(4 * quietPeriod)
			if s := c.Stats().Disk; s.Entries != 0 || s.Queued != int64(n*size) || c.disk.outsideBytes.Load() != 0 {
				t.Fatalf("while busy, with every chunk in memory: %+v, outside %d; want nothing written", s, c.disk.outsideBytes.Load())
			}
			stop()
			deadline := time.Now().Add(maxQueueAge / 2)
			for c.Stats().Disk.Entries != int64(n) {
				if time.Now().After(deadline) {
					t.Fatalf("%d of %d chunks on disk after the cache went quiet", c.Stats().Disk.Entries, n)
				}
				time.Sleep(10 * time.Millisecond)
			}
			// A writer counts its entry before it settles the queue's
			// accounting: wait for the writes to be done, not just to be
			// on disk.
			c.Flush()
			if q := c.Stats().Disk.Queued; q != 0 {
				t.Fatalf("queued %d bytes after every write", q)
			}
		})
	}
}

// Close writes what is still queued (a busy mount stopping), but only for
// closeWriteLimit: a stop ends within its service manager's timeout, and
// what was not written is only not cached on disk (the next daemon fetches
// it again, and finds every entry it does have whole).
func TestCloseWritesQueuedWithinItsLimit(t *testing.T) {
	for _, limit := range []time.Duration{time.Minute, 0} {
		t.Run(limit.String(), func(t *testing.T) {
			defer func(l time.Duration) { closeWriteLimit = l }(closeWriteLimit)
			closeWriteLimit = limit
			const n, size = 40, 64 << 10
			st, datas, ids := fixture(t, n, size)
			dir := t.TempDir()
			c, err := Open(st, Config{Dir: dir, MemBytes: 1 << 30, DiskBytes: 1 << 30})
			if err != nil {
				t.Fatal(err)
			}
			stop := keepBusy(c)
			defer stop()
			getAll(t, c, ids, datas, "cold")
			if s := c.Stats().Disk; s.Entries != 0 || s.Queued != n*size {
				t.Fatalf("before close, while busy: %+v; want every write queued", s)
			}
			start := time.Now()
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > limit+5*time.Second {
				t.Fatalf("close took %v with a limit of %v", d, limit)
			}
			c2, err := Open(st, Config{Dir: dir, MemBytes: 1 << 30, DiskBytes: 1 << 30})
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			want := int64(n)
			if limit == 0 {
				want = 0
			}
			if got := c2.Stats().Disk.Entries; got != want {
				t.Fatalf("limit %v: the next daemon found %d chunks on disk, want %d", limit, got, want)
			}
			fetches := st.gets.Load()
			getAll(t, c2, ids, datas, "after reopening")
			if got := st.gets.Load() - fetches; got != n-want {
				t.Fatalf("limit %v: %d chunks fetched again, want %d", limit, got, n-want)
			}
		})
	}
}

// A write held back by an assembly waits until the assembly lets go.
func TestHeldWritesWait(t *testing.T) {
	st, chunks, _ := fileFixture(t)
	c, err := Open(st, Config{Dir: t.TempDir(), MemBytes: 1 << 20, DiskBytes: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	release := c.disk.holdWrites(chunks)
	waited := make(chan struct{})
	go func() {
		c.disk.waitHeld(chunks[1].ID)
		close(waited)
	}()
	select {
	case <-waited:
		t.Fatal("a held write went ahead")
	case <-time.After(50 * time.Millisecond):
	}
	c.disk.waitHeld(digest.Of([]byte("not held"))) // returns at once
	release()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("a held write still waits after the release")
	}
}
