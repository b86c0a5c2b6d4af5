package fusefs

// In-process tests of the mount's decisions: nodes are driven through
// go-fuse's node API over a store, with no kernel mount and no root, as
// stargz-snapshotter's layer tests drive their nodes over a fake blob. The
// end-to-end tests in testing/e2e cover the same paths through the kernel.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
	"github.com/gpuwarm/gpuwarm/manifest/store/simstore"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// countingStore counts reads of tags and can be made to fail.
type countingStore struct {
	store.Store
	tagReads atomic.Int64
	fail     atomic.Bool
}

func (c *countingStore) Get(ctx context.Context, h store.Handle, off, n int64) ([]byte, error) {
	if c.fail.Load() {
		return nil, errors.New("store unreachable")
	}
	if h.Kind == store.Tag {
		c.tagReads.Add(1)
	}
	return c.Store.Get(ctx, h, off, n)
}

type rig struct {
	st    *countingStore
	cache *cache.Cache
	fsys  *FS
	root  *rootNode
	ids   map[string]digest.ID
	// smallFile is pack's SmallFile: -1 (every file its own chunks)
	// unless a test packs small files together (newPackedRig).
	smallFile int
}

// newRig packs trees into a store behind simstore and builds the
// filesystem's root in-process. trees maps a tag to its files.
func newRig(t *testing.T, opt Options, trees map[string]map[string][]byte) *rig {
	t.Helper()
	return newRigPacking(t, opt, trees, -1)
}

// newPackedRig is newRig with pack's default packing of small files.
func newPackedRig(t *testing.T, opt Options, trees map[string]map[string][]byte) *rig {
	t.Helper()
	return newRigPacking(t, opt, trees, 0)
}

func newRigPacking(t *testing.T, opt Options, trees map[string]map[string][]byte, smallFile int) *rig {
	t.Helper()
	ctx := context.Background()
	fst, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{st: &countingStore{Store: simstore.New(fst, 0, 0)}, ids: map[string]digest.ID{}, smallFile: smallFile}
	for tag, files := range trees {
		r.ids[tag] = r.pack(t, tag, files)
	}
	r.cache, err = cache.Open(r.st, cache.Config{Dir: t.TempDir(), MemBytes: 64 << 20, DiskBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.cache.Close() })
	opt.Cache = r.cache
	r.fsys = New(opt)
	r.root = &rootNode{fsys: r.fsys}
	fs.NewNodeFS(r.root, &fs.Options{}) // attaches the root inode; nothing is mounted
	_ = ctx
	return r
}

func (r *rig) pack(t *testing.T, tag string, files map[string][]byte) digest.ID {
	t.Helper()
	dir := t.TempDir()
	for name, b := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res, err := pack.Dir(context.Background(), r.st, dir, pack.Options{ChunkSize: 1 << 20, SmallFile: r.smallFile})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.SetTag(context.Background(), r.st, tag, res.ID); err != nil {
		t.Fatal(err)
	}
	return res.ID
}

// lookup walks a path from the root through the nodes' Lookup methods.
func (r *rig) lookup(t *testing.T, path ...string) (*fs.Inode, syscall.Errno) {
	t.Helper()
	var out fuse.EntryOut
	ctx := context.Background()
	in, errno := r.root.Lookup(ctx, path[0], &out)
	for _, name := range path[1:] {
		if errno != 0 {
			return nil, errno
		}
		in, errno = in.Operations().(fs.NodeLookuper).Lookup(ctx, name, &out)
	}
	return in, errno
}

func (r *rig) node(t *testing.T, path ...string) *node {
	t.Helper()
	in, errno := r.lookup(t, path...)
	if errno != 0 {
		t.Fatalf("lookup %v: %v", path, errno)
	}
	return in.Operations().(*node)
}

func open(t *testing.T, n *node, flags uint32) *handle {
	t.Helper()
	fh, _, errno := n.Open(context.Background(), flags)
	if errno != 0 {
		t.Fatalf("open: %v", errno)
	}
	return fh.(*handle)
}

