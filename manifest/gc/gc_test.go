package gc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

func packDir(t *testing.T, s store.Store, files map[string]string, annots map[string]string) digest.ID {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
	}
	res, err := pack.Dir(context.Background(), s, dir, pack.Options{Annotations: annots})
	if err != nil {
		t.Fatal(err)
	}
	return res.ID
}

func count(t *testing.T, s store.Store, k store.Kind) int {
	n := 0
	s.List(context.Background(), k, func(store.Info) error { n++; return nil })
	return n
}

func TestCollect(t *testing.T) {
	ctx := context.Background()
	s, _ := filestore.Open(t.TempDir())
	base := packDir(t, s, map[string]string{"shared": "shared bytes", "lib": "library"}, nil)
	snap := packDir(t, s, map[string]string{"pages": "memory pages"}, map[string]string{DependsAnnotation: base.String()})
	old := packDir(t, s, map[string]string{"shared": "shared bytes", "gone": "only in the old image"}, nil)
	store.SetTag(ctx, s, "snap", snap)
	store.SetTag(ctx, s, "old", old)
	stray := []byte("uploaded by a pack that crashed")
	s.Put(ctx, store.H(store.Chunk, digest.Of(stray)), chunk.Encode(stray))
	// Profiles: one for a live image, one for a dead one.
	s.Put(ctx, store.H(store.Profile, digest.Of([]byte("p1"))), []byte("p1"))
	s.Put(ctx, store.Handle{Kind: store.ProfileRef, Name: snap.String()}, []byte("profile:"+digest.Of([]byte("p1")).String()))
	s.Put(ctx, store.H(store.Profile, digest.Of([]byte("p2"))), []byte("p2"))
	s.Put(ctx, store.Handle{Kind: store.ProfileRef, Name: old.String()}, []byte("profile:"+digest.Of([]byte("p2")).String()))

	// Within the grace period nothing is deleted.
	rep, err := Run(ctx, s, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.DeletedChunks != 0 || rep.KeptYoung == 0 {
		t.Fatalf("young objects deleted: %+v", rep)
	}
	// Untag the old image; a dry run reports but deletes nothing.
	s.Delete(ctx, store.Handle{Kind: store.Tag, Name: "old"})
	chunksBefore := count(t, s, store.Chunk)
	rep, err = Run(ctx, s, Options{DryRun: true, Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.DeletedChunks != 2 || count(t, s, store.Chunk) != chunksBefore {
		t.Fatalf("dry run: %+v, chunks %d -> %d", rep, chunksBefore, count(t, s, store.Chunk))
	}
	rep, err = Run(ctx, s, Options{Grace: -1})
	if err != nil {
		t.Fatal(err)
	}
	// Deleted: the old manifest, its private chunk, the stray chunk, the old
	// image's profile and reference. Kept: snap, base (a dependency), shared.
	if rep.LiveImages != 2 || rep.DeletedManifests != 1 || rep.DeletedChunks != 2 || rep.DeletedProfiles != 1 || rep.DeletedProfileRefs != 1 {
		t.Fatalf("report %+v", rep)
	}
	for _, id := range []digest.ID{snap, base} {
		b, err := s.Get(ctx, store.H(store.Manifest, id), 0, -1)
		if err != nil {
			t.Fatalf("live image %s deleted: %v", id.Short(), err)
		}
		m, _ := manifest.Decode(b)
		for _, c := range m.ChunkIDs() {
			if _, err := s.Stat(ctx, store.H(store.Chunk, c)); err != nil {
				t.Fatalf("chunk of a live image deleted: %v", err)
			}
		}
	}
	if _, err := s.Stat(ctx, store.H(store.Chunk, digest.Of(stray))); !errors.Is(err, store.ErrNotFound) {
		t.Fatal("unreferenced chunk kept")
	}
	if _, err := s.Stat(ctx, store.H(store.Profile, digest.Of([]byte("p1")))); err != nil {
		t.Fatal("live profile deleted")
	}
}

func TestLocks(t *testing.T) {
	ctx := context.Background()
	s, _ := filestore.Open(t.TempDir())
	w, err := store.AcquireLock(ctx, s, store.WriteLock, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Run(ctx, s, Options{Grace: -1}); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("gc ran during a pack: %v", err)
	}
	w.Release(ctx)
	g, err := store.AcquireLock(ctx, s, store.GCLock, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	go func() { time.Sleep(300 * time.Millisecond); g.Release(ctx) }()
	w2, err := store.AcquireLock(ctx, s, store.WriteLock, 10*time.Second)
	if err != nil || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("writer did not wait for gc: %v after %v", err, time.Since(start))
	}
	w2.Release(ctx)
	if n := count(t, s, store.Lock); n != 0 {
		t.Fatalf("%d locks left", n)
	}
}
