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
	b, err := s.Get(ctx, Handle{Kind: Tag, Name: name}, 0, -1)
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

// Tags lists every tag with its image. The tag objects are read
// concurrently: one at a time, a store of 300 tags 5 ms away took 1.5 s.
func Tags(ctx context.Context, s Store) (map[string]digest.ID, error) {
	var names []string
	if err := s.List(ctx, Tag, func(in Info) error {
		names = append(names, in.Name)
		return nil
	}); err != nil {
		return nil, err
	}
	out := make(map[string]digest.ID, len(names))
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(tagReads)
	for _, name := range names {
		g.Go(func() error {
			id, err := ReadTag(gctx, s, name)
			if errors.Is(err, ErrNotFound) {
				return nil // deleted meanwhile
			}
			if err != nil {
				return err
			}
			mu.Lock()
			out[name] = id
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}