func read(t *testing.T, n *node, fh *handle) []byte {
	t.Helper()
	dest := make([]byte, n.entry().Size+10)
	res, errno := n.Read(context.Background(), fh, dest, 0)
	if errno != 0 {
		t.Fatalf("read: %v", errno)
	}
	b, _ := res.Bytes(dest)
	out := append([]byte(nil), b...)
	res.Done()
	return out
}

var small = []byte("a small file, one chunk\n")

func TestOpenModes(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB: three chunks
	r := newRig(t, Options{}, map[string]map[string][]byte{"app": {"small.txt": small, "small2.txt": []byte("another small file\n"), "big.bin": big}})
	n := r.node(t, "app", "small.txt")
	ctx := context.Background()

	for _, fl := range []uint32{syscall.O_WRONLY, syscall.O_RDWR, syscall.O_RDONLY | syscall.O_TRUNC, syscall.O_WRONLY | syscall.O_APPEND} {
		if _, _, errno := n.Open(ctx, fl); errno != syscall.EROFS {
			t.Errorf("open with flags %#x: %v, want EROFS", fl, errno)
		}
	}
	dir := r.node(t, "app")
	if _, _, errno := dir.Open(ctx, syscall.O_RDONLY); errno != syscall.EINVAL {
		t.Errorf("open of a directory: %v, want EINVAL", errno)
	}

	// Cold: the chunk is nowhere local, so the daemon serves the open.
	h1 := open(t, n, syscall.O_RDONLY)
	if h1.passthrough {
		t.Fatal("a cold file was opened for passthrough")
	}
	if got := read(t, n, h1); !bytes.Equal(got, small) {
		t.Fatalf("read %q", got)
	}
	// While a cached open is live, new opens are cached too (the kernel
	// refuses to mix modes on one inode), even with the chunk on disk.
	r.cache.Flush()
	r.cache.DropMemory()
	if h := open(t, n, syscall.O_RDONLY); h.passthrough {
		t.Fatal("passthrough open beside a cached one")
	} else {
		h.Release(ctx)
	}
	h1.Release(ctx)
	// Every byte was handed to the kernel's page cache: later opens stay
	// cached, served by the kernel, not by the cold disk-tier file.
	if h := open(t, n, syscall.O_RDONLY); h.passthrough {
		t.Fatal("a file the kernel holds whole was opened for passthrough")
	} else {
		h.Release(ctx)
	}

	// In the disk tier only, never read through the mount: passthrough of
	// the verified disk-tier file.
	n2 := r.node(t, "app", "small2.txt")
	c := n2.entry().Chunks[0]
	if _, err := r.cache.Get(ctx, c.ID, c.Size); err != nil {
		t.Fatal(err)
	}
	r.cache.Flush()
	r.cache.DropMemory()
	h2 := open(t, n2, syscall.O_RDONLY)
	if !h2.passthrough {
		t.Fatal("a file whose chunk sits in the disk tier was not opened for passthrough")
	}
	if fd, ok := h2.PassthroughFd(); !ok || fd <= 0 {
		t.Fatalf("passthrough fd %d, %v", fd, ok)
	}
	h3 := open(t, n2, syscall.O_RDONLY)
	if !h3.passthrough {
		t.Fatal("a second open beside a passthrough one was not passthrough")
	}
	h2.Release(ctx)
	if n2.backing == nil {
		t.Fatal("the backing file was closed while a passthrough handle is open")
	}
	h3.Release(ctx)
	if n2.backing != nil {
		t.Fatal("the backing file stays open after the last passthrough handle")
	}

	// In memory: served from there, not from the disk-tier file.
	if _, err := r.cache.Get(ctx, c.ID, c.Size); err != nil {
		t.Fatal(err)
	}
	if h := open(t, n2, syscall.O_RDONLY); h.passthrough {
		t.Fatal("a file whose chunk is in the memory tier was opened for passthrough")
	} else {
		h.Release(ctx)
	}

	// A multi-chunk file without assembly: always through the daemon.
	bn := r.node(t, "app", "big.bin")
	hb := open(t, bn, syscall.O_RDONLY)
	if hb.passthrough {
		t.Fatal("a multi-chunk file was opened for passthrough without --assemble-files")
	}
	if got := read(t, bn, hb); !bytes.Equal(got[:1<<20], big[:1<<20]) {
		t.Fatal("wrong bytes from the multi-chunk file")
	}
	hb.Release(ctx)
	st := r.fsys.Stats()
	if st.Opens.Passthrough != 2 || st.Opens.Cached != 5 || st.Opens.PageCache != 1 {
		t.Errorf("open counters %+v, want 2 passthrough, 5 cached (1 from the page cache)", st.Opens)
	}
}

