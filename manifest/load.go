package manifest

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

// ImageXattr, read on an image's root directory in a mount, gives the image
// ID. The mount does not list it, so the tree's own xattrs stay exactly the
// packed ones.
const ImageXattr = "user.gpuwarm.image"

// FileXattr, read on a regular file in a mount, gives "IMAGE_ID/PATH": the
// image and the path in it whose bytes the file presents. It answers through
// bind mounts and overlays too (a container's root filesystem), so a process
// outside a container's mount namespace can tell which image bytes a path
// inside it holds. Not listed either.
const FileXattr = "user.gpuwarm.file"

// ParseFileXattr splits a FileXattr value.
func ParseFileXattr(v string) (digest.ID, string, error) {
	idStr, p, ok := strings.Cut(v, "/")
	if !ok {
		return digest.Zero, "", fmt.Errorf("%s %q: want IMAGE_ID/PATH", FileXattr, v)
	}
	id, err := digest.Parse(idStr)
	if err == nil && id.String() != idStr {
		err = errors.New("image ID not in canonical form")
	}
	if err != nil {
		return digest.Zero, "", fmt.Errorf("%s %q: %w", FileXattr, v, err)
	}
	if err := ValidPath(p); err != nil {
		return digest.Zero, "", fmt.Errorf("%s %q: %w", FileXattr, v, err)
	}
	return id, p, nil
}

// Observer is told of every chunk a read of an image touches, in the order
// they are touched: prefetch's recorder and replayer, and the restore's own
// recorder, see the mount's and the lazy-pages daemon's reads through it.
type Observer interface {
	Touch(img digest.ID, entry, chunk int, id digest.ID, size uint32)
}

// Load reads, verifies and indexes the manifest id from a store. A manifest
// whose bytes do not hash to id is refused: nothing unverified is served.
func Load(ctx context.Context, st store.Store, id digest.ID) (*Index, error) {
	b, err := store.ReadAll(ctx, st, store.H(store.Manifest, id))
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", id.Short(), err)
	}
	if got := digest.Of(b); got != id {
		return nil, fmt.Errorf("image %s: manifest in %s is corrupt (hashes to %s)", id.Short(), st.Location(), got.Short())
	}
	m, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", id.Short(), err)
	}
	return NewIndex(id, m), nil
}
