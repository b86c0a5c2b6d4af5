// Package storetest is the conformance suite every store backend runs.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

// Run checks s against the store contract. s should be empty.
func Run(t *testing.T, s store.Store) {
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789"), 100_000) // 1 MB
	h := store.H(store.Chunk, digest.Of(data))

	t.Run("missing", func(t *testing.T) {
		if _, err := s.Get(ctx, h, 0, -1); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Get of missing object: want ErrNotFound, got %v", err)
		}
		if _, err := s.Stat(ctx, h); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Stat of missing object: want ErrNotFound, got %v", err)
		}
		if ok, err := store.Has(ctx, s, h); ok || err != nil {
			t.Fatalf("Has of missing object = %v, %v", ok, err)
		}
	})

	t.Run("get-into", func(t *testing.T) {
		if err := s.Put(ctx, h, data); err != nil {
			t.Fatal(err)
		}
		dst := make([]byte, len(data)+100)
		n, err := store.GetInto(ctx, s, h, dst)
		if err != nil || n != len(data) || !bytes.Equal(dst[:n], data) {
			t.Fatalf("GetInto = %d bytes, %v", n, err)
		}
		// Scattered: one byte, then exactly the rest.
		one, rest := make([]byte, 1), make([]byte, len(data)-1)
		if n, err := store.GetInto(ctx, s, h, one, rest); err != nil || n != len(data) || one[0] != data[0] || !bytes.Equal(rest, data[1:]) {
			t.Fatalf("GetInto into two buffers = %d, %v", n, err)
		}
		if _, err := store.GetInto(ctx, s, h, one, rest[:len(rest)-1]); !errors.Is(err, store.ErrShortBuffer) {
			t.Fatalf("GetInto into short buffers: want ErrShortBuffer, got %v", err)
		}
		missing := store.H(store.Chunk, digest.Of([]byte("no such object")))
		if _, err := store.GetInto(ctx, s, missing, dst); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetInto of a missing object: want ErrNotFound, got %v", err)
		}
	})

	t.Run("put-get", func(t *testing.T) {
		if err := s.Put(ctx, h, data); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, h, 0, -1)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get = %d bytes, %v", len(got), err)
		}
		info, err := s.Stat(ctx, h)
		if err != nil || info.Size != int64(len(data)) {
			t.Fatalf("Stat = %+v, %v", info, err)
		}
		// A second put of existing content is a no-op.
		if err := s.Put(ctx, h, data); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("ranges", func(t *testing.T) {
		for _, r := range [][2]int64{{0, 10}, {5, 1}, {999_990, 10}, {999_990, 100}, {500_000, -1}, {1_000_000, 5}, {0, 0}} {
			got, err := s.Get(ctx, h, r[0], r[1])
			if err != nil {
				t.Fatalf("Get(%d,%d): %v", r[0], r[1], err)
			}
			end := int64(len(data))
			if r[1] >= 0 && r[0]+r[1] < end {
				end = r[0] + r[1]
			}
			if !bytes.Equal(got, data[r[0]:end]) {
				t.Fatalf("Get(%d,%d) = %d bytes, want %d", r[0], r[1], len(got), end-r[0])
			}
		}
	})

	t.Run("empty-object", func(t *testing.T) {
		e := store.H(store.Manifest, digest.Of(nil))
		if err := s.Put(ctx, e, nil); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(ctx, e, 0, -1)
		if err != nil || len(got) != 0 {
			t.Fatalf("Get empty = %d, %v", len(got), err)
		}
		if err := s.Delete(ctx, e); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("bad-names", func(t *testing.T) {
		for _, bad := range []store.Handle{
			{Kind: store.Chunk, Name: "../../etc/passwd"},
			{Kind: store.Chunk, Name: "ABCD"},
			{Kind: store.Tag, Name: "a/b"},
			{Kind: store.Tag, Name: ".."},
			{Kind: "other", Name: "x"},
		} {
			if err := s.Put(ctx, bad, []byte("x")); err == nil {
				t.Errorf("Put(%v) accepted", bad)
			}
			if _, err := s.Get(ctx, bad, 0, -1); err == nil {
				t.Errorf("Get(%v) accepted", bad)
			}
		}
	})

	t.Run("tags", func(t *testing.T) {
		a, b := digest.Of([]byte("a")), digest.Of([]byte("b"))
		if err := store.SetTag(ctx, s, "app", a); err != nil {
			t.Fatal(err)
		}
		if err := store.SetTag(ctx, s, "app", b); err != nil {
			t.Fatal(err)
		}
		got, err := store.ResolveTag(ctx, s, "app")
		if err != nil || got != b {
			t.Fatalf("tag = %v, %v; want the second value", got, err)
		}
		if _, err := store.ResolveTag(ctx, s, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("missing tag: %v", err)
		}
		tags, err := store.Tags(ctx, s)
		if err != nil || len(tags) != 1 || tags["app"] != b {
			t.Fatalf("Tags = %v, %v", tags, err)
		}
	})

	t.Run("list-delete", func(t *testing.T) {
		var ids []digest.ID
		for i := 0; i < 5; i++ {
			d := []byte(fmt.Sprint("object ", i))
			ids = append(ids, digest.Of(d))
			if err := s.Put(ctx, store.H(store.Profile, digest.Of(d)), d); err != nil {
				t.Fatal(err)
			}
		}
		seen := map[string]int64{}
		if err := s.List(ctx, store.Profile, func(in store.Info) error { seen[in.Name] = in.Size; return nil }); err != nil {
			t.Fatal(err)
		}
		if len(seen) != 5 {
			t.Fatalf("listed %d profiles, want 5: %v", len(seen), seen)
		}
		for _, id := range ids {
			if _, ok := seen[id.String()]; !ok {
				t.Fatalf("%s not listed", id.Short())
			}
			if err := s.Delete(ctx, store.H(store.Profile, id)); err != nil {
				t.Fatal(err)
			}
		}
		n := 0
		s.List(ctx, store.Profile, func(store.Info) error { n++; return nil })
		if n != 0 {
			t.Fatalf("%d profiles left after delete", n)
		}
		if err := s.Delete(ctx, store.H(store.Profile, ids[0])); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("Delete of missing: want ErrNotFound, got %v", err)
		}
		// Listing stops at the callback's error.
		stop := errors.New("stop")
		if err := s.List(ctx, store.Chunk, func(store.Info) error { return stop }); !errors.Is(err, stop) {
			t.Fatalf("List did not return the callback's error: %v", err)
		}
	})

	t.Run("concurrent-puts", func(t *testing.T) {
		d := bytes.Repeat([]byte{7}, 300_000)
		ch := store.H(store.Chunk, digest.Of(d))
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.Put(ctx, ch, d); err != nil {
					errs <- err
					return
				}
				got, err := s.Get(ctx, ch, 0, -1)
				if err != nil || !bytes.Equal(got, d) {
					errs <- fmt.Errorf("read back %d bytes, %v", len(got), err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	})

	t.Run("canceled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.Get(cctx, h, 0, -1); err == nil {
			t.Fatal("Get with a canceled context succeeded")
		}
	})

	t.Run("batch", func(t *testing.T) {
		// Objects put through a batch all exist once Commit returns, and
		// read back whole; an aborted batch leaves nothing behind.
		b := store.NewBatch(s)
		var hs []store.Handle
		var ds [][]byte
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := 0; i < 12; i++ {
			d := bytes.Repeat([]byte{byte(i), byte(i >> 8), 'b'}, 40_000+i*7_001)
			h := store.H(store.Chunk, digest.Of(d))
			hs, ds = append(hs, h), append(ds, d)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := b.Put(ctx, h, d); err != nil {
					mu.Lock()
					t.Error(err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		// Existing content in a batch is a no-op, as with Put.
		if err := b.Put(ctx, h, data); err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for i, h := range hs {
			got, err := s.Get(ctx, h, 0, -1)
			if err != nil || !bytes.Equal(got, ds[i]) {
				t.Fatalf("object %d after Commit: %d bytes, %v", i, len(got), err)
			}
		}
		if err := b.Commit(ctx); err != nil {
			t.Fatalf("an empty Commit: %v", err)
		}
		a := store.NewBatch(s)
		gone := bytes.Repeat([]byte("aborted"), 30_000)
		gh := store.H(store.Chunk, digest.Of(gone))
		if err := a.Put(ctx, gh, gone); err != nil {
			t.Fatal(err)
		}
		a.Abort()
		if _, ok := s.(store.Batcher); ok {
			if has, err := store.Has(ctx, s, gh); has || err != nil {
				t.Fatalf("an aborted batch's object exists: %v %v", has, err)
			}
		}
	})
}
