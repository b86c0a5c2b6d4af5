package prefetch

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
	"github.com/gpuwarm/gpuwarm/manifest/store/simstore"
)

func chunks(t *testing.T, st store.Store, n, size int) []Entry {
	t.Helper()
	var out []Entry
	r := rand.New(rand.NewPCG(uint64(n), 9))
	for i := 0; i < n; i++ {
		b := make([]byte, size)
		for k := range b {
			b[k] = byte(r.Uint32())
		}
		id := digest.Of(b)
		st.Put(context.Background(), store.H(store.Chunk, id), chunk.Encode(b))
		out = append(out, Entry{ID: id, Size: uint32(size), TimeMS: uint64(i), Seen: 1})
	}
	return out
}

func TestEncodeMergeSaveLoad(t *testing.T) {
	st, _ := filestore.Open(t.TempDir())
	img := digest.Of([]byte("image"))
	es := chunks(t, st, 6, 100)
	run1 := &Profile{Image: img, Runs: 1, Entries: []Entry{es[0], es[1], es[2], es[3]}}
	// Run 2 touches 2 before 1 and skips 3; 4 and 5 are new.
	e2 := []Entry{es[0], es[2], es[1], es[4], es[5]}
	for i := range e2 {
		e2[i].TimeMS = uint64(i) * 10
	}
	run2 := &Profile{Image: img, Runs: 1, Entries: e2}
	m := Merge(Merge(nil, run1), run2)
	if m.Runs != 2 || len(m.Entries) != 6 {
		t.Fatalf("merged %+v", m)
	}
	back, err := Decode(m.Encode())
	if err != nil || !bytes.Equal(back.Encode(), m.Encode()) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := Save(context.Background(), st, m); err != nil {
		t.Fatal(err)
	}
	got, err := Load(context.Background(), st, img)
	if err != nil || got.Runs != 2 {
		t.Fatalf("load: %v %+v", err, got)
	}
	if p, err := Load(context.Background(), st, digest.Of([]byte("other"))); p != nil || err != nil {
		t.Fatalf("image without a profile: %v %v", p, err)
	}
	// A profile of another image behind this image's reference is refused.
	foreign := &Profile{Image: digest.Of([]byte("other")), Runs: 1, Entries: es[:1]}
	fid := digest.Of(foreign.Encode())
	st.Put(context.Background(), store.H(store.Profile, fid), foreign.Encode())
	st.Put(context.Background(), store.Handle{Kind: store.ProfileRef, Name: img.String()}, []byte("profile:"+fid.String()))
	if _, err := Load(context.Background(), st, img); !errors.Is(err, ErrBadProfile) {
		t.Fatalf("foreign profile: %v", err)
	}
	for _, bad := range [][]byte{nil, []byte("GWPF"), append(m.Encode(), 0)} {
		if _, err := Decode(bad); !errors.Is(err, ErrBadProfile) {
			t.Errorf("Decode(%q): %v", bad, err)
		}
	}
}

