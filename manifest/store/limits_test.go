package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// countGets counts the bytes Get was asked for.
type countGets struct {
	store.Store
	asked int64
}

func (c *countGets) Get(ctx context.Context, h store.Handle, off, n int64) ([]byte, error) {
	c.asked += n
	return c.Store.Get(ctx, h, off, n)
}

// Objects over their kind's limit are refused, a manifest or profile from
// its size before any byte is read, a small object after at most one byte
// past its limit; a sparse 2 GB file stands in for the hostile object.
func TestReadAllBoundsEachKind(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	fst, err := filestore.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := &countGets{Store: fst}
	big := func(kind store.Kind, name string) store.Handle {
		h := store.Handle{Kind: kind, Name: name}
		if err := fst.Put(ctx, h, []byte("x")); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, string(kind), name)
		if err := os.Truncate(p, 2<<30); err != nil {
			t.Fatal(err)
		}
		return h
	}
	id := digest.Of([]byte("some manifest")).String()
	for _, h := range []store.Handle{big(store.Manifest, id), big(store.Profile, id)} {
		c.asked = 0
		if _, err := store.ReadAll(ctx, c, h); !errors.Is(err, store.ErrTooLarge) {
			t.Fatalf("%s of 2 GB: %v", h, err)
		}
		if c.asked != 0 {
			t.Fatalf("%s: %d bytes asked for before refusing", h, c.asked)
		}
	}
	tag := big(store.Tag, "huge")
	c.asked = 0
	if _, err := store.ReadAll(ctx, c, tag); !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("tag of 2 GB: %v", err)
	}
	if c.asked > store.MaxSmallObject+1 {
		t.Fatalf("tag: %d bytes asked for", c.asked)
	}
	if _, err := store.ReadTag(ctx, c, "huge"); !errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("ReadTag of 2 GB: %v", err)
	}
	// Objects within their limit read whole.
	ok := store.Handle{Kind: store.Tag, Name: "fine"}
	want := []byte("image:" + id + "\n")
	fst.Put(ctx, ok, want)
	if got, err := store.ReadAll(ctx, c, ok); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("small tag: %q, %v", got, err)
	}
}
