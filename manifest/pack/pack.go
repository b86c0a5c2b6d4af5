// Package pack turns a directory tree into an image in a store: it walks the
// tree, cuts regular files into fixed-size chunks, uploads the chunks the
// store lacks (in parallel, bounded), then publishes the manifest and, last,
// the tag. A crash before the tag is written leaves only unreferenced chunks,
// which gc removes; readers never see a tag whose image is incomplete.
package pack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ixattrs "github.com/gpuwarm/gpuwarm/internal/xattrs"

	"github.com/gpuwarm/gpuwarm/internal/directio"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// DefaultChunkSize is the chunk size of packed files: large enough to keep
// object-store requests few, small enough that a lazy read fetches little
// it does not need.
const DefaultChunkSize = 1 << 20

// Small files are packed several to a chunk (chunk.Ref.Shared): a file of
// at most DefaultSmallFile bytes joins the other small files of its
// directory, in name order, in chunks of up to DefaultSharedChunk bytes.
// Thousands of small files (a Python environment) then cost a cold reader
// one store request per group, not per file, as squashfs packs its
// fragments; a directory's own files only, so that a directory unchanged
// between images packs into the same chunks and deduplicates.
const (
	DefaultSmallFile   = 32 << 10
	DefaultSharedChunk = 256 << 10
)

// Options configure a pack.
type Options struct {
	ChunkSize int
	// SmallFile and SharedChunk size the packing of small files (defaults
	// above, capped by ChunkSize); a negative SmallFile packs none.
	SmallFile   int
	SharedChunk int
	Workers     int // default GOMAXPROCS+2
	Annotations map[string]string
	// Extra entries join the walked tree: regular files whose chunks are
	// already in the store (a snapshot's pages), hard links, symlinks.
	// Their parents must exist in the tree and their paths must be new.
	Extra []manifest.Entry
	// Progress receives a one-line progress display; nil for none.
	Progress io.Writer
	// Previous, if set (LoadPrevious), lets files unchanged since the
	// tag's last image keep their chunks without being read.
	Previous *Previous
	Logger   *slog.Logger
}

