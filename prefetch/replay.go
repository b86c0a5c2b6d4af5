package prefetch

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// ReplayOptions bound a replay.
type ReplayOptions struct {
	// Workers is how many chunks are fetched at once (default 32: a remote
	// store is latency-bound, 2 ms to 50 ms a request). Fetches
	// run at prefetch priority, so demand reads keep their reserved slots.
	Workers int
	// Ahead bounds the bytes fetched beyond the reader's position (default
	// 256 MiB): far enough to hide the store's latency, not so far that
	// prefetched chunks evict ones about to be read.
	Ahead  int64
	Logger *slog.Logger
	// OnReady, if set, is told of each profile chunk the replay fetched or
	// found cached (a fusefs.Warmer's Ready), from the replay's goroutines;
	// true means it put the chunk into the kernel's page cache (Warmed).
	OnReady func(id digest.ID) bool
}

// Replayer streams a profile's chunks into the cache ahead of the reader.
type Replayer struct {
	p     *Profile
	c     *cache.Cache
	opt   ReplayOptions
	index map[digest.ID]int
	offs  []int64 // cumulative bytes before entry i

	mu     sync.Mutex
	cond   *sync.Cond
	reader int // one past the furthest profile entry demand has touched
	done   bool

	Fetched, Hits, Misses, Touched atomic.Int64
	// Warmed counts chunks put into the kernel's page cache: the program's
	// reads of those are answered by the kernel, unseen (in neither
	// Touched nor Hits).
	Warmed   atomic.Int64
	maxAhead atomic.Int64
	finished chan struct{}
}

// Replay starts streaming p into c; it stops at the profile's end or when
// ctx ends.
func Replay(ctx context.Context, c *cache.Cache, p *Profile, opt ReplayOptions) *Replayer {
	if opt.Workers <= 0 {
		opt.Workers = 32
	}
	if opt.Ahead <= 0 {
		opt.Ahead = 256 << 20
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	r := &Replayer{p: p, c: c, opt: opt, index: make(map[digest.ID]int, len(p.Entries)),
		offs: make([]int64, len(p.Entries)+1), finished: make(chan struct{})}
	r.cond = sync.NewCond(&r.mu)
	for i, e := range p.Entries {
		r.index[e.ID] = i
		r.offs[i+1] = r.offs[i] + int64(e.Size)
	}
	go func() { <-ctx.Done(); r.mu.Lock(); r.done = true; r.cond.Broadcast(); r.mu.Unlock() }()
	go r.run(ctx)
	return r
}

func (r *Replayer) run(ctx context.Context) {
	defer close(r.finished)
	start := time.Now()
	defer func() {
		st := r.Stats()
		r.opt.Logger.Info("prefetch profile replayed", "image", r.p.Image.Short(), "seconds", time.Since(start).Seconds(),
			"chunks", st.Chunks, "fetched", st.Fetched, "touched", st.Touched, "hits", st.Hits, "misses", st.Misses)
	}()
	sem := make(chan struct{}, r.opt.Workers)
	var wg sync.WaitGroup
	cursor := 0
	for {
		r.mu.Lock()
		// Follow the reader when it runs ahead of (or diverges from) the
		// profile; wait while we are Ahead bytes in front of it.
		for !r.done && cursor < len(r.p.Entries) && r.offs[cursor]-r.offs[min(r.reader, cursor)] >= r.opt.Ahead {
			r.cond.Wait()
		}
		if r.reader > cursor {
			cursor = r.reader
		}
		stop := r.done || cursor >= len(r.p.Entries)
		if !stop {
			if a := r.offs[cursor+1] - r.offs[min(r.reader, cursor)]; a > r.maxAhead.Load() {
				r.maxAhead.Store(a)
			}
		}
		r.mu.Unlock()
		if stop {
			break
		}
		e := r.p.Entries[cursor]
		cursor++
		if r.c.Contains(e.ID) {
			r.ready(e.ID)
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := r.c.Fetch(ctx, e.ID, e.Size, cache.Prefetch); err != nil {
				if ctx.Err() == nil {
					r.opt.Logger.Debug("prefetch failed", "chunk", e.ID.Short(), "err", err)
				}
				return
			}
			r.Fetched.Add(1)
			r.ready(e.ID)
		}()
	}
	wg.Wait()
}

func (r *Replayer) ready(id digest.ID) {
	if r.opt.OnReady != nil && r.opt.OnReady(id) {
		r.WarmedChunk(id)
	}
}

// WarmedChunk tells the replayer chunk id went into the kernel's page
// cache. There it is as good as read: the program will not ask the daemon
// for it (so no Touch will say it moved on), and it need not stay in the
// memory tier. The window moves past it.
func (r *Replayer) WarmedChunk(id digest.ID) {
	r.Warmed.Add(1)
	r.advance(id)
}

// advance moves the reader's position past chunk id.
func (r *Replayer) advance(id digest.ID) {
	i, ok := r.index[id]
	if !ok {
		return
	}
	r.mu.Lock()
	if i+1 > r.reader {
		r.reader = i + 1
		r.cond.Broadcast()
	}
	r.mu.Unlock()
}

// Touch tells the replayer a reader touched a chunk (manifest.Observer).
func (r *Replayer) Touch(img digest.ID, entry, idx int, id digest.ID, size uint32) {
	if img != r.p.Image {
		return
	}
	r.Touched.Add(1)
	if r.c.Contains(id) {
		r.Hits.Add(1)
	} else {
		r.Misses.Add(1)
	}
	r.advance(id)
}

// Wait waits for the replay to finish.
func (r *Replayer) Wait() { <-r.finished }

// MaxAhead is the most bytes the replay was ever ahead of the reader.
func (r *Replayer) MaxAhead() int64 { return r.maxAhead.Load() }

// Stats summarizes the replay.
type Stats struct {
	Chunks  int64   `json:"chunks"`  // in the profile
	Fetched int64   `json:"fetched"` // brought in ahead of demand
	Touched int64   `json:"touched"` // read by the program
	Hits    int64   `json:"hits"`    // read after the replay brought them in
	Misses  int64   `json:"misses"`  // read before: the program waited
	Warmed  int64   `json:"warmed"`  // put into the kernel's page cache ahead of the program
	HitRate float64 `json:"hit_rate"`
}

// Stats returns the replay's counters.
func (r *Replayer) Stats() Stats {
	s := Stats{Chunks: int64(len(r.p.Entries)), Fetched: r.Fetched.Load(), Touched: r.Touched.Load(), Hits: r.Hits.Load(), Misses: r.Misses.Load(), Warmed: r.Warmed.Load()}
	if s.Touched > 0 {
		s.HitRate = float64(s.Hits) / float64(s.Touched)
	}
	return s
}

// ReplayStats is Stats for the mount's .stats file.
func (r *Replayer) ReplayStats() any { return r.Stats() }
