package fusefs

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"golang.org/x/sync/errgroup"
)

// A Warmer puts chunks of an image into the kernel's page cache of the
// files that hold them (FUSE_NOTIFY_STORE) as a prefetch replay brings them
// into the block cache, so that the program the replay runs ahead of finds
// its reads already answered by the kernel: no READ round trip to the
// daemon, no wait. It is what makes a worker that mounted at boot and
// replayed the profile before the program started (or a snapshot's restore
// began) as fast as one with a warm page cache.
//
// The kernel accepts data only for inodes it knows, so the Warmer first
// looks up, through the mount, every file the chunks belong to. Pushing is
// best effort: a chunk that cannot be pushed is read the usual way. Pushed
// bytes stop at a limit (page cache is memory; a snapshot's pages files can
// be as large as the GPU's memory).
type Warmer struct {
	f      *FS
	ix     *manifest.Index
	where  map[digest.ID][]chunkLoc
	limit  int64
	files  []int        // entries holding the chunks
	pushed atomic.Int64 // bytes pushed or set aside for pushing, against limit
	ready  atomic.Bool
	done   sync.Map // digest.ID: pushed, tried, or read by the program
}

// chunkLoc is a place of a chunk in an image: entry e's chunk j.
type chunkLoc struct{ e, j int }

// NewWarmer prepares to push the chunks ids of image ix (a profile's) into
// the page cache, up to limit bytes; Start sets it going.
func (f *FS) NewWarmer(ix *manifest.Index, ids []digest.ID, limit int64) *Warmer {
	want := make(map[digest.ID]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	w := &Warmer{f: f, ix: ix, where: map[digest.ID][]chunkLoc{}, limit: limit}
	var files []int
	for e := range ix.Entries {
		ent := &ix.Entries[e]
		if ent.Type != manifest.Regular {
			continue
		}
		added := false
		for j, c := range ent.Chunks {
			if want[c.ID] {
				w.where[c.ID] = append(w.where[c.ID], chunkLoc{e, j})
				if !added {
					files, added = append(files, e), true
				}
			}
		}
	}
	w.files = files
	f.mu.Lock()
	f.warmers[ix.ID] = w
	f.mu.Unlock()
	return w
}

// Start waits for the mount to be up, looks the chunks' files up, pushes
// those chunks already cached, and from then on each chunk passed to
// Ready. onPushed (if set) hears of the chunks the first step pushes;
// Ready reports its own.
func (w *Warmer) Start(ctx context.Context, onPushed func(digest.ID)) {
	go w.start(ctx, w.files, onPushed)
}

func (w *Warmer) start(ctx context.Context, files []int, onPushed func(digest.ID)) {
	dir := w.f.waitMounted(ctx)
	if dir == "" {
		return
	}
	// Looking a file up through the mount makes the kernel create its
	// inode (and this daemon its node); a few at a time (torch's profile
	// touches thousands of files).
	root := filepath.Join(dir, byIDName, w.ix.ID.String())
	var g errgroup.Group
	g.SetLimit(4)
	for _, e := range files {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			os.Lstat(filepath.Join(root, w.ix.Entries[e].Path))
			return nil
		})
	}
	g.Wait()
	if ctx.Err() != nil {
		return
	}
	w.ready.Store(true)
	for id := range w.where {
		if w.f.cache.Contains(id) && w.Ready(id) && onPushed != nil {
			onPushed(id)
		}
	}
}

// Ready pushes chunk id, now in the block cache, into the page cache of
// every file of the image that holds it (once; within the limit), and
// reports whether it went into any.
func (w *Warmer) Ready(id digest.ID) bool {
	locs := w.where[id]
	if !w.ready.Load() || len(locs) == 0 {
		return false
	}
	if _, dup := w.done.LoadOrStore(id, true); dup {
		return false
	}
	var pieces int64
	for _, l := range locs {
		pieces += int64(w.ix.Entries[l.e].Chunks[l.j].Size)
	}
	if w.pushed.Add(pieces) > w.limit {
		return false
	}
	size := w.ix.Entries[locs[0].e].Chunks[locs[0].j].Len()
	b, release, err := w.f.cache.View(context.Background(), id, size, 0, int(size))
	if err != nil {
		return false
	}
	defer release()
	ok := false
	for _, l := range locs {
		c := w.ix.Entries[l.e].Chunks[l.j]
		if uint64(c.Off)+uint64(c.Size) > uint64(len(b)) {
			continue // the manifest's lengths disagree; the read path says so
		}
		piece := b[c.Off : c.Off+c.Size]
		if n := w.f.liveNode(w.ix.ID, l.e); n != nil && n.push(w.ix.ChunkOffset(l.e, l.j), piece) {
			ok = true
		}
	}
	return ok
}

// push stores b at off in the kernel's page cache of the file.
func (n *node) push(off int64, b []byte) bool {
	n.openMu.Lock()
	through := n.passthroughOpens > 0
	n.openMu.Unlock()
	if through {
		return false // the kernel reads the backing file, not these pages
	}
	if errno := n.WriteCache(off, b); errno != 0 {
		n.fsys.log.Debug("cannot put a chunk into the page cache", "path", n.entry().Path, "err", errno)
		return false
	}
	n.fsys.pushedBytes.Add(int64(len(b)))
	// Counted as handed to the kernel, but not assembled for passthrough
	// on that account: the program's reads will not come here, and the
	// copy would compete with it for the CPU and the disk now.
	if !n.inPageCache.Load() && n.served.Add(int64(len(b))) >= n.entry().Size {
		n.inPageCache.Store(true)
	}
	return true
}

// waitMounted returns the mount point once the kernel serves the mount,
// or "" if ctx ends first.
func (f *FS) waitMounted(ctx context.Context) string {
	for {
		if dir := f.mounted.Load(); dir != nil {
			return *dir
		}
		select {
		case <-ctx.Done():
			return ""
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// liveNode is the node of entry e of image img if the kernel knows it.
func (f *FS) liveNode(img digest.ID, e int) *node {
	v, ok := f.live.Load(liveKey{img, e})
	if !ok {
		return nil
	}
	return v.(*node)
}

// liveKey names a file node.
type liveKey struct {
	img digest.ID
	idx int
}

// register records n as its entry's node; OnForget undoes it.
func (n *node) register() *node {
	if v, loaded := n.fsys.live.LoadOrStore(liveKey{n.img.ID, n.idx}, n); loaded {
		return v.(*node)
	}
	return n
}

var _ = (interface{ OnForget() })((*node)(nil))

// OnForget: the kernel has let go of the inode.
func (n *node) OnForget() { n.fsys.live.CompareAndDelete(liveKey{n.img.ID, n.idx}, n) }