func TestNoPassthroughOption(t *testing.T) {
	r := newRig(t, Options{NoPassthrough: true}, map[string]map[string][]byte{"app": {"small.txt": small}})
	n := r.node(t, "app", "small.txt")
	h := open(t, n, syscall.O_RDONLY)
	read(t, n, h)
	h.Release(context.Background())
	r.cache.Flush()
	r.cache.DropMemory()
	if h := open(t, n, syscall.O_RDONLY); h.passthrough {
		t.Fatal("--no-passthrough mount opened a file for passthrough")
	}
}

func TestTagTTL(t *testing.T) {
	const ttl = 2 * time.Second // long enough that a loaded machine stays within it
	r := newRig(t, Options{TagTTL: ttl}, map[string]map[string][]byte{
		"app": {"v.txt": []byte("one\n")}, "other": {"v.txt": []byte("two\n")}})
	ctx := context.Background()
	first := r.node(t, "app")
	if first.img.ID != r.ids["app"] {
		t.Fatal("tag resolved to the wrong image")
	}
	reads := r.st.tagReads.Load()
	// Within the TTL the tag is not read again, even after it moved.
	if err := store.SetTag(ctx, r.st, "app", r.ids["other"]); err != nil {
		t.Fatal(err)
	}
	if n := r.node(t, "app"); n.img.ID != r.ids["app"] {
		t.Fatal("a tag moved within its TTL was followed at once")
	}
	if got := r.st.tagReads.Load(); got != reads {
		t.Fatalf("%d tag reads within the TTL", got-reads)
	}
	// After the TTL the new image is served.
	time.Sleep(ttl + 50*time.Millisecond)
	if n := r.node(t, "app"); n.img.ID != r.ids["other"] {
		t.Fatal("a moved tag was not followed after its TTL")
	}
	// When the store cannot be read, the last answer stands.
	time.Sleep(ttl + 50*time.Millisecond)
	r.st.fail.Store(true)
	if n := r.node(t, "app"); n.img.ID != r.ids["other"] {
		t.Fatal("an unreachable store lost a known tag")
	}
	// A tag never seen cannot be answered from memory: EIO, not ENOENT.
	if _, errno := r.lookup(t, "never-seen"); errno != syscall.EIO {
		t.Fatalf("lookup of an unseen tag with the store down: %v, want EIO", errno)
	}
	r.st.fail.Store(false)
	// A missing tag is ENOENT, and not cached by the kernel.
	var out fuse.EntryOut
	if _, errno := r.root.Lookup(ctx, "missing", &out); errno != syscall.ENOENT || out.EntryTimeout() > time.Millisecond {
		t.Fatalf("missing tag: %v, entry timeout %v", errno, out.EntryTimeout())
	}
	// Names no tag may have are refused without a store read.
	reads = r.st.tagReads.Load()
	if _, errno := r.lookup(t, "a b"); errno != syscall.ENOENT || r.st.tagReads.Load() != reads {
		t.Fatalf("invalid tag name: %v, %d store reads", errno, r.st.tagReads.Load()-reads)
	}
}

