package fusefs

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/fusefs/transport/uring"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const (
	byIDName   = manifest.ByIDDir
	rootfsName = manifest.RootfsDir
)

// rootNode lists the tags, resolved afresh every TagTTL.
type rootNode struct {
	fs.Inode
	fsys *FS
}

var (
	_ = (fs.NodeLookuper)((*rootNode)(nil))
	_ = (fs.NodeReaddirer)((*rootNode)(nil))
	_ = (fs.NodeGetattrer)((*rootNode)(nil))
	_ = (fs.NodeStatfser)((*rootNode)(nil))
)

func (r *rootNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	defer r.fsys.timeOp(ctx, opGetattr, time.Now())
	out.Mode = syscall.S_IFDIR | 0o555
	if g := r.fsys.opt.Group; g > 0 {
		out.Mode, out.Gid = syscall.S_IFDIR|0o550, uint32(g)
	}
	out.Nlink = 2
	out.SetTimeout(r.fsys.opt.TagTTL)
	return 0
}

func (r *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer r.fsys.timeOp(ctx, opLookup, time.Now())
	ttl := r.fsys.opt.TagTTL
	if name == StatsName {
		out.Mode = r.fsys.statsMode()
		out.SetEntryTimeout(time.Hour)
		out.SetAttrTimeout(time.Nanosecond)
		return r.NewInode(ctx, &statsNode{fsys: r.fsys}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: tagIno(StatsName)}), 0
	}
	if name == byIDName || name == rootfsName {
		out.Mode = syscall.S_IFDIR | 0o555
		out.SetEntryTimeout(time.Hour)
		return r.NewInode(ctx, &byIDNode{fsys: r.fsys, rootfs: name == rootfsName}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: tagIno(name)}), 0
	}
	if uring.OnQueueThread() {
		return nil, uring.WouldWait // the store may have to be asked
	}
	id, ok, err := r.fsys.resolveTag(ctx, name, false)
	if err != nil {
		r.fsys.log.Error("cannot resolve a tag", "tag", name, "store", r.fsys.st.Location(), "err", err)
		return nil, errno(err)
	}
	if !ok {
		// A tag may be created at any moment: do not let the kernel cache
		// the miss.
		out.SetEntryTimeout(time.Nanosecond)
		return nil, syscall.ENOENT
	}
	ch, errno := imageRoot(ctx, &r.Inode, r.fsys, id, false, out)
	if errno == 0 {
		out.SetEntryTimeout(ttl)
	}
	return ch, errno
}

func (r *rootNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	defer r.fsys.timeOp(ctx, opReaddir, time.Now())
	if uring.OnQueueThread() {
		return nil, uring.WouldWait
	}
	tags, err := r.fsys.resolveTags(ctx, false)
	if err != nil {
		r.fsys.log.Error("cannot list tags", "store", r.fsys.st.Location(), "err", err)
		return nil, errno(err)
	}
	ents := []fuse.DirEntry{{Name: byIDName, Mode: syscall.S_IFDIR, Ino: tagIno(byIDName)}}
	for _, n := range sortedNames(tags) {
		ents = append(ents, fuse.DirEntry{Name: n, Mode: syscall.S_IFDIR, Ino: ino(tags[n], "")})
	}
	return fs.NewListDirStream(ents), 0
}

func (r *rootNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	defer r.fsys.timeOp(ctx, opStatfs, time.Now())
	r.fsys.mu.Lock()
	defer r.fsys.mu.Unlock()
	var bytes, files uint64
	for _, ix := range r.fsys.images {
		bytes += uint64(ix.Bytes())
		files += uint64(len(ix.Entries))
	}
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = (bytes + 4095) / 4096
	out.Files = files
	out.NameLen = manifest.MaxName
	return 0
}

// byIDNode resolves image IDs; it lists the images this mount has loaded.
// Under RootfsDir (rootfs set) the images' nodes are other inodes than
// under ByIDDir and tags, and never opened by passthrough: a container's
// root filesystem is an overlay over them, and a file mapped through an
// overlay over a passthrough open is mapped from the disk-tier file, by
// a path (the lower layer's, on a mount private to the overlay) that CRIU
// cannot find in the container's mount namespace, so it refuses to
// checkpoint the container.
type byIDNode struct {
	fs.Inode
	fsys   *FS
	rootfs bool
}

var (
	_ = (fs.NodeLookuper)((*byIDNode)(nil))
	_ = (fs.NodeReaddirer)((*byIDNode)(nil))
)

