package simstore

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/digest"
	"github.com/gpuwarm/gpuwarm/store"
	"github.com/gpuwarm/gpuwarm/store/filestore"
	"github.com/gpuwarm/gpuwarm/store/storetest"
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
