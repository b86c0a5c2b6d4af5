package store

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"
)

// ErrPermanent marks errors that no retry can fix (bad credentials, a
// missing bucket). Backends wrap such errors with it.
var ErrPermanent = errors.New("permanent store error")

// RetryPolicy says how a retrying store backs off.
type RetryPolicy struct {
	Attempts int           // total tries, default 5
	Base     time.Duration // first backoff, default 100ms
	Max      time.Duration // cap on one backoff, default 5s
	Logger   *slog.Logger
}

// retryStore retries transient failures with exponential backoff and full
// jitter. It never retries ErrNotFound, ErrPermanent, invalid handles or a
// done context.
type retryStore struct {
	Store
	p RetryPolicy
}

// WithRetry wraps s so transient failures are retried.
func WithRetry(s Store, p RetryPolicy) Store {
	if p.Attempts <= 0 {
		p.Attempts = 5
	}
	if p.Base <= 0 {
		p.Base = 100 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 5 * time.Second
	}
	if p.Logger == nil {
		p.Logger = slog.Default()
	}
	return &retryStore{Store: s, p: p}
}

// Retryable reports whether err may go away on retry.
func Retryable(err error) bool {
	return err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrPermanent) &&
		!errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) &&
		!errors.Is(err, errInvalidHandle)
}

func (r *retryStore) do(ctx context.Context, op string, f func() error) error {
	var err error
	for i := 0; i < r.p.Attempts; i++ {
		if err = f(); !Retryable(err) {
			return err
		}
		if i == r.p.Attempts-1 || ctx.Err() != nil {
			break
		}
		d := min(r.p.Max, r.p.Base<<i)
		d = time.Duration(rand.Int64N(int64(d)) + 1)
		r.p.Logger.Warn("store request failed; retrying", "op", op, "store", r.Store.Location(), "attempt", i+1, "backoff", d, "err", err)
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return err
		}
	}
	return err
}

func (r *retryStore) Put(ctx context.Context, h Handle, data []byte) error {
	return r.do(ctx, "put", func() error { return r.Store.Put(ctx, h, data) })
}

func (r *retryStore) Get(ctx context.Context, h Handle, off, n int64) ([]byte, error) {
	var b []byte
	err := r.do(ctx, "get", func() (err error) { b, err = r.Store.Get(ctx, h, off, n); return })
	return b, err
}

func (r *retryStore) GetInto(ctx context.Context, h Handle, bufs ...[]byte) (int, error) {
	var n int
	err := r.do(ctx, "get", func() (err error) { n, err = GetInto(ctx, r.Store, h, bufs...); return })
	return n, err
}

func (r *retryStore) Stat(ctx context.Context, h Handle) (Info, error) {
	var in Info
	err := r.do(ctx, "stat", func() (err error) { in, err = r.Store.Stat(ctx, h); return })
	return in, err
}

func (r *retryStore) List(ctx context.Context, k Kind, fn func(Info) error) error {
	// A listing is retried only until the callback has seen something.
	seen := false
	return r.do(ctx, "list", func() error {
		if seen {
			return r.Store.List(ctx, k, fn)
		}
		err := r.Store.List(ctx, k, func(in Info) error { seen = true; return fn(in) })
		if seen && err != nil && Retryable(err) {
			return errors.Join(err, ErrPermanent) // partial listing: don't repeat callbacks
		}
		return err
	})
}

func (r *retryStore) Delete(ctx context.Context, h Handle) error {
	return r.do(ctx, "delete", func() error { return r.Store.Delete(ctx, h) })
}
