// Package prefetch records the order in which a boot touches an image's
// chunks and replays it on later boots, streaming chunks into the block
// cache ahead of demand.
//
// A profile lists an image's chunks in typical first-touch order. It is
// stored content-addressed (store.Profile) and found through the image's
// profile reference (store.ProfileRef, named by the image ID). Recording
// again merges: each chunk's first-touch time is averaged over the runs
// that touched it, and chunks seen in fewer than half of the runs move to
// the end. The encoding is versioned and canonical, and Decode validates
// it: a corrupt or foreign profile is ignored with a warning, never trusted.
package prefetch

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

// Entry is one chunk of a profile.
type Entry struct {
	ID     digest.ID
	Size   uint32
	TimeMS uint64 // typical first touch, ms after the start
	Seen   uint32 // runs that touched it
}

// Profile is an image's access order.
type Profile struct {
	Image   digest.ID
	Runs    uint32
	Entries []Entry
}

// Version of the encoding.
const Version = 1

var magic = []byte("GWPF")

// ErrBadProfile is wrapped by every decoding failure.
var ErrBadProfile = errors.New("bad profile")

// Bytes sums the entries.
func (p *Profile) Bytes() int64 {
	var n int64
	for _, e := range p.Entries {
		n += int64(e.Size)
	}
	return n
}

// Encode returns the canonical encoding.
func (p *Profile) Encode() []byte {
	b := append([]byte{}, magic...)
	b = append(b, Version)
	b = append(b, p.Image[:]...)
	b = binary.AppendUvarint(b, uint64(p.Runs))
	b = binary.AppendUvarint(b, uint64(len(p.Entries)))
	for _, e := range p.Entries {
		b = append(b, e.ID[:]...)
		b = binary.AppendUvarint(b, uint64(e.Size))
		b = binary.AppendUvarint(b, e.TimeMS)
		b = binary.AppendUvarint(b, uint64(e.Seen))
	}
	return b
}

// Decode parses and validates a profile.
func Decode(b []byte) (*Profile, error) {
	if len(b) < len(magic)+1+digest.Size || !bytes.Equal(b[:4], magic) {
		return nil, fmt.Errorf("%w: not a gpuwarm profile", ErrBadProfile)
	}
	if b[4] != Version {
		return nil, fmt.Errorf("%w: version %d, this gpuwarm reads %d", ErrBadProfile, b[4], Version)
	}
	p := &Profile{}
	copy(p.Image[:], b[5:])
	off := 5 + digest.Size
	uv := func(max uint64) (uint64, error) {
		v, n := binary.Uvarint(b[off:])
		if n <= 0 || v > max {
			return 0, fmt.Errorf("%w: bad number at byte %d", ErrBadProfile, off)
		}
		off += n
		return v, nil
	}
	runs, err := uv(1 << 31)
	if err != nil {
		return nil, err
	}
	p.Runs = uint32(runs)
	n, err := uv(uint64(len(b)-off) / (digest.Size + 3))
	if err != nil {
		return nil, err
	}
	seen := make(map[digest.ID]bool, n)
	for i := uint64(0); i < n; i++ {
		var e Entry
		if len(b)-off < digest.Size {
			return nil, fmt.Errorf("%w: truncated", ErrBadProfile)
		}
		copy(e.ID[:], b[off:])
		off += digest.Size
		size, err := uv(chunk.MaxSize)
		if err != nil {
			return nil, err
		}
		if e.TimeMS, err = uv(1 << 40); err != nil {
			return nil, err
		}
		s, err := uv(runs)
		if err != nil {
			return nil, err
		}
		e.Size, e.Seen = uint32(size), uint32(s)
		if e.Size == 0 || e.Seen == 0 || seen[e.ID] {
			return nil, fmt.Errorf("%w: entry %d empty, unseen or repeated", ErrBadProfile, i)
		}
		seen[e.ID] = true
		p.Entries = append(p.Entries, e)
	}
	if off != len(b) {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadProfile, len(b)-off)
	}
	if !bytes.Equal(p.Encode(), b) {
		return nil, fmt.Errorf("%w: not canonical", ErrBadProfile)
	}
	return p, nil
}

// Merge folds a new run into an existing profile (old may be nil).
func Merge(old, run *Profile) *Profile {
	if old == nil || old.Image != run.Image {
		old = &Profile{Image: run.Image}
	}
	out := &Profile{Image: run.Image, Runs: old.Runs + run.Runs}
	byID := map[digest.ID]*Entry{}
	var order []*Entry
	add := func(e Entry, runs uint32) {
		if cur, ok := byID[e.ID]; ok {
			// Weighted average of first-touch times.
			cur.TimeMS = (cur.TimeMS*uint64(cur.Seen) + e.TimeMS*uint64(e.Seen)) / uint64(cur.Seen+e.Seen)
			cur.Seen += e.Seen
			return
		}
		c := e
		byID[e.ID] = &c
		order = append(order, &c)
	}
	for _, e := range old.Entries {
		add(e, old.Runs)
	}
	for _, e := range run.Entries {
		add(e, run.Runs)
	}
	common := func(e *Entry) bool { return 2*e.Seen >= out.Runs }
	sort.SliceStable(order, func(i, j int) bool {
		a, b := order[i], order[j]
		if common(a) != common(b) {
			return common(a)
		}
		return a.TimeMS < b.TimeMS
	})
	for _, e := range order {
		out.Entries = append(out.Entries, *e)
	}
	return out
}

// Save stores p and points the image's profile reference at it.
func Save(ctx context.Context, st store.Store, p *Profile) (digest.ID, error) {
	enc := p.Encode()
	id := digest.Of(enc)
	if err := st.Put(ctx, store.H(store.Profile, id), enc); err != nil {
		return id, fmt.Errorf("store profile: %w", err)
	}
	if err := st.Put(ctx, store.Handle{Kind: store.ProfileRef, Name: p.Image.String()}, []byte("profile:"+id.String()+"\n")); err != nil {
		return id, fmt.Errorf("store profile reference: %w", err)
	}
	return id, nil
}

// Load returns the profile of image, nil if it has none. A profile that is
// corrupt or belongs to another image is an error the caller should log
// and then boot without it.
func Load(ctx context.Context, st store.Store, image digest.ID) (*Profile, error) {
	ref, err := store.ReadAll(ctx, st, store.Handle{Kind: store.ProfileRef, Name: image.String()})
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	hex, ok := strings.CutPrefix(strings.TrimSpace(string(ref)), "profile:")
	if !ok {
		return nil, fmt.Errorf("%w: reference of image %s is malformed", ErrBadProfile, image.Short())
	}
	id, err := digest.Parse(hex)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadProfile, err)
	}
	b, err := store.ReadAll(ctx, st, store.H(store.Profile, id))
	if err != nil {
		return nil, err
	}
	if digest.Of(b) != id {
		return nil, fmt.Errorf("%w: profile %s is corrupt in the store", ErrBadProfile, id.Short())
	}
	p, err := Decode(b)
	if err != nil {
		return nil, err
	}
	if p.Image != image {
		return nil, fmt.Errorf("%w: profile %s belongs to image %s, not %s", ErrBadProfile, id.Short(), p.Image.Short(), image.Short())
	}
	return p, nil
}
