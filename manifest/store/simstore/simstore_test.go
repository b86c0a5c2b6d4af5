package simstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
	"github.com/gpuwarm/gpuwarm/manifest/store/storetest"
)

func TestConformance(t *testing.T) {
	fs, _ := filestore.Open(t.TempDir())
	storetest.Run(t, New(fs, time.Millisecond, 1e9))
}

func TestLatencyAndBandwidth(t *testing.T) {
	fs, _ := filestore.Open(t.TempDir())
	data := make([]byte, 1<<20)
	h := store.H(store.Chunk, digest.Of(data))
	fs.Put(context.Background(), h, data)
	s := New(fs, 20*time.Millisecond, 50e6) // 1 MiB takes 21ms on the link
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); s.Get(context.Background(), h, 0, -1) }()
	}
	wg.Wait()
	el := time.Since(start)
	// Latency overlaps; the 4 MiB share the link: >= 20ms + 4*21ms.
	if el < 100*time.Millisecond || el > 400*time.Millisecond {
		t.Fatalf("4 parallel 1 MiB gets took %v, want about 104ms", el)
	}
}

// slowStore takes d for every Get, like a server reading its disk.
type slowStore struct {
	store.Store
	d time.Duration
}

func (s slowStore) Get(ctx context.Context, h store.Handle, off, n int64) ([]byte, error) {
	time.Sleep(s.d)
	return s.Store.Get(ctx, h, off, n)
}

// TestBackingTimeIsServerTime: the wrapped store's own time is part of the
// simulated latency (a remote server reads its disk within its latency),
// and only a backing read slower than the latency delays the answer.
func TestBackingTimeIsServerTime(t *testing.T) {
	fs, _ := filestore.Open(t.TempDir())
	data := []byte("chunk")
	h := store.H(store.Chunk, digest.Of(data))
	fs.Put(context.Background(), h, data)
	for _, c := range []struct{ backing, latency, lo, hi time.Duration }{
		{10 * time.Millisecond, 40 * time.Millisecond, 40 * time.Millisecond, 48 * time.Millisecond},
		{60 * time.Millisecond, 20 * time.Millisecond, 60 * time.Millisecond, 75 * time.Millisecond},
	} {
		s := New(slowStore{fs, c.backing}, c.latency, 0)
		// Every get takes at least lo; the fastest of three at most hi (a
		// loaded machine only ever adds time, while latency and backing
		// added up would exceed hi every time).
		best := time.Hour
		for i := 0; i < 3; i++ {
			start := time.Now()
			if _, err := s.Get(context.Background(), h, 0, -1); err != nil {
				t.Fatal(err)
			}
			el := time.Since(start)
			if el < c.lo {
				t.Errorf("backing %v, latency %v: get took %v, want at least %v", c.backing, c.latency, el, c.lo)
			}
			best = min(best, el)
		}
		if best > c.hi {
			t.Errorf("backing %v, latency %v: the fastest of three gets took %v, want at most %v", c.backing, c.latency, best, c.hi)
		}
	}
}