// defaults fills in what opt leaves out and checks the chunk size.
func (opt *Options) defaults() error {
	if opt.ChunkSize <= 0 {
		opt.ChunkSize = DefaultChunkSize
	}
	if opt.ChunkSize > chunk.MaxSize {
		return fmt.Errorf("chunk size %d exceeds %d", opt.ChunkSize, chunk.MaxSize)
	}
	if opt.SmallFile == 0 {
		opt.SmallFile = DefaultSmallFile
	}
	if opt.SharedChunk <= 0 {
		opt.SharedChunk = DefaultSharedChunk
	}
	opt.SharedChunk = min(opt.SharedChunk, opt.ChunkSize)
	opt.SmallFile = min(opt.SmallFile, opt.SharedChunk/2)
	if opt.Workers <= 0 {
		opt.Workers = runtime.GOMAXPROCS(0) + 2
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return nil
}

// Result summarizes a pack.
type Result struct {
	ID    digest.ID
	Stats manifest.Stats
	// Stamps are the packed regular files' stamps (for SaveStamps);
	// Reused counts the files whose chunks came from Options.Previous.
	Stamps      map[string]Stamp
	Reused      int
	ReusedBytes int64
	NewChunks   int
	NewBytes    int64 // stored (possibly compressed) bytes uploaded
	ReadBytes   int64
	Duration    time.Duration
	ManifestLen int
}

// DedupRatio is logical bytes over uploaded bytes.
func (r *Result) DedupRatio() float64 {
	if r.NewBytes == 0 {
		return 0
	}
	return float64(r.Stats.Bytes) / float64(r.NewBytes)
}

// MBps is the read throughput of the pack.
func (r *Result) MBps() float64 {
	return float64(r.ReadBytes) / 1e6 / r.Duration.Seconds()
}

// afterWalk, set by tests, runs between the walk and the reads.
var afterWalk func()

// job is one chunk to read and store: a piece of one file, or (group set)
// several small files whole, in one shared chunk.
type job struct {
	src   *srcFile
	entry int
	index int
	off   int64
	size  int
	group []member
}

// member is a small file of a shared chunk.
type member struct {
	src   *srcFile
	entry int
	size  int
	// reuse is its piece in the tag's last image, if it is unchanged.
	reuse []manifest.Chunk
}

// smallFiles gathers each directory's small files, in walk (name) order.
type smallFiles struct {
	dirs  map[string][]member
	order []string // directories in the order they were met
}

func (s *smallFiles) add(dir string, m member) {
	if _, ok := s.dirs[dir]; !ok {
		s.order = append(s.order, dir)
	}
	s.dirs[dir] = append(s.dirs[dir], m)
}

// groups cuts a directory's small files, in name order, into groups of at
// most max bytes. Directory and image packs both cut with it: the same
// files make the same shared chunks.
func groups[T any](files []T, size func(T) int, max int) [][]T {
	var out [][]T
	var g []T
	n := 0
	for _, f := range files {
		if n+size(f) > max && len(g) > 0 {
			out, g, n = append(out, g), nil, 0
		}
		g = append(g, f)
		n += size(f)
	}
	if len(g) > 0 {
		out = append(out, g)
	}
	return out
}

// reusable reports whether a directory's small files can all keep their
// pieces from the tag's last image: each unchanged, and every shared chunk
// they name wholly theirs (no file removed from it). All or none, so that
// the directory packs as a fresh pack would pack it.
func reusable(files []member) bool {
	covered := map[digest.ID]uint64{}
	whole := map[digest.ID]uint32{}
	for _, f := range files {
		if len(f.reuse) != 1 {
			return false
		}
		if c := f.reuse[0]; c.Shared() {
			covered[c.ID] += uint64(c.Size)
			whole[c.ID] = c.Whole
		}
	}
	for id, n := range covered {
		if n != uint64(whole[id]) {
			return false
		}
	}
	return true
}

// shares reports whether any of chunks is a piece of a shared chunk.
func shares(chunks []manifest.Chunk) bool {
	for _, c := range chunks {
		if c.Shared() {
			return true
		}
	}
	return false
}

// groupJob is the job that stores group: a shared chunk, or the file's own
// chunk when it is alone.
func groupJob(group []member) job {
	if len(group) == 1 {
		m := group[0]
		return job{src: m.src, entry: m.entry, size: m.size}
	}
	return job{group: group}
}

type packer struct {
	root int // the packed tree's root directory, which sources are opened below
	st   store.Store
	opt  Options
	log  *slog.Logger
	seen sync.Map // digest.ID -> *seenChunk: known present or uploaded in this run

	stamps      map[string]Stamp
	reused      int
	reusedBytes int64

	newChunks, newBytes, readBytes atomic.Int64

	// Chunks go into the store in batches (one sync per batch where the
	// store can, store.Batcher), committed every commitBytes or
	// commitObjects and before the manifest.
	batchMu      sync.RWMutex
	batch        store.Batch
	batchBytes   atomic.Int64
	batchObjects atomic.Int64
}

const (
	commitBytes   = 1 << 30
	commitObjects = 16384
)

// finish commits the chunks uploaded when the upload (err) went well, and
// abandons the batch otherwise.
func (p *packer) finish(ctx context.Context, err error) error {
	if err == nil {
		err = p.commit(ctx)
	}
	if err != nil {
		p.batchMu.Lock()
		p.batch.Abort()
		p.batchMu.Unlock()
	}
	return err
}

// commit makes the chunks put so far durable and visible. Puts that race
// with it go into the next batch.
func (p *packer) commit(ctx context.Context) error {
	p.batchMu.Lock()
	b := p.batch
	p.batch = store.NewBatch(p.st)
	p.batchBytes.Store(0)
	p.batchObjects.Store(0)
	p.batchMu.Unlock()
	if err := b.Commit(ctx); err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	return nil
}

// Dir packs the tree at root into st and returns the image. It does not tag.
func Dir(ctx context.Context, st store.Store, root string, opt Options) (*Result, error) {
	start := time.Now()
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	st0, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("pack: %w", err)
	}
	if !st0.IsDir() {
		return nil, fmt.Errorf("pack: %s is not a directory", root)
	}
	rootFd, err := openRoot(root)
	if err != nil {
		return nil, fmt.Errorf("pack: %w", err)
	}
	defer unix.Close(rootFd)
	p := &packer{root: rootFd, st: st, opt: opt, log: opt.Logger, batch: store.NewBatch(st), stamps: map[string]Stamp{}}
	if opt.Previous != nil && opt.Previous.chunkSize != opt.ChunkSize {
		opt.Previous = nil
		p.opt.Previous = nil
	}
	m := &manifest.Manifest{Annotations: opt.Annotations}
	var jobs []job
	var total int64
	if err := p.walk(root, m, &jobs, &total); err != nil {
		return nil, err
	}
	if afterWalk != nil {
		afterWalk()
	}

	stopProgress := p.progress(total, start)
	err = p.upload(ctx, m, jobs)
	stopProgress()
	if err := p.finish(ctx, err); err != nil {
		return nil, err
	}
	if len(opt.Extra) > 0 {
		seen := make(map[string]bool, len(m.Entries))
		for _, e := range m.Entries {
			seen[e.Path] = true
		}
		for _, e := range opt.Extra {
			if seen[e.Path] {
				return nil, fmt.Errorf("pack: extra entry %q is already in %s", e.Path, root)
			}
			seen[e.Path] = true
			m.Entries = append(m.Entries, e)
		}
		sort.SliceStable(m.Entries, func(i, j int) bool { return m.Entries[i].Path < m.Entries[j].Path })
		canonicalHardlinks(m)
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("pack: internal error, built an invalid manifest: %w", err)
	}
	enc := m.Encode()
	id := digest.Of(enc)
	if err := st.Put(ctx, store.H(store.Manifest, id), enc); err != nil {
		return nil, fmt.Errorf("pack: store manifest: %w", err)
	}
	return &Result{
		ID: id, Stats: m.Stats(), NewChunks: int(p.newChunks.Load()), NewBytes: p.newBytes.Load(),
		ReadBytes: p.readBytes.Load(), Duration: time.Since(start), ManifestLen: len(enc),
		Stamps: p.stamps, Reused: p.reused, ReusedBytes: p.reusedBytes,
	}, nil
}

