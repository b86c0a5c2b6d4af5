package prefetch

import (
	"context"
	"sync"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

// Fetcher fetches images' profiles as soon as their IDs are known, so that
// a mount can start an image's profile fetch alongside its manifest's
// (fusefs.Options.Loading) and a replay starts a store round trip sooner.
type Fetcher struct {
	ctx context.Context
	st  store.Store
	m   sync.Map // digest.ID -> *fetch
}

type fetch struct {
	done chan struct{}
	p    *Profile
	err  error
}

// NewFetcher fetches from st; ctx bounds every fetch.
func NewFetcher(ctx context.Context, st store.Store) *Fetcher {
	return &Fetcher{ctx: ctx, st: st}
}

// Start starts fetching the profile of id, unless a fetch of it is under
// way or done. A fetch that failed is not reused: Start fetches again.
func (f *Fetcher) Start(id digest.ID) { f.start(id) }

func (f *Fetcher) start(id digest.ID) *fetch {
	l := &fetch{done: make(chan struct{})}
	for {
		v, loaded := f.m.LoadOrStore(id, l)
		if !loaded {
			break
		}
		old := v.(*fetch)
		select {
		case <-old.done:
			if old.err == nil {
				return old
			}
			f.m.CompareAndDelete(id, old)
			continue
		default:
			return old
		}
	}
	go func() {
		l.p, l.err = Load(f.ctx, f.st, id)
		close(l.done)
	}()
	return l
}

// Take waits for the profile of id (starting its fetch if need be) and
// forgets it: an image loads once per mount. A nil profile and nil error
// mean the image has none.
func (f *Fetcher) Take(id digest.ID) (*Profile, error) {
	l := f.start(id)
	<-l.done
	f.m.Delete(id)
	return l.p, l.err
}

// AddRun merges a recorded run into the image's stored profile (an
// unreadable stored profile is replaced, and reported through replaced)
// and saves the result. It returns the merged profile and its ID.
func AddRun(ctx context.Context, st store.Store, run *Profile) (merged *Profile, id digest.ID, replaced error, err error) {
	old, replaced := Load(ctx, st, run.Image)
	if replaced != nil {
		old = nil
	}
	merged = Merge(old, run)
	id, err = Save(ctx, st, merged)
	return merged, id, replaced, err
}

// ChunkIDs lists the profile's chunks in replay order.
func (p *Profile) ChunkIDs() []digest.ID {
	ids := make([]digest.ID, len(p.Entries))
	for i, e := range p.Entries {
		ids[i] = e.ID
	}
	return ids
}