func (b *byIDNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer b.fsys.timeOp(ctx, opLookup, time.Now())
	id, err := digest.Parse(name)
	if err != nil || strings.ToLower(name) != name {
		return nil, syscall.ENOENT
	}
	if uring.OnQueueThread() {
		return nil, uring.WouldWait // the image may have to be loaded
	}
	if _, err := b.fsys.Image(ctx, id); errors.Is(err, store.ErrNotFound) {
		out.SetEntryTimeout(time.Nanosecond)
		return nil, syscall.ENOENT // no such image: a name not in by-id
	}
	return imageRoot(ctx, &b.Inode, b.fsys, id, b.rootfs, out)
}

func (b *byIDNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	defer b.fsys.timeOp(ctx, opReaddir, time.Now())
	b.fsys.mu.Lock()
	defer b.fsys.mu.Unlock()
	var ents []fuse.DirEntry
	for id := range b.fsys.images {
		ents = append(ents, fuse.DirEntry{Name: id.String(), Mode: syscall.S_IFDIR, Ino: nodeIno(id, "", b.rootfs)})
	}
	return fs.NewListDirStream(ents), 0
}

func imageRoot(ctx context.Context, parent *fs.Inode, f *FS, id digest.ID, rootfs bool, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ix, err := f.Image(ctx, id)
	if err != nil {
		e := errno(err)
		if e != syscall.EINTR {
			f.log.Error("cannot load image", "image", id.Short(), "err", err)
		}
		return nil, e
	}
	n := &node{fsys: f, img: ix, idx: 0, rootfs: rootfs}
	n.fill(&out.Attr)
	return parent.NewInode(ctx, n, n.stable()), 0
}

// node is an entry of an image.
type node struct {
	fs.Inode
	fsys *FS
	img  *manifest.Index
	idx  int // resolved: never a Hardlink entry
	// rootfs: under RootfsDir (see byIDNode); never opened by passthrough.
	rootfs bool

	openMu           sync.Mutex
	cachedOpens      int
	passthroughOpens int
	backing          *os.File
	backingID        cache.Identity // backing's when the first passthrough open took it

	// pageCache tracks whether the kernel's page cache of this inode holds
	// the whole file: served counts the bytes cached-mode reads returned,
	// and once that reaches the size every page has been handed to the
	// kernel. A read after that means the kernel dropped some (memory
	// pressure, drop_caches), and the count starts again. While the page
	// cache is full, opens stay in cached mode, because a passthrough open
	// would read the disk-tier file instead, whose pages are cold (it was
	// written with O_DIRECT) and which is hashed at its first open.
	served      atomic.Int64
	inPageCache atomic.Bool
	// readEnd is where the last read ended: a read starting near it is
	// part of a sequential pass, which the next chunks are fetched ahead of.
	readEnd atomic.Int64
	// pushed holds the chunks whose bytes were handed to the kernel after
	// a read out of sequence (pushRest).
	pushMu sync.Mutex
	pushed map[int]struct{}
}

var (
	_ = (fs.NodeLookuper)((*node)(nil))
	_ = (fs.NodeReaddirer)((*node)(nil))
	_ = (fs.NodeOpendirHandler)((*node)(nil))
	_ = (fs.NodeGetattrer)((*node)(nil))
	_ = (fs.NodeOpener)((*node)(nil))
	_ = (fs.NodeReader)((*node)(nil))
	_ = (fs.NodeReadlinker)((*node)(nil))
	_ = (fs.NodeGetxattrer)((*node)(nil))
	_ = (fs.NodeListxattrer)((*node)(nil))
	_ = (fs.NodeStatfser)((*node)(nil))
)

func (n *node) entry() *manifest.Entry { return &n.img.Entries[n.idx] }

func modeBits(t manifest.Type) uint32 {
	switch t {
	case manifest.Dir:
		return syscall.S_IFDIR
	case manifest.Symlink:
		return syscall.S_IFLNK
	}
	return syscall.S_IFREG
}

func (n *node) stable() fs.StableAttr {
	e := n.entry()
	return fs.StableAttr{Mode: modeBits(e.Type), Ino: nodeIno(n.img.ID, e.Path, n.rootfs)}
}

func (n *node) fill(a *fuse.Attr) {
	e := n.entry()
	a.Ino = nodeIno(n.img.ID, e.Path, n.rootfs)
	a.Mode = modeBits(e.Type) | e.Mode
	a.Size = uint64(e.Size)
	a.Blocks = (a.Size + 511) / 512
	a.Nlink = n.img.Nlink(n.idx)
	a.Owner = fuse.Owner{Uid: e.UID, Gid: e.GID}
	sec, nsec := uint64(e.Mtime/1e9), uint32(e.Mtime%1e9)
	if e.Mtime < 0 {
		sec, nsec = 0, 0
	}
	a.Mtime, a.Mtimensec = sec, nsec
	a.Atime, a.Atimensec = sec, nsec
	a.Ctime, a.Ctimensec = sec, nsec
	a.Blksize = 1 << 17
}

