// Package store defines the remote tier: where chunks, manifests, profiles
// and tags live, shared by every worker of a fleet.
//
// The contract is deliberately small so that a directory, S3, or a wrapper
// (latency simulation, retries) can implement it:
//
//   - Objects are named by a Handle: a Kind and a Name. For content kinds
//     (Chunk, Manifest, Profile) the name is the lowercase hex SHA-256 of the
//     object's plaintext, so an object never changes once written.
//   - Put is atomic: readers see the whole object or nothing. Putting a
//     content object that already exists is a no-op. Tags and locks are
//     mutable and a Put replaces them atomically. Put does not keep data
//     once it returns: callers reuse their buffers.
//   - Get reads length bytes from offset off (length < 0: to the end). A
//     range past the end is clipped; a missing object is ErrNotFound.
//   - A store does not verify contents: callers do (chunk.Decode,
//     manifest.Decode), so a store can never make a worker serve bad bytes.
//   - Implementations are safe for concurrent use and honour ctx.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// Kind is a namespace of objects.
type Kind string

const (
	Chunk    Kind = "chunks"
	Manifest Kind = "manifests"
	Profile  Kind = "profiles"
	Tag      Kind = "tags"
	Lock     Kind = "locks"
	// ProfileRef objects are named by an image ID and hold the digest of
	// that image's current prefetch profile; recording again replaces them.
	ProfileRef Kind = "profilerefs"
)

// Kinds lists every kind, for listing and conformance tests.
var Kinds = []Kind{Chunk, Manifest, Profile, Tag, Lock, ProfileRef}

// Content reports whether objects of kind k are named by their digest.
func (k Kind) Content() bool { return k == Chunk || k == Manifest || k == Profile }

// Valid reports whether k is one of Kinds.
func (k Kind) Valid() bool {
	for _, v := range Kinds {
		if k == v {
			return true
		}
	}
	return false
}

// Handle names one object.
type Handle struct {
	Kind Kind
	Name string
}

// H returns the handle of a content object.
func H(k Kind, id digest.ID) Handle { return Handle{Kind: k, Name: id.String()} }

func (h Handle) String() string { return string(h.Kind) + "/" + h.Name }

var errInvalidHandle = errors.New("invalid object name")

// Validate checks that h is a well-formed name, so that no backend ever
// builds a path or key from hostile input.
func (h Handle) Validate() error {
	if err := h.validate(); err != nil {
		return fmt.Errorf("%w: %w", errInvalidHandle, err)
	}
	return nil
}

func (h Handle) validate() error {
	switch {
	case h.Kind.Content() || h.Kind == ProfileRef:
		if _, err := digest.Parse(h.Name); err != nil || h.Name != lower(h.Name) {
			return fmt.Errorf("store: %s: content objects are named by lowercase hex digest", h)
		}
	case h.Kind == Tag || h.Kind == Lock:
		if h.Name == "" || len(h.Name) > 128 || h.Name[0] == '.' {
			return fmt.Errorf("store: bad %s name %q", h.Kind, h.Name)
		}
		for _, r := range h.Name {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
				return fmt.Errorf("store: bad %s name %q", h.Kind, h.Name)
			}
		}
	default:
		return fmt.Errorf("store: unknown kind %q", h.Kind)
	}
	return nil
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'F' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// Info describes a listed object.
type Info struct {
	Name    string
	Size    int64
	ModTime time.Time
}

// ErrNotFound is returned (wrapped) for a missing object.
var ErrNotFound = errors.New("not found")

// Store is the remote tier. See the package documentation for its rules.
type Store interface {
	// Location is a URL-like description for logs and errors.
	Location() string
	Put(ctx context.Context, h Handle, data []byte) error
	Get(ctx context.Context, h Handle, off, length int64) ([]byte, error)
	Stat(ctx context.Context, h Handle) (Info, error)
	List(ctx context.Context, k Kind, fn func(Info) error) error
	Delete(ctx context.Context, h Handle) error
	Close() error
}

// GetIntoer is implemented by stores that can read a whole object straight
// into memory the caller owns: a cache reading chunks into its own buffers
// then needs no fresh buffer per object and no copy out of it.
type GetIntoer interface {
	// GetInto reads the whole object into bufs, filling them in order (a
	// scatter read), and returns its length. An object longer than the
	// buffers together fills them and returns ErrShortBuffer (wrapped); a
	// missing object is ErrNotFound.
	GetInto(ctx context.Context, h Handle, bufs ...[]byte) (int, error)
}

// ErrShortBuffer is returned (wrapped) by GetInto for an object longer than
// the buffers.
var ErrShortBuffer = errors.New("object longer than the buffers")

// GetInto reads the whole object h into bufs through s's GetInto when it
// has one, else through Get (and a copy).
func GetInto(ctx context.Context, s Store, h Handle, bufs ...[]byte) (int, error) {
	if g, ok := s.(GetIntoer); ok {
		return g.GetInto(ctx, h, bufs...)
	}
	total := 0
	for _, d := range bufs {
		total += len(d)
	}
	b, err := s.Get(ctx, h, 0, int64(total)+1) // never more than fits, and one byte to tell
	if err != nil {
		return 0, err
	}
	n := scatter(b, bufs)
	if n < len(b) {
		return n, fmt.Errorf("get %s: %d bytes: %w", h, len(b), ErrShortBuffer)
	}
	return n, nil
}

// scatter copies b into bufs in order and returns how many bytes it copied.
func scatter(b []byte, bufs [][]byte) int {
	n := 0
	for _, d := range bufs {
		k := copy(d, b[n:])
		n += k
		if n == len(b) {
			break
		}
	}
	return n
}

// Has reports whether the object exists.
func Has(ctx context.Context, s Store, h Handle) (bool, error) {
	_, err := s.Stat(ctx, h)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}