func (p *packer) walk(root string, m *manifest.Manifest, jobs *[]job, total *int64) error {
	type devIno struct{ dev, ino uint64 }
	links := make(map[devIno]string)
	small := &smallFiles{dirs: map[string][]member{}}
	err := filepath.WalkDir(root, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("pack: %w", err)
		}
		rel, _ := filepath.Rel(root, full)
		rel = filepath.ToSlash(rel)
		if rel == "." {
			rel = ""
		}
		var sys unix.Stat_t
		if err := unix.Lstat(full, &sys); err != nil {
			return fmt.Errorf("pack: %w", &os.PathError{Op: "lstat", Path: full, Err: err})
		}
		e := manifest.Entry{
			Path:  rel,
			Mode:  sys.Mode & 0o7777,
			UID:   sys.Uid,
			GID:   sys.Gid,
			Mtime: sys.Mtim.Nano(),
		}
		switch sys.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.Type = manifest.Dir
		case unix.S_IFLNK:
			t, err := os.Readlink(full)
			if err != nil {
				return fmt.Errorf("pack: %w", err)
			}
			e.Type, e.Target, e.Size = manifest.Symlink, t, int64(len(t))
		case unix.S_IFREG:
			key := devIno{uint64(sys.Dev), sys.Ino}
			if sys.Nlink > 1 {
				if first, ok := links[key]; ok {
					m.Entries = append(m.Entries, manifest.Entry{Path: rel, Type: manifest.Hardlink, Target: first})
					return nil
				}
				links[key] = rel
			}
			e.Type, e.Size = manifest.Regular, sys.Size
			stamp := stampOf(&sys)
			p.stamps[rel] = stamp
			idx := len(m.Entries)
			src := &srcFile{rel: rel, full: full, st: sys}
			prev, unchanged := p.opt.Previous.reuse(rel, stamp)
			if sys.Size > 0 && sys.Size <= int64(p.opt.SmallFile) {
				// Its directory's small files are reused or read together
				// once the walk is done.
				e.Chunks = []manifest.Chunk{{Size: uint32(sys.Size)}} // until then
				small.add(path.Dir("/"+rel), member{src: src, entry: idx, size: int(sys.Size), reuse: prev})
				break
			}
			if unchanged && !shares(prev) {
				e.Chunks = prev
				p.reused++
				p.reusedBytes += sys.Size
				break
			}
			n := int((sys.Size + int64(p.opt.ChunkSize) - 1) / int64(p.opt.ChunkSize))
			if n > 0 {
				e.Chunks = make([]manifest.Chunk, n)
			}
			for i := 0; i < n; i++ {
				off := int64(i) * int64(p.opt.ChunkSize)
				size := min(int64(p.opt.ChunkSize), sys.Size-off)
				*jobs = append(*jobs, job{src: src, entry: idx, index: i, off: off, size: int(size)})
			}
			*total += sys.Size
		default:
			p.log.Warn("skipping special file (devices, sockets and fifos are not packed)", "path", full)
			return nil
		}
		if rel != "" {
			if err := manifest.ValidPath(rel); err != nil {
				return fmt.Errorf("pack: %s: %w", full, err)
			}
		}
		xs, err := xattrs(full)
		if err != nil {
			return fmt.Errorf("pack: %w", err)
		}
		e.Xattrs = xs
		m.Entries = append(m.Entries, e)
		return nil
	})
	if err != nil {
		return err
	}
	for _, dir := range small.order {
		files := small.dirs[dir]
		if reusable(files) {
			for _, f := range files {
				m.Entries[f.entry].Chunks = f.reuse
				p.reused++
				p.reusedBytes += int64(f.size)
			}
			continue
		}
		for _, g := range groups(files, func(f member) int { return f.size }, p.opt.SharedChunk) {
			*jobs = append(*jobs, groupJob(g))
			for _, f := range g {
				*total += int64(f.size)
			}
		}
	}
	return nil
}

