package fusefs

import (
	"context"
	"encoding/json"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/internal/histo"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// StatsName is a read-only file at the mount root with the cache counters as
// JSON. It starts with a dot, which no tag may.
const StatsName = ".stats"

// statsMode is .stats's mode: root's alone unless Options.PublicStats.
func (f *FS) statsMode() uint32 {
	if f.opt.PublicStats {
		return syscall.S_IFREG | 0o444
	}
	return syscall.S_IFREG | 0o400
}

type statsNode struct {
	fs.Inode
	fsys *FS
}

var (
	_ = (fs.NodeOpener)((*statsNode)(nil))
	_ = (fs.NodeGetattrer)((*statsNode)(nil))
	_ = (fs.FileReader)((*statsHandle)(nil))
)

// statsHandle holds the counters as they were when the file was opened, so
// that a reader reading in pieces sees one consistent document.
type statsHandle struct{ b []byte }

func (s *statsNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = s.fsys.statsMode()
	out.Size = 0
	out.SetTimeout(0)
	return 0
}

func (s *statsNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return &statsHandle{b: s.render()}, fuse.FOPEN_DIRECT_IO, 0
}

func (h *statsHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(h.b)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(h.b[off:min(int64(len(h.b)), off+int64(len(dest)))]), 0
}

// Stats is what MOUNTPOINT/.stats holds: the block cache's counters and
// the mount's own.
type Stats struct {
	cache.Stats
	// Prefetch holds each replaying image's counters, by image ID.
	Prefetch map[string]any `json:"prefetch,omitempty"`
	Opens    OpenStats      `json:"opens"`
	// PageCachePushed is the bytes put into files' page cache ahead of
	// their reads: by replays, and the rest of a chunk a read out of
	// sequence fetched whole.
	PageCachePushed int64          `json:"page_cache_pushed"`
	FUSE            TransportStats `json:"fuse"`
	Assembly        AssemblyStats  `json:"assembly"`
}

// OpenStats counts opens by how they were served.
type OpenStats struct {
	Passthrough int64 `json:"passthrough"` // by FUSE passthrough from a disk-tier file
	Cached      int64 `json:"cached"`      // through the daemon (memory tier, page cache)
	// Of the cached opens, those of files wholly in the kernel's page
	// cache, and how often such a file was found dropped afterwards.
	PageCache     int64 `json:"page_cache"`
	PageCacheLost int64 `json:"page_cache_lost"`
	// Of the passthrough opens, those of assembled files the kernel's page
	// cache held.
	Resident int64 `json:"resident"`
}

// TransportStats counts the FUSE requests answered off go-fuse's readers,
// and times every request by operation.
type TransportStats struct {
	// Ops times the requests gpuwarm's handlers answered, by operation
	// (lookup, getattr, open, read, ...); Interrupted counts those whose
	// caller gave up (the kernel's INTERRUPT) before the answer.
	Ops            map[string]histo.Snapshot `json:"ops"`
	Interrupted    int64                     `json:"interrupted"`
	URingRequests  int64                     `json:"uring_requests"`  // through io_uring queues (--fuse-uring)
	URingAsync     int64                     `json:"uring_async"`     // of them, handed to goroutines
	PolledRequests int64                     `json:"polled_requests"` // by the polling thread (--fuse-spin)
	PolledAsync    int64                     `json:"polled_async"`    // of them, handed to goroutines
	PolledCaught   int64                     `json:"polled_caught"`   // read while polling, without a wakeup
}

// AssemblyStats counts multi-chunk files copied whole into the disk tier
// for passthrough.
type AssemblyStats struct {
	Running      int64 `json:"running"`
	Done         int64 `json:"done"`
	Failed       int64 `json:"failed"`
	PagesDropped int64 `json:"pages_dropped"`
}

// Stats returns the mount's counters as .stats shows them.
func (f *FS) Stats() Stats {
	out := Stats{Stats: f.cache.Stats()}
	for id, o := range f.Observers() {
		if st, ok := o.(interface{ ReplayStats() any }); ok {
			if out.Prefetch == nil {
				out.Prefetch = map[string]any{}
			}
			out.Prefetch[id.String()] = st.ReplayStats()
		}
	}
	out.Opens = OpenStats{
		Passthrough:   f.passthroughOpens.Load(),
		Cached:        f.cachedOpens.Load(),
		PageCache:     f.pageCacheOpens.Load(),
		PageCacheLost: f.pageCacheLost.Load(),
		Resident:      f.residentOpens.Load(),
	}
	out.PageCachePushed = f.pushedBytes.Load()
	out.FUSE.Ops = map[string]histo.Snapshot{}
	for i, name := range opNames {
		out.FUSE.Ops[name] = f.opLatency[i].Snapshot()
	}
	out.FUSE.Interrupted = f.interrupted.Load()
	if r := f.ring.Load(); r != nil {
		out.FUSE.URingRequests, out.FUSE.URingAsync = r.Requests()
	}
	if p := f.poller.Load(); p != nil {
		out.FUSE.PolledRequests, out.FUSE.PolledAsync, out.FUSE.PolledCaught = p.Requests()
	}
	out.Assembly = AssemblyStats{Running: f.assemblyRunning.Load(), Done: f.assemblyDone.Load(),
		Failed: f.assemblyFailed.Load(), PagesDropped: f.assemblyDropped.Load()}
	return out
}

func (s *statsNode) render() []byte {
	b, _ := json.MarshalIndent(s.fsys.Stats(), "", "  ")
	return append(b, '\n')
}

// The FUSE operations timed (bounded: a label each in the metrics).
const (
	opLookup = iota
	opGetattr
	opOpen
	opRead
	opReaddir
	opReadlink
	opGetxattr
	opListxattr
	opStatfs
	nOps
)

var opNames = [nOps]string{"lookup", "getattr", "open", "read", "readdir", "readlink", "getxattr", "listxattr", "statfs"}

// timeOp times one request; a cancelled context means the caller gave up.
func (f *FS) timeOp(ctx context.Context, op int, start time.Time) {
	f.opLatency[op].Since(start)
	if ctx.Err() != nil {
		f.interrupted.Add(1)
	}
}
