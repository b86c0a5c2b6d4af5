package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// A tag object holds "<kind>:<hex digest>\n", so that a tag may name an image
// of any kind and the format can grow.

// SetTag points tag name at image id.
func SetTag(ctx context.Context, s Store, name string, id digest.ID) error {
	return s.Put(ctx, Handle{Kind: Tag, Name: name}, []byte("image:"+id.String()+"\n"))
}

// ResolveTag returns the image a tag names. A 64-digit hex string is taken
// as an image ID directly.
func ResolveTag(ctx context.Context, s Store, name string) (digest.ID, error) {
	if id, err := digest.Parse(name); err == nil {
		return id, nil
	}
	id, err := ReadTag(ctx, s, name)
	if errors.Is(err, ErrNotFound) {
		return digest.Zero, fmt.Errorf("no image tagged %q in %s (gpuwarm ls lists the tags): %w", name, s.Location(), err)
	}
	return id, err
}

// ReadTag reads and decodes one tag object; a missing tag is ErrNotFound.
func ReadTag(ctx context.Context, s Store, name string) (digest.ID, error) {
	b, err := ReadAll(ctx, s, Handle{Kind: Tag, Name: name})
	if errors.Is(err, ErrNotFound) {
		return digest.Zero, err
	}
	if err != nil {
		return digest.Zero, fmt.Errorf("read tag %q: %w", name, err)
	}
	id, err := ParseTag(b)
	if err != nil {
		return digest.Zero, fmt.Errorf("tag %q in %s: %w", name, s.Location(), err)
	}
	return id, nil
}

// ParseTag decodes a tag object.
func ParseTag(b []byte) (digest.ID, error) {
	s := strings.TrimSpace(string(b))
	hex, ok := strings.CutPrefix(s, "image:")
	if !ok {
		return digest.Zero, fmt.Errorf("tag object %.40q is not of the form image:<digest>", s)
	}
	return digest.Parse(hex)
}

// tagReads bounds the tag objects Tags reads at once.
const tagReads = 16

// Tags lists every tag with its image, and fails if any tag cannot be read
// or parsed: gc, which must not sweep what such a tag may need, uses it.
func Tags(ctx context.Context, s Store) (map[string]digest.ID, error) {
	tags, bad, err := ListTags(ctx, s)
	if err != nil {
		return nil, err
	}
	for _, e := range bad {
		return nil, e
	}
	return tags, nil
}

// ListTags lists every tag with its image; tags whose objects cannot be read
// or parsed come back in bad with the reason, for callers that go on
// without them (a mount's listing, gpuwarm ls). err is a failure to list.
// The tag objects are read concurrently: one at a time, a store of 300 tags
// 5 ms away took 1.5 s.
func ListTags(ctx context.Context, s Store) (tags map[string]digest.ID, bad map[string]error, err error) {
	var names []string
	if err := s.List(ctx, Tag, func(in Info) error {
		names = append(names, in.Name)
		return nil
	}); err != nil {
		return nil, nil, err
	}
	tags = make(map[string]digest.ID, len(names))
	bad = map[string]error{}
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(tagReads)
	for _, name := range names {
		g.Go(func() error {
			id, err := ReadTag(ctx, s, name)
			if errors.Is(err, ErrNotFound) {
				return nil // deleted meanwhile
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				bad[name] = err
			} else {
				tags[name] = id
			}
			return nil
		})
	}
	g.Wait()
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	return tags, bad, nil
}