func TestPreload(t *testing.T) {
	var mu sync.Mutex
	loaded := map[digest.ID]int{}
	opt := Options{OnImage: func(f *FS, ix *manifest.Index) manifest.Observer {
		mu.Lock()
		loaded[ix.ID]++
		mu.Unlock()
		return nil
	}}
	r := newRig(t, opt, map[string]map[string][]byte{
		"a": {"f": []byte("a")}, "b": {"f": []byte("b")}, "c": {"f": []byte("c")}})
	ctx := context.Background()
	// A tag, an image ID and a name that matches nothing: the error names
	// the missing one, and the others are loaded anyway.
	err := r.fsys.Preload(ctx, []string{"a", r.ids["b"].String(), "nope"})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(`"nope"`)) {
		t.Fatalf("preload error %v, want one naming \"nope\"", err)
	}
	if loaded[r.ids["a"]] != 1 || loaded[r.ids["b"]] != 1 || loaded[r.ids["c"]] != 0 {
		t.Fatalf("loaded %v", loaded)
	}
	// "*" loads every tagged image; each image loads once per mount.
	if err := r.fsys.Preload(ctx, []string{"*"}); err != nil {
		t.Fatal(err)
	}
	var counts []int
	for _, n := range loaded {
		counts = append(counts, n)
	}
	sort.Ints(counts)
	if len(counts) != 3 || counts[2] != 1 {
		t.Fatalf("after preloading *: %v", loaded)
	}
	// A lookup after a preload needs no manifest fetch.
	r.node(t, "c", "f")
	if loaded[r.ids["c"]] != 1 {
		t.Fatal("a preloaded image was loaded again on lookup")
	}
}

// A read the store cannot satisfy is EIO, never ENOENT (which a program
// takes for "no such file" on a file it found); ENOENT is for names that
// are in no image.
func TestMissingObjectsAreEIO(t *testing.T) {
	r := newRig(t, Options{}, map[string]map[string][]byte{
		"app": {"f.txt": []byte("its chunk will vanish\n")}, "gone": {"g.txt": []byte("its manifest will vanish\n")}})
	ctx := context.Background()
	n := r.node(t, "app", "f.txt")
	if err := r.st.Delete(ctx, store.H(store.Chunk, n.entry().Chunks[0].ID)); err != nil {
		t.Fatal(err)
	}
	h := open(t, n, syscall.O_RDONLY)
	if _, errno := n.Read(ctx, h, make([]byte, 64), 0); errno != syscall.EIO {
		t.Fatalf("read of a chunk the store lacks: %v, want EIO", errno)
	}
	if _, errno := r.lookup(t, "app", "no-such-file"); errno != syscall.ENOENT {
		t.Fatalf("lookup of a name not in the image: %v, want ENOENT", errno)
	}
	if err := r.st.Delete(ctx, store.H(store.Manifest, r.ids["gone"])); err != nil {
		t.Fatal(err)
	}
	if _, errno := r.lookup(t, "gone"); errno != syscall.EIO {
		t.Fatalf("lookup of a tag whose manifest the store lacks: %v, want EIO", errno)
	}
	var out fuse.EntryOut
	byID := &byIDNode{fsys: r.fsys}
	r.root.NewPersistentInode(ctx, byID, fs.StableAttr{Mode: syscall.S_IFDIR})
	if _, errno := byID.Lookup(ctx, r.ids["gone"].String(), &out); errno != syscall.ENOENT {
		t.Fatalf("by-id lookup of an image the store lacks: %v, want ENOENT", errno)
	}
}

