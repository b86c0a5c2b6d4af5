// Package simstore wraps a store with the latency and bandwidth of a remote
// one, deterministically, so cold-worker behaviour can be tested and
// benchmarked without a network: every request's answer starts Latency
// after it is sent (requests overlap, as on a real link; the wrapped store's
// own read time is the remote server's and counts toward the Latency), and
// the bytes of all requests share one link of Bandwidth bytes per second.
package simstore

import (
	"context"
	"sync"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/store"
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

// wait blocks for one request of n bytes that was sent at start: its first
// byte arrives Latency after start (the backing store's own read counts as
// the remote server's time, so it overlaps the latency instead of adding
// to it, unless it took longer), and its bytes then queue on the link.
func (s *Store) wait(ctx context.Context, start time.Time, n int) error {
	ready := start.Add(s.Latency)
	if now := time.Now(); now.After(ready) {
		ready = now
	}
	s.mu.Lock()
	s.Requests++
	s.Bytes += int64(n)
	done := ready
	if s.Bandwidth > 0 {
		// The response's bytes go on the link once it is ready, behind
		// whatever is already queued.
		begin := ready
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
	start := time.Now()
	b, err := s.Store.Get(ctx, h, off, n)
	if err != nil {
		return nil, err
	}
	if err := s.wait(ctx, start, len(b)); err != nil {
		return nil, err
	}
	return b, nil
}

func (s *Store) GetInto(ctx context.Context, h store.Handle, bufs ...[]byte) (int, error) {
	start := time.Now()
	n, err := store.GetInto(ctx, s.Store, h, bufs...)
	if err != nil {
		return n, err
	}
	if err := s.wait(ctx, start, n); err != nil {
		return 0, err
	}
	return n, nil
}

func (s *Store) Stat(ctx context.Context, h store.Handle) (store.Info, error) {
	start := time.Now()
	info, err := s.Store.Stat(ctx, h)
	if werr := s.wait(ctx, start, 0); werr != nil {
		return store.Info{}, werr
	}
	return info, err
}