func (p *packer) upload(ctx context.Context, m *manifest.Manifest, jobs []job) error {
	g, ctx := errgroup.WithContext(ctx)
	ch := make(chan job)
	g.Go(func() error {
		defer close(ch)
		for _, j := range jobs {
			select {
			case ch <- j:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	for w := 0; w < p.opt.Workers; w++ {
		g.Go(func() error {
			src := newSourceReader(p.root, p.opt.ChunkSize)
			defer src.close()
			// Blobs are built here, block-aligned, so the file store
			// writes them with O_DIRECT in place.
			encRaw := make([]byte, directio.Round(1+p.opt.ChunkSize)+directAlign)
			enc := directio.Aligned(encRaw, directio.Round(1+p.opt.ChunkSize))
			var shared []byte
			for j := range ch {
				if j.group != nil {
					var err error
					if shared, err = p.packSmall(ctx, src, j.group, m, shared[:0], enc); err != nil {
						return err
					}
					continue
				}
				b, err := src.read(j.src, j.off, int64(j.size))
				if err != nil {
					return fmt.Errorf("pack: %w", err)
				}
				p.readBytes.Add(int64(len(b)))
				id := digest.Of(b)
				blocks, err := p.putChunk(ctx, id, b, enc)
				if err != nil {
					return err
				}
				m.Entries[j.entry].Chunks[j.index] = manifest.Chunk{ID: id, Size: uint32(len(b)), Blocks: blocks}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	sort.SliceStable(m.Entries, func(i, j int) bool { return m.Entries[i].Path < m.Entries[j].Path })
	canonicalHardlinks(m)
	return nil
}

// packSmall reads group's small files into one shared chunk (in buf's
// memory), stores it and gives each file its piece of it.
func (p *packer) packSmall(ctx context.Context, src *sourceReader, group []member, m *manifest.Manifest, buf, enc []byte) ([]byte, error) {
	offs := make([]int, len(group))
	for i, f := range group {
		b, err := src.read(f.src, 0, int64(f.size))
		if err != nil {
			return buf, fmt.Errorf("pack: %w", err)
		}
		offs[i] = len(buf)
		buf = append(buf, b...)
	}
	src.close() // a small file is read once: keep no descriptor
	p.readBytes.Add(int64(len(buf)))
	id := digest.Of(buf)
	if _, err := p.putChunkOf(ctx, id, buf, enc, false); err != nil {
		return buf, err
	}
	for i, f := range group {
		m.Entries[f.entry].Chunks[0] = manifest.Chunk{ID: id, Size: uint32(f.size), Off: uint32(offs[i]), Whole: uint32(len(buf))}
	}
	return buf, nil
}

// canonicalHardlinks makes the first name of each hard-linked file, in
// manifest order, the one that carries its contents: the walk met names in
// per-directory order, which can differ from the manifest's whole-path order.
func canonicalHardlinks(m *manifest.Manifest) {
	byPath := make(map[string]int, len(m.Entries))
	for i := range m.Entries {
		byPath[m.Entries[i].Path] = i
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.Type != manifest.Hardlink {
			continue
		}
		t := byPath[e.Target]
		if t < i {
			continue
		}
		// This link precedes its target: it becomes the file, and every link
		// to the old target (the target too) points here.
		old := e.Target
		path := e.Path
		*e = m.Entries[t]
		e.Path = path
		for k := range m.Entries {
			if k != i && (k == t || m.Entries[k].Type == manifest.Hardlink && m.Entries[k].Target == old) {
				m.Entries[k] = manifest.Entry{Path: m.Entries[k].Path, Type: manifest.Hardlink, Target: path}
			}
		}
	}
}

// putChunk stores chunk b (named id) unless the store has it, encoding it
// in enc's memory, and returns the ID of its block index when it has one
// (see chunk.Indexed), storing the index too.
func (p *packer) putChunk(ctx context.Context, id digest.ID, b, enc []byte) (digest.ID, error) {
	return p.putChunkOf(ctx, id, b, enc, true)
}

// putChunkOf is putChunk, with a block index only where index is set (a
// shared chunk is always read whole).
func (p *packer) putChunkOf(ctx context.Context, id digest.ID, b, enc []byte, index bool) (digest.ID, error) {
	v, dup := p.seen.LoadOrStore(id, &seenChunk{done: make(chan struct{})})
	s := v.(*seenChunk)
	if dup {
		select {
		case <-s.done:
		case <-ctx.Done():
			return digest.ID{}, ctx.Err()
		}
		return s.blocks, s.err
	}
	defer close(s.done)
	s.blocks, s.err = p.putNewChunk(ctx, id, b, enc, index)
	return s.blocks, s.err
}

// seenChunk is a chunk this pack has met: done once it is in the store.
type seenChunk struct {
	done   chan struct{}
	blocks digest.ID
	err    error
}

func (p *packer) putNewChunk(ctx context.Context, id digest.ID, b, enc []byte, index bool) (digest.ID, error) {
	h := store.H(store.Chunk, id)
	info, err := p.st.Stat(ctx, h)
	switch {
	case err == nil:
		// Stored before, perhaps by another gpuwarm: whether it is raw,
		// and so can be read by range, is in its length.
		if index && chunk.Indexed(len(b), int(info.Size)) {
			return p.putIndex(ctx, b)
		}
		return digest.ID{}, nil
	case !errors.Is(err, store.ErrNotFound):
		return digest.ID{}, fmt.Errorf("pack: %w", err)
	}
	blob := chunk.EncodeTo(enc[:0], b)
	var blocks digest.ID
	if index && chunk.Indexed(len(b), len(blob)) {
		if blocks, err = p.putIndex(ctx, b); err != nil {
			return digest.ID{}, err
		}
	}
	if err := p.putBlob(ctx, h, blob); err != nil {
		return digest.ID{}, err
	}
	return blocks, nil
}

// putIndex stores the block index of chunk b (a chunk itself, of one block
// for chunks up to 8 MiB, so never indexed in turn) and returns its ID.
func (p *packer) putIndex(ctx context.Context, b []byte) (digest.ID, error) {
	ix := chunk.BlockIndex(b)
	id := digest.Of(ix)
	if _, err := p.putChunk(ctx, id, ix, make([]byte, 0, 1+len(ix))); err != nil {
		return digest.ID{}, err
	}
	return id, nil
}

func (p *packer) putBlob(ctx context.Context, h store.Handle, blob []byte) error {
	p.batchMu.RLock()
	err := p.batch.Put(ctx, h, blob)
	p.batchMu.RUnlock()
	if err != nil {
		return fmt.Errorf("pack: upload chunk: %w", err)
	}
	p.newChunks.Add(1)
	p.newBytes.Add(int64(len(blob)))
	if p.batchBytes.Add(int64(len(blob))) >= commitBytes || p.batchObjects.Add(1) >= commitObjects {
		return p.commit(ctx)
	}
	return nil
}

func (p *packer) progress(total int64, start time.Time) func() {
	if p.opt.Progress == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	draw := func(final bool) {
		n := p.readBytes.Load()
		pct := 100.0
		if total > 0 {
			pct = 100 * float64(n) / float64(total)
		}
		const width = 30
		bar := strings.Repeat("#", int(pct/100*width)) + strings.Repeat(".", width-int(pct/100*width))
		rate := float64(n) / 1e6 / max(time.Since(start).Seconds(), 1e-3)
		end := ""
		if final {
			end = "\n"
		} else if rate > 0 && n < total {
			left := time.Duration(float64(total-n) / 1e6 / rate * float64(time.Second)).Round(time.Second)
			end = fmt.Sprintf("  %s left", left)
		}
		fmt.Fprintf(p.opt.Progress, "\r\033[Kpacking [%s] %5.1f%% %s/%s %6.0f MB/s  new %s%s",
			bar, pct, HumanBytes(n), HumanBytes(total), rate, HumanBytes(p.newBytes.Load()), end)
	}
	go func() {
		defer wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				draw(true)
				return
			case <-t.C:
				draw(false)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func xattrs(path string) ([]manifest.Xattr, error) {
	m, err := ixattrs.List(path)
	if err != nil || len(m) == 0 {
		return nil, err
	}
	out := make([]manifest.Xattr, 0, len(m))
	for name, val := range m {
		out = append(out, manifest.Xattr{Name: name, Value: val})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// HumanBytes formats n as a decimal size.
func HumanBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}

// sourceReader reads a worker's chunks from the files being packed. Files
// of at least directMin bytes are read with O_DIRECT into an aligned
// buffer when the chunk size allows: a pack reads each byte once, and
// filling the page cache costs the allocation of every page (the largest
// system cost of a pack on the benchmark VM) for pages nobody reads again.
type sourceReader struct {
	root   int
	buf    []byte // block-aligned, chunk size plus a block
	src    *srcFile
	fd     int
	direct bool
}

const (
	directMin   = 1 << 20
	directAlign = directio.Align
)

func newSourceReader(root, chunkSize int) *sourceReader {
	raw := make([]byte, chunkSize+2*directAlign)
	return &sourceReader{root: root, buf: directio.Aligned(raw, chunkSize+directAlign), fd: -1}
}

func (r *sourceReader) close() {
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
	r.src = nil
}

// read returns size bytes of f at off (valid until the next read). The
// file must still be the one the walk saw, after the read too: a file
// rewritten while it is packed fails the pack, naming it, rather than be
// packed half old, half new.
func (r *sourceReader) read(f *srcFile, off, size int64) ([]byte, error) {
	if f != r.src || r.fd < 0 {
		r.close()
		r.src = f
		fd, err := openSource(r.root, f, false)
		if err != nil {
			return nil, err
		}
		r.fd, r.direct = fd, false
		if f.st.Size >= directMin && (len(r.buf)-directAlign)%directAlign == 0 {
			if dfd, err := openSource(r.root, f, true); err == nil {
				unix.Close(fd)
				r.fd, r.direct = dfd, true
			} else if errors.Is(err, errChanged) {
				return nil, err
			}
		}
	}
	want := int(size)
	if r.direct {
		// Whole blocks; the file's end makes the last read short.
		want = (want + directAlign - 1) &^ (directAlign - 1)
	}
	b := r.buf[:want]
	n := 0
	for n < int(size) {
		k, err := unix.Pread(r.fd, b[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err == unix.EINVAL && r.direct && n == 0 {
			// This filesystem refuses O_DIRECT reads after all.
			r.close()
			fd, err := openSource(r.root, f, false)
			if err != nil {
				return nil, err
			}
			r.fd, r.direct, r.src = fd, false, f
			b = r.buf[:size]
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: f.full, Err: err}
		}
		if k == 0 {
			return nil, fmt.Errorf("%s: %w (it shrank)", f.full, errChanged)
		}
		n += k
		if r.direct && n%directAlign != 0 && n < int(size) {
			return nil, fmt.Errorf("%s: %w (it shrank)", f.full, errChanged)
		}
	}
	if how, err := f.changed(r.fd); err != nil || how != "" {
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s: %w (%s); pack again once the tree is not being written", f.full, errChanged, how)
	}
	return b[:size], nil
}