// TestXattrsNameImageAndFile: the image root names its image, a regular
// file its image and path (what a process outside a container resolves a
// path inside it by), neither listed; a directory has no file name.
func TestXattrsNameImageAndFile(t *testing.T) {
	r := newRig(t, Options{}, map[string]map[string][]byte{"app": {"sub/w.bin": small}})
	ctx := context.Background()
	get := func(n *node, attr string) (string, syscall.Errno) {
		size, errno := n.Getxattr(ctx, attr, nil)
		if errno != 0 {
			return "", errno
		}
		if _, errno := n.Getxattr(ctx, attr, make([]byte, size-1)); errno != syscall.ERANGE {
			t.Errorf("getxattr %s into a short buffer: %v, want ERANGE", attr, errno)
		}
		buf := make([]byte, size)
		n2, errno := n.Getxattr(ctx, attr, buf)
		return string(buf[:n2]), errno
	}
	id := r.ids["app"]
	if v, errno := get(r.node(t, "app"), manifest.ImageXattr); errno != 0 || v != id.String() {
		t.Errorf("image root %s: %q, %v", manifest.ImageXattr, v, errno)
	}
	f := r.node(t, "app", "sub", "w.bin")
	v, errno := get(f, manifest.FileXattr)
	if errno != 0 {
		t.Fatalf("file %s: %v", manifest.FileXattr, errno)
	}
	gotID, gotPath, err := manifest.ParseFileXattr(v)
	if err != nil || gotID != id || gotPath != "sub/w.bin" {
		t.Errorf("file %s = %q: %v %q %v", manifest.FileXattr, v, gotID, gotPath, err)
	}
	if _, errno := get(r.node(t, "app", "sub"), manifest.FileXattr); errno != syscall.ENODATA {
		t.Errorf("directory %s: %v, want ENODATA", manifest.FileXattr, errno)
	}
	if size, errno := f.Listxattr(ctx, nil); errno != 0 || size != 0 {
		t.Errorf("listxattr of a file without packed xattrs: %d, %v", size, errno)
	}
	for _, bad := range []string{"", "x/y", id.String() + "/../etc", id.String()} {
		if _, _, err := manifest.ParseFileXattr(bad); err == nil {
			t.Errorf("ParseFileXattr(%q) accepted", bad)
		}
	}
}

// TestSequentialReads: a file's first read, and a read starting near the
// last one's end (the kernel's readahead requests arrive a little out of
// order), continue a sequential pass; a jump does not, so random reads are
// not fetched ahead of.
func TestSequentialReads(t *testing.T) {
	n := &node{}
	for _, c := range []struct {
		off, size int64
		want      bool
	}{
		{0, 4096, true},
		{4096, 128 << 10, true},
		{1 << 20, 128 << 10, true},                         // one request skipped ahead
		{512 << 10, 128 << 10, true},                       // and the one before it, late
		{900 << 20, 4096, false},                           // a jump
		{3 << 20, 4096, false},                             // and back
		{3<<20 + 4096, 4096, true},                         // then on from there
		{3<<20 + 8192 + seqWindow + 1, 1, false},           // just beyond the window
		{3<<20 + 8192 + seqWindow + 1 + 8192, 4096, false}, // a small read near the last, not at its end
		{3<<20 + 8192 + seqWindow + 1, 128 << 10, true},    // a large one there
	} {
		if got := n.sequential(c.off, c.size); got != c.want {
			t.Errorf("read of %d at %d: sequential %v, want %v", c.size, c.off, got, c.want)
		}
	}
}

