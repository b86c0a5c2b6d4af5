package main

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
	"github.com/gpuwarm/gpuwarm/prefetch"
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
func TestProfilesFetchedEarly(t *testing.T) {
	ctx := context.Background()
	fst, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := digest.Of([]byte("image"))
	rec := prefetch.NewRecorder(img)
	rec.Touch(img, 0, 0, digest.Of([]byte("chunk")), 5)
	if _, err := prefetch.Save(ctx, fst, rec.Profile()); err != nil {
		t.Fatal(err)
	}
	ps := &profiles{ctx: ctx, st: &failFirst{Store: fst}}
	first := ps.start(img)
	<-first.done
	if first.err == nil {
		t.Fatal("the first fetch was meant to fail")
	}
	p, err := ps.take(img)
	if err != nil || p == nil || len(p.Entries) != 1 {
		t.Fatalf("second fetch: %v, %v", p, err)
	}
	if other, err := ps.take(digest.Of([]byte("no profile"))); other != nil || err != nil {
		t.Fatalf("an image without a profile: %v, %v", other, err)
	}
}
