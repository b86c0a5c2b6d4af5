package fusefs

import (
	"context"
	"encoding/json"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// StatsName is a read-only file at the mount root with the cache counters as
// JSON. It starts with a dot, which no tag may.
const StatsName = ".stats"

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
	out.Mode = syscall.S_IFREG | 0o444
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

func (s *statsNode) render() []byte {
	out := map[string]any{}
	cs, _ := json.Marshal(s.fsys.cache.Stats())
	json.Unmarshal(cs, &out)
	replays := map[string]any{}
	for id, o := range s.fsys.Observers() {
		if st, ok := o.(interface{ ReplayStats() any }); ok {
			replays[id.String()] = st.ReplayStats()
		}
	}
	if len(replays) > 0 {
		out["Prefetch"] = replays
	}
	// Opens served by FUSE passthrough from a disk-tier file, and opens
	// served through the daemon (memory tier, kernel page cache).
	out["Opens"] = map[string]int64{
		"Passthrough": s.fsys.passthroughOpens.Load(),
		"Cached":      s.fsys.cachedOpens.Load(),
		// Of the cached opens, those of files wholly in the kernel's page
		// cache; and how often such a file was found dropped afterwards.
		"PageCache":     s.fsys.pageCacheOpens.Load(),
		"PageCacheLost": s.fsys.pageCacheLost.Load(),
		// Of the passthrough opens, those of assembled files the kernel's
		// page cache held.
		"Resident": s.fsys.residentOpens.Load(),
	}
	out["PageCachePushed"] = map[string]int64{
		// Bytes a Warmer put into files' page cache ahead of their reads.
		"Bytes": s.fsys.pushedBytes.Load(),
	}
	// Requests answered through io_uring queues (--fuse-uring), and of
	// them those handed to goroutines (queues that had a slow answer).
	var ringed, async int64
	if r := s.fsys.ring.Load(); r != nil {
		ringed, async = r.Requests()
	}
	// Requests answered by the polling thread (--fuse-spin), those of them
	// handed to goroutines, and those it read while polling.
	var polled, pAsync, caught int64
	if p := s.fsys.poller.Load(); p != nil {
		polled, pAsync, caught = p.Requests()
	}
	out["FUSE"] = map[string]int64{"URingRequests": ringed, "URingAsync": async,
		"PolledRequests": polled, "PolledAsync": pAsync, "PolledCaught": caught}
	// Multi-chunk files copied whole into the disk tier for passthrough.
	out["Assembly"] = map[string]int64{"Running": s.fsys.assemblyRunning.Load(), "Done": s.fsys.assemblyDone.Load(), "Failed": s.fsys.assemblyFailed.Load(), "PagesDropped": s.fsys.assemblyDropped.Load()}
	b, _ := json.MarshalIndent(out, "", "  ")
	return append(b, '\n')
}