// TestScanReadahead: a program reading an image's files in its order (cp,
// tar) has the next files fetched ahead of it, in a window that grows as the
// scan goes on; files opened in another order fetch nothing ahead.
func TestScanReadahead(t *testing.T) {
	files := map[string][]byte{}
	var names []string
	for i := 0; i < 40; i++ {
		name := fmt.Sprintf("d%d/f%02d", i/10, i)
		files[name] = bytes.Repeat([]byte{byte(i), 'x', byte(i >> 8)}, 100<<10) // 300 KiB
		names = append(names, name)
	}
	files["d0/empty"] = nil // not a file a scan waits for
	r := newRig(t, Options{}, map[string]map[string][]byte{"t": files})
	idOf := map[digest.ID]string{}
	for _, name := range names {
		idOf[digest.Of(files[name])] = name
	}
	readFile := func(name string) {
		n := r.node(t, append([]string{"t"}, strings.Split(name, "/")...)...)
		h := open(t, n, syscall.O_RDONLY)
		if got := read(t, n, h); !bytes.Equal(got, files[name]) {
			t.Fatalf("%s: wrong bytes", name)
		}
		h.Release(context.Background())
	}
	// queued drains the readahead queue (no loops run in-process) and
	// returns the files whose chunks it held.
	queued := func() []string {
		var out []string
		for {
			select {
			case ra := <-r.fsys.ra:
				out = append(out, idOf[ra.id])
			default:
				sort.Strings(out)
				return out
			}
		}
	}
	// Out of order: nothing ahead.
	for _, i := range []int{12, 5, 30, 7} {
		readFile(names[i])
		if q := queued(); len(q) != 0 {
			t.Fatalf("after reading %s out of order, queued %v", names[i], q)
		}
	}
	// In order from f00: the third file starts the scan with 2 MiB
	// ahead (7 files of 300 KiB, across directories), and each file after
	// it doubles the window.
	readFile(names[0])
	readFile(names[1])
	if q := queued(); len(q) != 0 {
		t.Fatalf("after two files in order, queued %v", q)
	}
	readFile(names[2])
	// f05 and f07 were read above: their chunks are in memory.
	if q, want := queued(), []string{names[3], names[4], names[6], names[8], names[9]}; !slices.Equal(q, want) {
		t.Fatalf("after three files in order, queued %v, want %v", q, want)
	}
	readFile(names[3])
	q := queued()
	if len(q) == 0 || q[0] != names[10] || q[len(q)-1] != names[17] {
		t.Fatalf("after four files in order, queued %v, want f10 to f17 (the window doubled, nothing queued twice)", q)
	}
	readFile(names[4])
	if q := queued(); len(q) == 0 || q[0] != names[18] {
		t.Fatalf("after five files in order, queued %v, want the scan to go on from f18", q)
	}
	// A file skipped (f05, read before) does not end the scan; a jump
	// does.
	readFile(names[6])
	if q := queued(); len(q) == 0 || q[0] == names[18] {
		t.Fatalf("after a file skipped, queued %v, want the scan to go on", q)
	}
	readFile(names[20])
	if q := queued(); len(q) != 0 {
		t.Fatalf("after a jump, queued %v", q)
	}
}

// Under .rootfs (a container's lower layer) a file is never opened by
// passthrough, where the same file by tag or by-id would be, and its inode
// is not theirs.
func TestRootfsNeverPassthrough(t *testing.T) {
	r := newRig(t, Options{}, map[string]map[string][]byte{"app": {"lib.so": small}})
	ctx := context.Background()
	id := r.ids["app"].String()
	tagged := r.node(t, "app", "lib.so")
	c := tagged.entry().Chunks[0]
	if _, err := r.cache.Get(ctx, c.ID, c.Size); err != nil {
		t.Fatal(err)
	}
	r.cache.Flush()
	r.cache.DropMemory()
	for _, path := range [][]string{{byIDName, id, "lib.so"}, {"app", "lib.so"}} {
		n := r.node(t, path...)
		h := open(t, n, syscall.O_RDONLY)
		if !h.passthrough {
			t.Fatalf("%v: a file in the disk tier was not opened by passthrough", path)
		}
		h.Release(ctx)
	}
	n := r.node(t, rootfsName, id, "lib.so")
	h := open(t, n, syscall.O_RDONLY)
	if h.passthrough {
		t.Fatal("a file under .rootfs was opened by passthrough")
	}
	if got := read(t, n, h); !bytes.Equal(got, small) {
		t.Fatalf("read %q", got)
	}
	h.Release(ctx)
	if a, b := n.stable().Ino, tagged.stable().Ino; a == b {
		t.Fatal("the file under .rootfs shares its inode with the tag's")
	}
}