func (n *node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	defer n.fsys.timeOp(ctx, opGetattr, time.Now())
	n.fill(&out.Attr)
	return 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer n.fsys.timeOp(ctx, opLookup, time.Now())
	// A program starting up looks files up between its reads: the cache's
	// background writes wait while it does.
	n.fsys.cache.Active()
	e := n.entry()
	if e.Type != manifest.Dir {
		return nil, syscall.ENOTDIR
	}
	p := name
	if e.Path != "" {
		p = e.Path + "/" + name
	}
	i, ok := n.img.Lookup(p)
	if !ok {
		return nil, syscall.ENOENT
	}
	ch := &node{fsys: n.fsys, img: n.img, idx: n.img.Resolve(i), rootfs: n.rootfs}
	ch.fill(&out.Attr)
	in := n.NewInode(ctx, ch, ch.stable())
	ch.register()
	return in, 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	defer n.fsys.timeOp(ctx, opReaddir, time.Now())
	kids := n.img.Children(n.idx)
	ents := make([]fuse.DirEntry, 0, len(kids))
	for _, k := range kids {
		r := n.img.Resolve(int(k))
		ents = append(ents, fuse.DirEntry{
			Name: manifest.Base(n.img.Entries[k].Path),
			Mode: modeBits(n.img.Entries[r].Type),
			Ino:  nodeIno(n.img.ID, n.img.Entries[r].Path, n.rootfs),
		})
	}
	return fs.NewListDirStream(ents), 0
}

// OpendirHandle lets the kernel keep the directory's entries in its cache
// (FOPEN_CACHE_DIR): an image directory never changes (its inode is the
// image's), so every later listing of it, by any process, is answered
// without a round trip (a Python starting up lists each directory on its
// path). The tag root and by-id list what changes, and are not cached.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return &dirHandle{n: n}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// dirHandle lists its directory when the kernel first asks for entries,
// not at OPENDIR: the kernel still opens the directory every time, while
// its cache answers the listing.
type dirHandle struct {
	n  *node
	ds fs.DirStream // go-fuse calls a handle's methods one at a time
}

var (
	_ = (fs.FileReaddirenter)((*dirHandle)(nil))
	_ = (fs.FileSeekdirer)((*dirHandle)(nil))
	_ = (fs.FileReleasedirer)((*dirHandle)(nil))
)

func (d *dirHandle) stream(ctx context.Context) (fs.DirStream, syscall.Errno) {
	if d.ds == nil {
		ds, errno := d.n.Readdir(ctx)
		if errno != 0 {
			return nil, errno
		}
		d.ds = ds
	}
	return d.ds, 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	ds, errno := d.stream(ctx)
	if errno != 0 || !ds.HasNext() {
		return nil, errno
	}
	e, errno := ds.Next()
	return &e, errno
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	ds, errno := d.stream(ctx)
	if errno != 0 {
		return errno
	}
	if sd, ok := ds.(fs.FileSeekdirer); ok {
		return sd.Seekdir(ctx, off)
	}
	return syscall.ENOTSUP
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	if d.ds != nil {
		d.ds.Close()
	}
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	defer n.fsys.timeOp(ctx, opReadlink, time.Now())
	e := n.entry()
	if e.Type != manifest.Symlink {
		return nil, syscall.EINVAL
	}
	return []byte(e.Target), 0
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	defer n.fsys.timeOp(ctx, opGetxattr, time.Now())
	e := n.entry()
	switch {
	case n.idx == 0 && attr == manifest.ImageXattr:
		return xattrValue(n.img.ID.String(), dest)
	case e.Type == manifest.Regular && attr == manifest.FileXattr:
		return xattrValue(n.img.ID.String()+"/"+e.Path, dest)
	}
	for _, x := range e.Xattrs {
		if x.Name == attr {
			return xattrValue(x.Value, dest)
		}
	}
	return 0, syscall.ENODATA
}

// xattrValue answers a getxattr of v into dest (an empty dest asks the size).
func xattrValue[T string | []byte](v T, dest []byte) (uint32, syscall.Errno) {
	if len(dest) == 0 {
		return uint32(len(v)), 0
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	defer n.fsys.timeOp(ctx, opListxattr, time.Now())
	var size int
	for _, x := range n.entry().Xattrs {
		size += len(x.Name) + 1
	}
	if len(dest) == 0 {
		return uint32(size), 0
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	off := 0
	for _, x := range n.entry().Xattrs {
		off += copy(dest[off:], x.Name)
		dest[off] = 0
		off++
	}
	return uint32(off), 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	defer n.fsys.timeOp(ctx, opStatfs, time.Now())
	out.Bsize, out.Frsize = 4096, 4096
	out.Blocks = uint64(n.img.Bytes()+4095) / 4096
	out.Files = uint64(len(n.img.Entries))
	out.NameLen = manifest.MaxName
	return 0
}