// TestRecordedOrder: a deterministic reader's chunk order through a real
// mount is what the recorder records.
func TestRecordedOrder(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE")
	}
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	os.MkdirAll(src, 0o755)
	r := rand.New(rand.NewPCG(3, 3))
	names := []string{"c", "a", "e", "b", "d"}
	for _, n := range names {
		b := make([]byte, 3<<20+1234)
		for k := range b {
			b[k] = byte(r.Uint32())
		}
		os.WriteFile(filepath.Join(src, n), b, 0o644)
	}
	st, _ := filestore.Open(filepath.Join(tmp, "store"))
	res, err := pack.Dir(context.Background(), st, src, pack.Options{})
	if err != nil {
		t.Fatal(err)
	}
	store.SetTag(context.Background(), st, "t", res.ID)
	bc, _ := cache.Open(st, cache.Config{MemBytes: 1 << 30})
	rec := NewRecorder(res.ID)
	mnt := filepath.Join(tmp, "mnt")
	os.MkdirAll(mnt, 0o755)
	srv, err := fusefs.Mount(mnt, fusefs.Options{Cache: bc, Observer: rec, Readahead: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ix, _ := manifest.Load(context.Background(), st, res.ID)
	var want [][]digest.ID
	buf := make([]byte, 1<<20)
	for _, n := range names {
		f, _ := os.Open(filepath.Join(mnt, "t", n))
		for {
			if _, err := f.Read(buf); err != nil {
				break
			}
		}
		f.Close()
		i, _ := ix.Lookup(n)
		var ids []digest.ID
		for _, c := range ix.Entries[i].Chunks {
			ids = append(ids, c.ID)
		}
		want = append(want, ids)
	}
	// Files were read one after another; within a file the kernel's
	// readahead may fetch chunks in parallel, so the order inside a file is
	// the order the requests arrived, and the files' blocks must follow the
	// reading order exactly.
	got := rec.Profile()
	pos := 0
	for fi, ids := range want {
		in := map[digest.ID]bool{}
		for _, id := range ids {
			in[id] = true
		}
		for range ids {
			if pos >= len(got.Entries) || !in[got.Entries[pos].ID] {
				t.Fatalf("file %d (%s): recorded chunk %d belongs elsewhere", fi, names[fi], pos)
			}
			pos++
		}
	}
	if pos != len(got.Entries) {
		t.Fatalf("recorded %d chunks, read %d", len(got.Entries), pos)
	}
}

// TestReplayBoundsAndDemandLatency: with the simulated link saturated by
// prefetching, the replay stays within its window and demand reads are not
// starved.
func TestReplayBoundsAndDemandLatency(t *testing.T) {
	fs, _ := filestore.Open(t.TempDir())
	es := chunks(t, fs, 200, 64<<10)
	other := chunks(t, fs, 1, 64<<10) // not in the profile: a divergent read
	sim := simstore.New(fs, 2*time.Millisecond, 20e6)
	c, _ := cache.Open(sim, cache.Config{MemBytes: 1 << 30, Fetches: 8})
	img := digest.Of([]byte("img"))
	p := &Profile{Image: img, Runs: 1, Entries: es}
	const ahead = 1 << 20
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := Replay(ctx, c, p, ReplayOptions{Workers: 4, Ahead: ahead})
	var mu sync.Mutex
	var worst time.Duration
	// A reader walks the profile, slower than the link, plus a divergent read.
	for i := 0; i < len(es); i += 10 {
		start := time.Now()
		id := es[i].ID
		if i == 50 {
			id = other[0].ID
		}
		if _, err := c.Get(ctx, id, 64<<10); err != nil {
			t.Fatal(err)
		}
		r.Touch(img, 0, 0, id, 64<<10)
		mu.Lock()
		worst = max(worst, time.Since(start))
		mu.Unlock()
	}
	r.Wait()
	if r.MaxAhead() > ahead+64<<10 {
		t.Fatalf("replay ran %d bytes ahead, bound %d", r.MaxAhead(), ahead)
	}
	// One 64 KiB chunk takes ~5ms on this link; a demand read may wait for
	// the shared link's queue (at most Ahead bytes = ~50ms) but no more.
	if worst > 200*time.Millisecond {
		t.Fatalf("a demand read waited %v behind prefetching", worst)
	}
	if s := r.Stats(); s.Hits == 0 {
		t.Fatalf("no demand read found its chunk prefetched: %+v", s)
	}
}

// TestReplayWarmedMovesWindow: chunks put into the page cache (OnReady
// true) count as read, so a replay no reader touches still gets through a
// profile larger than its window; without that it stops at the window.
func TestReplayWarmedMovesWindow(t *testing.T) {
	fs, _ := filestore.Open(t.TempDir())
	es := chunks(t, fs, 40, 64<<10)
	img := digest.Of([]byte("img"))
	p := &Profile{Image: img, Runs: 1, Entries: es}
	const ahead = 4 * 64 << 10
	for _, warm := range []bool{true, false} {
		c, _ := cache.Open(fs, cache.Config{MemBytes: 1 << 30})
		ctx, cancel := context.WithCancel(context.Background())
		r := Replay(ctx, c, p, ReplayOptions{Workers: 2, Ahead: ahead, OnReady: func(digest.ID) bool { return warm }})
		if warm {
			r.Wait()
			if s := r.Stats(); s.Fetched != int64(len(es)) || s.Warmed != int64(len(es)) || s.Touched != 0 {
				t.Fatalf("warmed replay: %+v, want all %d fetched and warmed", s, len(es))
			}
		} else {
			time.Sleep(200 * time.Millisecond)
			if s := r.Stats(); s.Fetched > 5 || s.Warmed != 0 {
				t.Fatalf("replay with nothing read or warmed went past its window: %+v", s)
			}
		}
		cancel()
		r.Wait()
		c.Close()
	}
}

func FuzzDecode(f *testing.F) {
	f.Add((&Profile{Image: digest.Of(nil), Runs: 2, Entries: []Entry{{ID: digest.Of([]byte("a")), Size: 5, TimeMS: 3, Seen: 2}}}).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(p.Encode(), b) {
			t.Fatal("accepted a non-canonical profile")
		}
	})
}
