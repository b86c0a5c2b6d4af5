package store

import (
	"context"
	"errors"
	"fmt"
)

// The largest object of each kind gpuwarm reads. They are checked from the
// object's size before it is read, so a hostile or broken store cannot make
// a daemon (or gpuwarm ls) allocate more than this for one object.
const (
	MaxChunkObject    = 64<<20 + 1<<20 // a chunk of at most 64 MiB plus its codec's overhead
	MaxManifestObject = 256 << 20
	MaxProfileObject  = 256 << 20
	MaxSmallObject    = 64 << 10 // tags, profile references, locks
)

// MaxObjectSize returns the largest object of kind k that ReadAll reads.
func MaxObjectSize(k Kind) int64 {
	switch k {
	case Chunk:
		return MaxChunkObject
	case Manifest:
		return MaxManifestObject
	case Profile:
		return MaxProfileObject
	}
	return MaxSmallObject
}

// ErrTooLarge is returned (wrapped) by ReadAll for an object larger than its
// kind allows.
var ErrTooLarge = errors.New("object larger than its kind allows")

// ReadAll reads the whole object h, refusing an object larger than
// MaxObjectSize(h.Kind). Objects of the large kinds (manifests, profiles)
// are refused from their size before they are read; small ones and chunks
// are read at most one byte past their limit (one round trip, which a
// mount's tag lookups need).
func ReadAll(ctx context.Context, s Store, h Handle) ([]byte, error) {
	max := MaxObjectSize(h.Kind)
	if max > MaxChunkObject {
		info, err := s.Stat(ctx, h)
		if err != nil {
			return nil, err
		}
		if info.Size > max {
			return nil, fmt.Errorf("%s in %s is %d bytes, over the %d-byte limit for %s: %w; the store holds a corrupt or hostile object (delete it, or repack)",
				h, s.Location(), info.Size, max, h.Kind, ErrTooLarge)
		}
	}
	// Read at most one byte past the limit: an object that grew since Stat
	// (only tags and locks are mutable) is refused too.
	b, err := s.Get(ctx, h, 0, max+1)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s in %s is over the %d-byte limit for %s: %w", h, s.Location(), max, h.Kind, ErrTooLarge)
	}
	return b, nil
}