// TestRandomReadsFetchBlocks: reads that jump about a large file of
// incompressible bytes fetch only the blocks they touch; a file read from
// its start fetches whole chunks (and reads ahead).
func TestRandomReadsFetchBlocks(t *testing.T) {
	big := make([]byte, 12<<20)
	rand.New(rand.NewSource(3)).Read(big)
	r := newRig(t, Options{}, map[string]map[string][]byte{"t": {"weights.bin": big, "seq.bin": big[:3<<20]}})
	n := r.node(t, "t", "weights.bin")
	fh := open(t, n, 0)
	ctx := context.Background()
	// Each more than the sequential window (4 MiB) from the last.
	offs := []int64{9<<20 + 1234, 1<<20 + 4096, 11<<20 + 100000, 6 << 20}
	for _, off := range offs {
		dest := make([]byte, 4096)
		res, errno := n.Read(ctx, fh, dest, off)
		if errno != 0 {
			t.Fatalf("read at %d: %v", off, errno)
		}
		b, _ := res.Bytes(dest)
		if !bytes.Equal(b, big[off:off+4096]) {
			t.Fatalf("read at %d: wrong bytes", off)
		}
		res.Done()
	}
	s := r.cache.Stats()
	// Each read: its chunk's block index and one block (none of these
	// spans a block boundary).
	if s.RangedFetches != int64(len(offs)) || s.FetchBytes > int64(len(offs))*(16<<10+2<<10+2) {
		t.Fatalf("%d random 4 KiB reads: %d ranged fetches, %d bytes fetched", len(offs), s.RangedFetches, s.FetchBytes)
	}
	// A file read from its start is fetched chunk by chunk, whole.
	sq := r.node(t, "t", "seq.bin")
	if got := read(t, sq, open(t, sq, 0)); !bytes.Equal(got, big[:3<<20]) {
		t.Fatal("sequential read: wrong bytes")
	}
	if s2 := r.cache.Stats(); s2.RangedFetches != s.RangedFetches {
		t.Fatalf("a sequential read fetched %d blocks by range", s2.RangedFetches-s.RangedFetches)
	}
}

// Small files packed together are read from their shared chunk: the first
// read of a directory's small files fetches the chunk, the others come
// from the cache; each read gets exactly its own file's bytes; a small file
// is never opened by passthrough (the disk tier's file is the whole chunk).
func TestSmallFilesReadFromTheirSharedChunk(t *testing.T) {
	files := map[string][]byte{"big.bin": bytes.Repeat([]byte("0123456789abcdef"), 3<<16)}
	for i := range 30 {
		files[fmt.Sprintf("py/m%02d.py", i)] = bytes.Repeat([]byte(fmt.Sprintf("module %d\n", i)), 100+i*37)
	}
	files["py/sub/deep.py"] = []byte("print('deep')\n")
	files["py/sub/deeper.py"] = []byte("print('deeper')\n")
	r := newPackedRig(t, Options{}, map[string]map[string][]byte{"app": files})
	ctx := context.Background()
	chunks := map[digest.ID]bool{}
	for i := range 30 {
		n := r.node(t, "app", "py", fmt.Sprintf("m%02d.py", i))
		c := n.entry().Chunks[0]
		if !c.Shared() {
			t.Fatalf("m%02d.py: not in a shared chunk: %+v", i, c)
		}
		chunks[c.ID] = true
	}
	before := r.cache.Stats().Fetches
	for i := range 30 {
		name := fmt.Sprintf("m%02d.py", i)
		n := r.node(t, "app", "py", name)
		h := open(t, n, syscall.O_RDONLY)
		if got := read(t, n, h); !bytes.Equal(got, files["py/"+name]) {
			t.Fatalf("%s: read %d bytes that are not the file's", name, len(got))
		}
		h.Release(ctx)
	}
	if got := r.cache.Stats().Fetches - before; got != int64(len(chunks)) {
		t.Fatalf("reading 30 small files of %d shared chunks fetched %d chunks", len(chunks), got)
	}
	// In the disk tier only: still served by the daemon, piece by piece.
	n := r.node(t, "app", "py", "sub", "deeper.py")
	r.cache.Flush()
	r.cache.DropMemory()
	h := open(t, n, syscall.O_RDONLY)
	if h.passthrough {
		t.Fatal("a small file was opened by passthrough of its shared chunk")
	}
	if got := read(t, n, h); !bytes.Equal(got, files["py/sub/deeper.py"]) {
		t.Fatalf("deeper.py read %q", got)
	}
	h.Release(ctx)
}
