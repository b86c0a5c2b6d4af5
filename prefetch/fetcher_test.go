package prefetch

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// failFirst fails its first Get.
type failFirst struct {
	store.Store
	n atomic.Int32
}

func (f *failFirst) Get(ctx context.Context, h store.Handle, off, n int64) ([]byte, error) {
	if f.n.Add(1) == 1 {
		return nil, errors.New("store unreachable")
	}
	return f.Store.Get(ctx, h, off, n)
}

// A profile fetched as the manifest starts loading is handed over once; a
// fetch that failed is not reused but tried again.
func TestFetcherRetriesFailedFetch(t *testing.T) {
	ctx := context.Background()
	fst, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := digest.Of([]byte("image"))
	rec := NewRecorder(img)
	rec.Touch(img, 0, 0, digest.Of([]byte("chunk")), 5)
	if _, err := Save(ctx, fst, rec.Profile()); err != nil {
		t.Fatal(err)
	}
	f := NewFetcher(ctx, &failFirst{Store: fst})
	first := f.start(img)
	<-first.done
	if first.err == nil {
		t.Fatal("the first fetch was meant to fail")
	}
	p, err := f.Take(img)
	if err != nil || p == nil || len(p.Entries) != 1 {
		t.Fatalf("second fetch: %v, %v", p, err)
	}
	if other, err := f.Take(digest.Of([]byte("no profile"))); other != nil || err != nil {
		t.Fatalf("an image without a profile: %v, %v", other, err)
	}
}

// AddRun merges runs into the stored profile and counts them.
func TestAddRunMerges(t *testing.T) {
	ctx := context.Background()
	fst, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := digest.Of([]byte("image"))
	for i := 1; i <= 2; i++ {
		rec := NewRecorder(img)
		rec.Touch(img, 0, i, digest.Of([]byte{byte(i)}), 5)
		merged, _, replaced, err := AddRun(ctx, fst, rec.Profile())
		if err != nil || replaced != nil {
			t.Fatal(err, replaced)
		}
		if int(merged.Runs) != i || len(merged.Entries) != i {
			t.Fatalf("run %d: %d runs, %d chunks", i, merged.Runs, len(merged.Entries))
		}
	}
	if got := RestoreReplay(10, 8, 2); got.Hits != 6 || got.Misses != 2 || got.Kind != "restore" {
		t.Fatalf("restore record %+v", got)
	}
}
