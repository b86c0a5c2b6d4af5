// Package digest defines the content identity used everywhere in gpuwarm.
//
// A chunk, a manifest and a profile are all named by the SHA-256 of their
// (uncompressed) bytes. Caches are shared between tenants on a worker, so
// identity must resist crafted collisions: a fast non-cryptographic hash
// would let one tenant poison another's files. xxhash is used only as the
// checksum of bytes already inside the worker-local disk cache.
package digest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// Size is the length of an ID in bytes.
const Size = sha256.Size

// ID is the SHA-256 digest of some content.
type ID [Size]byte

// Zero is the zero ID; no content hashes to it in practice and it is used
// as "none".
var Zero ID

// Of returns the ID of b.
func Of(b []byte) ID { return sha256.Sum256(b) }

// String returns the lowercase hex form.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 12 hex digits, for humans.
func (id ID) Short() string { return id.String()[:12] }

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == Zero }

// Parse parses the 64-digit lowercase or uppercase hex form.
func Parse(s string) (ID, error) {
	var id ID
	if len(s) != 2*Size {
		return id, fmt.Errorf("digest %q: want %d hex digits, got %d", s, 2*Size, len(s))
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("digest %q: %w", s, err)
	}
	return id, nil
}

// MarshalText implements encoding.TextMarshaler.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (id *ID) UnmarshalText(b []byte) error {
	p, err := Parse(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}
