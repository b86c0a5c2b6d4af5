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
	_ = (fs.NodeReader)((*statsNode)(nil))
	_ = (fs.NodeGetattrer)((*statsNode)(nil))
)

func (s *statsNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = 0
	out.SetTimeout(0)
	return 0
}

func (s *statsNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (s *statsNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
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
	b, _ := json.MarshalIndent(out, "", "  ")
	b = append(b, '\n')
	if off >= int64(len(b)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(b[off:min(int64(len(b)), off+int64(len(dest)))]), 0
}
