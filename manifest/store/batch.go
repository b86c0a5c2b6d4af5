package store

import "context"

// Batcher is implemented by stores that can make many content objects
// durable at once for far less than one Put each: a file store syncs its
// filesystem once per batch instead of every file (packing a Python
// standard library, 46,000 files, spent most of its time in fsync).
type Batcher interface {
	Batch() Batch
}

// Batch collects Puts of content objects (chunks, manifests, profiles).
//
// Rules: until Commit returns nil, none of the batch's objects is promised
// to exist (readers may or may not see them); once it has, all of them do,
// durably. Abort discards what no Commit made visible. Put and Commit are
// safe to call concurrently: a Put that returned before Commit started is
// in that commit. Mutable objects (tags, locks) bypass the batch: a Put of
// one behaves as Store.Put. A Batch is not reused after Abort.
type Batch interface {
	Put(ctx context.Context, h Handle, data []byte) error
	Commit(ctx context.Context) error
	Abort()
}

// NewBatch returns s's own batch when it has one, else a batch whose Puts
// go straight to s (each durable on return, Commit a no-op).
func NewBatch(s Store) Batch {
	if b, ok := s.(Batcher); ok {
		return b.Batch()
	}
	return directBatch{s}
}

type directBatch struct{ s Store }

func (d directBatch) Put(ctx context.Context, h Handle, data []byte) error {
	return d.s.Put(ctx, h, data)
}
func (directBatch) Commit(context.Context) error { return nil }
func (directBatch) Abort()                       {}
