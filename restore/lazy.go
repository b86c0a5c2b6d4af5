package restore

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/restore/lazypages"
)

// startDaemon starts gpuwarm's lazy-pages daemon on the socket CRIU's
// restore connects to. The returned channel says when every lazy page is in
// place (nil) or why the daemon gave up.
func (p *Process) startDaemon(dir, work string, ix *manifest.Index, opt Options, log *slog.Logger, cleanups *[]func()) (chan error, error) {
	src := opt.Pages
	if src == nil {
		m := &mountPages{dir: dir, files: map[uint32]*os.File{}}
		*cleanups = append(*cleanups, m.close)
		src = m
	}
	pages := pagesFiles(ix)
	if opt.Record != nil && ix != nil {
		recordImageFiles(opt.Record, ix, pages)
	}
	lo := lazypages.Options{Images: dir, Source: src, Workers: opt.LazyWorkers, Logger: log}
	if opt.Profile != nil && ix != nil {
		lo.First = profileSpans(ix, pages, opt.Profile)
	}
	if opt.Record != nil {
		lo.FillDelay = opt.RecordFor
		if lo.FillDelay == 0 {
			lo.FillDelay = 3 * time.Second
		}
	}
	if opt.Observe != nil || opt.Record != nil && ix != nil {
		lo.OnTouch = func(id uint32, off int64, n int) {
			if opt.Observe != nil {
				opt.Observe(id, off, n)
			}
			if opt.Record != nil {
				if e, ok := pages[id]; ok {
					first, last := ix.ChunkSpan(e, off, int64(n))
					for j := first; j < last; j++ {
						c := ix.Entries[e].Chunks[j]
						opt.Record.Touch(ix.ID, e, j, c.ID, c.Len())
					}
				}
			}
		}
	}
	srv, err := lazypages.Listen(filepath.Join(work, lazypages.SocketName), lo)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	p.daemon = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	*cleanups = append(*cleanups, cancel)
	return done, nil
}

// pagesFiles maps a pages file's ID to its entry in the snapshot image.
func pagesFiles(ix *manifest.Index) map[uint32]int {
	out := map[uint32]int{}
	if ix == nil {
		return out
	}
	for i, e := range ix.Entries {
		name := e.Path
		if strings.Contains(name, "/") || !strings.HasPrefix(name, "pages-") || !strings.HasSuffix(name, ".img") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "pages-"), ".img"), 10, 32)
		if err == nil {
			out[uint32(n)] = i
		}
	}
	return out
}

// recordImageFiles records, as touched first, every chunk of the
// snapshot's files other than its memory: CRIU reads all of them (the
// process tree, its memory layout, its open files) before the process runs.
// A replay then brings them in ahead of the memory instead of leaving
// CRIU's reads queued behind it: restoring a 514 MiB snapshot while the
// mount replayed a profile of its memory alone spent 540 ms in CRIU
// instead of 95 ms on the 16-core benchmark host.
func recordImageFiles(rec manifest.Observer, ix *manifest.Index, pages map[uint32]int) {
	isPages := make(map[int]bool, len(pages))
	for _, e := range pages {
		isPages[e] = true
	}
	for e, ent := range ix.Entries {
		if ent.Type != manifest.Regular || isPages[e] {
			continue
		}
		for j, c := range ent.Chunks {
			rec.Touch(ix.ID, e, j, c.ID, c.Len())
		}
	}
}

// profileSpans turns a profile's chunks into spans of the pages files, in
// profile order.
func profileSpans(ix *manifest.Index, pages map[uint32]int, prof *prefetch.Profile) []lazypages.Span {
	where := map[digest.ID][]lazypages.Span{}
	for id, e := range pages {
		for j, c := range ix.Entries[e].Chunks {
			where[c.ID] = append(where[c.ID], lazypages.Span{PagesID: id, Off: ix.ChunkOffset(e, j), Len: int64(c.Size)})
		}
	}
	var out []lazypages.Span
	for _, pe := range prof.Entries {
		out = append(out, where[pe.ID]...)
	}
	return out
}

// CachePages reads a snapshot's pages straight from the block cache (every
// chunk verified), for a process that owns the cache: no FUSE round trip.
type CachePages struct {
	Cache *cache.Cache
	Index *manifest.Index
	pages map[uint32]int
}

// NewCachePages serves the pages files of the snapshot image ix.
func NewCachePages(c *cache.Cache, ix *manifest.Index) *CachePages {
	return &CachePages{Cache: c, Index: ix, pages: pagesFiles(ix)}
}

// ReadPages implements pageserver.PageSource.
func (cp *CachePages) ReadPages(ctx context.Context, id uint32, off int64, dst []byte) error {
	e, ok := cp.pages[id]
	if !ok {
		return fmt.Errorf("pages-%d.img is not in the snapshot", id)
	}
	ent := &cp.Index.Entries[e]
	if off < 0 || off+int64(len(dst)) > ent.Size {
		return fmt.Errorf("pages-%d.img: read %d+%d past its %d bytes", id, off, len(dst), ent.Size)
	}
	first, last := cp.Index.ChunkSpan(e, off, int64(len(dst)))
	for j := first; j < last && len(dst) > 0; j++ {
		c := ent.Chunks[j]
		in := off - cp.Index.ChunkOffset(e, j)
		piece := dst[:min(int64(len(dst)), int64(c.Size)-in)]
		n, err := cp.Cache.ReadAt(ctx, c.ID, c.Len(), piece, int64(c.Off)+in)
		if err != nil {
			return fmt.Errorf("pages-%d.img chunk %d: %w", id, j, err)
		}
		dst, off = dst[n:], off+int64(n)
	}
	return nil
}

// EndRecording ends a recording lazy restore's window (Options.RecordFor)
// now: the daemon stops waiting for the program's own faults and fills the
// rest of memory. A no-op for other restores.
func (p *Process) EndRecording() {
	if p.daemon != nil {
		p.daemon.FillNow()
	}
}

// LazyStats returns gpuwarm's lazy-pages daemon's counters (zero for an
// eager restore or CRIU's daemon).
func (p *Process) LazyStats() lazypages.Stats {
	if p.daemon == nil {
		return lazypages.Stats{}
	}
	return p.daemon.Stats()
}
