// Package simstore wraps a store with the latency and bandwidth of a remote
// one, deterministically, so cold-worker behaviour can be tested and
// benchmarked without a network: every request waits Latency (requests
// overlap, as on a real link), and the bytes of all requests share one link
// of Bandwidth bytes per second.
package simstore

import (
	"context"
	"sync"
	"time"

	"github.com/gpuwarm/gpuwarm/store"
)

// Store is a simulated remote store.
type Store struct {
	store.Store
	Latency   time.Duration
	Bandwidth float64 // bytes per second; 0 = unlimited

	mu       sync.Mutex
	linkFree time.Time // when the link has sent everything queued so far
	Requests int64
	Bytes    int64
}

// New wraps s.
func New(s store.Store, latency time.Duration, bandwidth float64) *Store {
	return &Store{Store: s, Latency: latency, Bandwidth: bandwidth}
}

func (s *Store) Location() string { return "sim+" + s.Store.Location() }

// wait blocks for one request of n bytes.
func (s *Store) wait(ctx context.Context, n int) error {
	start := time.Now()
	s.mu.Lock()
	s.Requests++
	s.Bytes += int64(n)
	done := start.Add(s.Latency)
	if s.Bandwidth > 0 {
		// The response's bytes go on the link after the latency, behind
		// whatever is already queued.
		begin := done
		if s.linkFree.After(begin) {
			begin = s.linkFree
		}
		done = begin.Add(time.Duration(float64(n) / s.Bandwidth * float64(time.Second)))
		s.linkFree = done
	}
	s.mu.Unlock()
	t := time.NewTimer(time.Until(done))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Store) Get(ctx context.Context, h store.Handle, off, n int64) ([]byte, error) {
	b, err := s.Store.Get(ctx, h, off, n)
	if err != nil {
		return nil, err
	}
	if err := s.wait(ctx, len(b)); err != nil {
		return nil, err
	}
	return b, nil
}

func (s *Store) Stat(ctx context.Context, h store.Handle) (store.Info, error) {
	if err := s.wait(ctx, 0); err != nil {
		return store.Info{}, err
	}
	return s.Store.Stat(ctx, h)
}
