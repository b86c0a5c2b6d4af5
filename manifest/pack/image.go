package pack

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"path"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"

	"github.com/gpuwarm/gpuwarm/internal/directio"
	"github.com/gpuwarm/gpuwarm/internal/inflate"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

// Annotations of an image packed from an OCI image.
const (
	AnnKind        = "gpuwarm.kind" // "oci-image"
	AnnOCIRef      = "oci.ref"      // what it was packed from, as given
	AnnOCIDigest   = "oci.digest"   // the image manifest's digest
	AnnOCIConfig   = "oci.config"   // the config's "config" object (Env, Entrypoint, Cmd, ...), JSON
	AnnOCIPlatform = "oci.platform" // os/architecture
)

// maxConfigJSON bounds the config kept with the image.
const maxConfigJSON = 1 << 20

// Image packs the root filesystem of img into st: its layers applied in
// order (OCI whiteouts and opaque directories honoured), as one image whose
// annotations keep the image's runtime configuration. Layers are streamed:
// nothing is written to local disk. ref is recorded as given.
//
// Nothing in a layer is trusted. Every layer's compressed bytes are checked
// against its digest (a mismatch fails the pack after the layer's last
// byte, before the image is stored). Paths are taken relative to the
// image's root: one with a ".." component, or one that goes through a
// symlink or a file of an earlier entry, fails the pack naming it; so do a
// whiteout of the root, a hard link to what is not a regular file of the
// image, more entries than a manifest holds and an unsupported media
// type. Device nodes, fifos and sockets are left out with a warning (the
// runtime provides /dev). No entry is ever written anywhere but the store,
// as chunks and one manifest.
func Image(ctx context.Context, st store.Store, img v1.Image, ref string, opt Options) (*Result, error) {
	start := time.Now()
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	p := &packer{st: st, opt: opt, log: opt.Logger, batch: store.NewBatch(st)}
	ann, err := imageAnnotations(img, ref)
	if err != nil {
		return nil, err
	}
	for k, v := range opt.Annotations {
		ann[k] = v
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("pack %s: layers: %w", ref, err)
	}
	_, fetched := img.(fetchedImage)
	t := newFlatTree()
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan imageChunk, opt.Workers)
	pool := sync.Pool{New: func() any { b := make([]byte, opt.ChunkSize); return &b }}
	for w := 0; w < opt.Workers; w++ {
		g.Go(func() error {
			encRaw := make([]byte, directio.Round(1+opt.ChunkSize)+directAlign)
			enc := directio.Aligned(encRaw, directio.Round(1+opt.ChunkSize))
			for j := range jobs {
				b := (*j.buf)[:j.n]
				id := digest.Of(b)
				var err error
				if j.pieces != nil {
					_, err = p.putChunkOf(gctx, id, b, enc, false)
					for _, f := range j.pieces {
						f.obj.chunks[0] = manifest.Chunk{ID: id, Size: uint32(f.size), Off: uint32(f.off), Whole: uint32(len(b))}
					}
				} else {
					var blocks digest.ID
					blocks, err = p.putChunk(gctx, id, b, enc)
					j.obj.chunks[j.index] = manifest.Chunk{ID: id, Size: uint32(len(b)), Blocks: blocks}
				}
				if j.pooled {
					pool.Put(j.buf)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	// Layers are read (fetched, decompressed, cut into chunks) several at
	// a time: a layer's gunzip runs on one core, and the chunks of a file
	// a later layer removes only cost an upload gc takes back. They are
	// applied to the tree one after the other, in order, as each is read.
	type layerOut struct {
		recs []layerRec
		err  error
		done chan struct{}
	}
	outs := make([]*layerOut, len(layers))
	for i := range outs {
		outs[i] = &layerOut{done: make(chan struct{})}
	}
	readers, rctx := errgroup.WithContext(gctx)
	readers.SetLimit(max(2, runtime.GOMAXPROCS(0)/2))
	g.Go(func() error {
		defer close(jobs)
		for i, l := range layers {
			readers.Go(func() error {
				defer close(outs[i].done)
				outs[i].recs, outs[i].err = p.readLayer(rctx, l, fetched, jobs, &pool)
				if outs[i].err != nil {
					return fmt.Errorf("pack %s: layer %d of %d: %w", ref, i+1, len(layers), outs[i].err)
				}
				return nil
			})
		}
		return readers.Wait()
	})
	g.Go(func() error {
		for i, o := range outs {
			select {
			case <-o.done:
			case <-gctx.Done():
				return gctx.Err()
			}
			if o.err != nil {
				return fmt.Errorf("pack %s: layer %d of %d: %w", ref, i+1, len(layers), o.err)
			}
			t.startLayer()
			for _, r := range o.recs {
				if _, err := t.applyWith(r.hdr, r.obj); err != nil {
					return fmt.Errorf("pack %s: layer %d of %d: %w", ref, i+1, len(layers), err)
				}
				if t.count() > manifest.MaxEntries {
					return fmt.Errorf("pack %s: the image has more than %d entries, the most one image holds", ref, manifest.MaxEntries)
				}
			}
			o.recs = nil
		}
		return nil
	})
	if err := p.finish(ctx, g.Wait()); err != nil {
		return nil, err
	}
	if t.skipped > 0 {
		p.log.Warn("left out of the image: device nodes, fifos and sockets (the runtime provides /dev)", "ref", ref, "entries", t.skipped)
	}
	m := &manifest.Manifest{Annotations: ann, Entries: t.entries()}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("pack %s: the flattened image is not a valid manifest: %w", ref, err)
	}
	enc := m.Encode()
	id := digest.Of(enc)
	if err := st.Put(ctx, store.H(store.Manifest, id), enc); err != nil {
		return nil, fmt.Errorf("pack: store manifest: %w", err)
	}
	return &Result{
		ID: id, Stats: m.Stats(), NewChunks: int(p.newChunks.Load()), NewBytes: p.newBytes.Load(),
		ReadBytes: p.readBytes.Load(), Duration: time.Since(start), ManifestLen: len(enc),
	}, nil
}

type imageChunk struct {
	buf    *[]byte
	pooled bool // buf goes back to the pool once stored
	n      int
	obj    *fileObj
	index  int
	// pieces, when set, are the small files buf holds: a shared chunk.
	pieces []sharedPiece
}

// sharedPiece is a small file's place in a shared chunk.
type sharedPiece struct {
	obj       *fileObj
	off, size int
}

// imageAnnotations are the annotations that keep what the image says of
// how to run it.
func imageAnnotations(img v1.Image, ref string) (map[string]string, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("pack %s: image config: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("pack %s: image digest: %w", ref, err)
	}
	cfg, err := json.Marshal(cf.Config)
	if err != nil {
		return nil, err
	}
	if len(cfg) > maxConfigJSON {
		return nil, fmt.Errorf("pack %s: the image's config is %d bytes, over the %d kept with an image", ref, len(cfg), maxConfigJSON)
	}
	ann := map[string]string{
		AnnKind:      "oci-image",
		AnnOCIRef:    ref,
		AnnOCIDigest: d.String(),
		AnnOCIConfig: string(cfg),
	}
	if cf.OS != "" {
		ann[AnnOCIPlatform] = cf.OS + "/" + cf.Architecture
	}
	return ann, nil
}

// ImageConfig returns the runtime configuration kept with an image packed
// from an OCI image; ok is false for other images.
func ImageConfig(ann map[string]string) (cfg v1.Config, ok bool, err error) {
	s, ok := ann[AnnOCIConfig]
	if !ok {
		return cfg, false, nil
	}
	if err := json.Unmarshal([]byte(s), &cfg); err != nil {
		return cfg, true, fmt.Errorf("the image's %s annotation: %w", AnnOCIConfig, err)
	}
	return cfg, true, nil
}

// layerReader opens a layer's tar stream, checking its compressed bytes
// against its digest as they are read (verified at EOF by check). With
// fetched, the layer's own reader checks them (a registry's layers: see
// fetchedImage), and check reads it to its end for that.
func layerReader(l v1.Layer, fetched bool) (r io.Reader, check func() error, closeAll func(), err error) {
	mt, err := l.MediaType()
	if err != nil {
		return nil, nil, nil, err
	}
	dig, err := l.Digest()
	if err != nil {
		return nil, nil, nil, err
	}
	var decomp func(io.Reader) (io.Reader, func(), error)
	switch mt {
	case types.OCILayer, types.DockerLayer:
		decomp = func(r io.Reader) (io.Reader, func(), error) {
			// ISA-L's inflate where the machine has it: a layer's gunzip
			// is one core's work, and often the pack's bound.
			z, err := inflate.NewReader(r)
			if err != nil {
				return nil, nil, err
			}
			return z, func() { z.Close() }, nil
		}
	case types.OCILayerZStd:
		decomp = func(r io.Reader) (io.Reader, func(), error) {
			z, err := zstd.NewReader(r)
			if err != nil {
				return nil, nil, err
			}
			return z, z.Close, nil
		}
	case types.OCIUncompressedLayer, types.DockerUncompressedLayer:
		decomp = func(r io.Reader) (io.Reader, func(), error) { return r, func() {}, nil }
	default:
		return nil, nil, nil, fmt.Errorf("layer %s has media type %q, which gpuwarm does not unpack (it takes OCI and Docker tar layers: plain, gzip or zstd)", dig, mt)
	}
	if dig.Algorithm != "sha256" {
		return nil, nil, nil, fmt.Errorf("layer digest %s: only sha256 digests are checked", dig)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, nil, nil, err
	}
	var h hash.Hash
	var src io.Reader = rc
	if fetched {
		src = checkedReader{rc}
	} else {
		h = sha256.New()
	}
	cr := &countingHash{r: src, h: h}
	dr, closeD, err := decomp(cr)
	if err != nil {
		rc.Close()
		return nil, nil, nil, fmt.Errorf("layer %s: %w", dig, err)
	}
	check = func() error {
		// The tar reader stops at the end-of-archive blocks: the rest of
		// the compressed stream must still be read and hashed.
		if _, err := io.Copy(io.Discard, dr); err != nil {
			return fmt.Errorf("layer %s: %w", dig, err)
		}
		if _, err := io.Copy(io.Discard, cr); err != nil {
			return fmt.Errorf("layer %s: %w", dig, err)
		}
		if h == nil {
			return nil
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != dig.Hex {
			return fmt.Errorf("layer %s: its bytes hash to sha256:%s: %s", dig, got, corruptLayer)
		}
		return nil
	}
	return dr, check, func() { closeD(); cr.close(); rc.Close() }, nil
}

// corruptLayer says what a layer whose bytes fail their check means.
const corruptLayer = "the layer is corrupt or not the one the image names; nothing was stored under a tag"

// checkedReader reads a layer whose reader checks its bytes, and says what
// a failure means.
type checkedReader struct{ r io.Reader }

func (c checkedReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w: %s", err, corruptLayer)
	}
	return n, err
}

// countingHash reads a layer's compressed bytes ahead of the decompressor
// and hashes them into h (unless nil), in a goroutine of its own: fetching
// and SHA-256 of the compressed stream then overlap gunzip, which would otherwise wait for
// both on its one core (a pack from a local registry went from 0.45x to
// 0.57-0.61x of a directory pack's speed on the 2-CPU VM, where the pack
// is CPU-bound: gunzip is work a directory pack does not do).
type countingHash struct {
	r    io.Reader
	h    hash.Hash
	once sync.Once
	ch   chan aheadBlock
	stop chan struct{}
	cur  aheadBlock
	off  int
}

type aheadBlock struct {
	b   []byte
	err error
}

const aheadSize, aheadDepth = 256 << 10, 8

func (c *countingHash) start() {
	c.ch = make(chan aheadBlock, aheadDepth)
	c.stop = make(chan struct{})
	go func() {
		defer close(c.ch)
		for {
			b := make([]byte, aheadSize)
			n, err := io.ReadFull(c.r, b)
			if c.h != nil {
				c.h.Write(b[:n])
			}
			if err == io.ErrUnexpectedEOF {
				err = io.EOF
			}
			select {
			case c.ch <- aheadBlock{b[:n], err}:
			case <-c.stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
}

func (c *countingHash) Read(p []byte) (int, error) {
	c.once.Do(c.start)
	for c.off >= len(c.cur.b) {
		if c.cur.err != nil {
			return 0, c.cur.err
		}
		blk, ok := <-c.ch
		if !ok {
			return 0, io.EOF
		}
		c.cur, c.off = blk, 0
	}
	n := copy(p, c.cur.b[c.off:])
	c.off += n
	return n, nil
}

// close stops the read-ahead (before the layer's reader is closed).
func (c *countingHash) close() {
	c.once.Do(func() {})
	if c.stop != nil {
		close(c.stop)
	}
}

// layerRec is one entry of a layer as read: its header and, for a
// regular file, the object its chunks go into.
type layerRec struct {
	hdr *tar.Header
	obj *fileObj
}

// readLayer reads a layer's tar stream, checks its digest, and cuts every
// regular file into chunks for the workers; the entries are applied to the
// tree later, in layer order (flatTree.applyWith).
func (p *packer) readLayer(ctx context.Context, l v1.Layer, fetched bool, jobs chan<- imageChunk, pool *sync.Pool) ([]layerRec, error) {
	r, check, closeAll, err := layerReader(l, fetched)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	tr := tar.NewReader(r)
	var recs []layerRec
	small := layerSmallFiles{dirs: map[string][]smallFile{}}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading the layer's tar stream: %w", err)
		}
		if len(recs) >= manifest.MaxEntries {
			return nil, fmt.Errorf("the layer has more than %d entries, the most one image holds", manifest.MaxEntries)
		}
		rec := layerRec{hdr: hdr}
		if (hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA) && hdr.Size > 0 && hdr.Size <= int64(p.opt.SmallFile) {
			// A small file: packed with its directory's (see Options).
			b := make([]byte, hdr.Size)
			if _, err := io.ReadFull(tr, b); err != nil {
				return nil, fmt.Errorf("%s: reading its bytes: %w", hdr.Name, err)
			}
			p.readBytes.Add(hdr.Size)
			rec.obj = &fileObj{chunks: make([]manifest.Chunk, 1)}
			name := path.Clean("/" + hdr.Name)
			small.add(path.Dir(name), smallFile{name: path.Base(name), obj: rec.obj, b: b})
			if small.bytes >= maxPendingSmall {
				if err := p.flushSmall(ctx, &small, jobs); err != nil {
					return nil, err
				}
			}
		} else if (hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA) && hdr.Size > 0 {
			// A regular file's bytes, cut into chunks for the workers.
			n := (hdr.Size + int64(p.opt.ChunkSize) - 1) / int64(p.opt.ChunkSize)
			if n > manifest.MaxChunkRefs {
				return nil, fmt.Errorf("%s: %d bytes, more than one image holds", hdr.Name, hdr.Size)
			}
			rec.obj = &fileObj{chunks: make([]manifest.Chunk, n)}
			for i := 0; i < int(n); i++ {
				buf := pool.Get().(*[]byte)
				size := int(min(int64(p.opt.ChunkSize), hdr.Size-int64(i)*int64(p.opt.ChunkSize)))
				if _, err := io.ReadFull(tr, (*buf)[:size]); err != nil {
					pool.Put(buf)
					return nil, fmt.Errorf("%s: reading its bytes: %w", hdr.Name, err)
				}
				p.readBytes.Add(int64(size))
				select {
				case jobs <- imageChunk{buf: buf, pooled: true, n: size, obj: rec.obj, index: i}:
				case <-ctx.Done():
					pool.Put(buf)
					return nil, ctx.Err()
				}
			}
		}
		recs = append(recs, rec)
	}
	if err := p.flushSmall(ctx, &small, jobs); err != nil {
		return nil, err
	}
	return recs, check()
}

// maxPendingSmall bounds the small files' bytes a layer's reader holds
// before it packs them: a directory whose small files all come within it
// packs as pack.Dir would pack it (the same chunks).
const maxPendingSmall = 64 << 20

// layerSmallFiles are a layer's small files not yet packed, by directory.
type layerSmallFiles struct {
	dirs  map[string][]smallFile
	bytes int
}

type smallFile struct {
	name string
	obj  *fileObj
	b    []byte
}

func (s *layerSmallFiles) add(dir string, f smallFile) {
	s.dirs[dir] = append(s.dirs[dir], f)
	s.bytes += len(f.b)
}

// flushSmall packs the pending small files, each directory's in name order
// (as a directory walk meets them) cut into shared chunks of at most
// SharedChunk bytes, and hands the chunks to the workers.
func (p *packer) flushSmall(ctx context.Context, s *layerSmallFiles, jobs chan<- imageChunk) error {
	dirs := make([]string, 0, len(s.dirs))
	for d := range s.dirs {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	send := func(group []smallFile) error {
		// A file alone in its group keeps a chunk of its own.
		j := imageChunk{buf: &group[0].b, n: len(group[0].b), obj: group[0].obj}
		if len(group) > 1 {
			var buf []byte
			j.pieces = make([]sharedPiece, len(group))
			for i, f := range group {
				j.pieces[i] = sharedPiece{obj: f.obj, off: len(buf), size: len(f.b)}
				buf = append(buf, f.b...)
			}
			j.buf, j.n = &buf, len(buf)
		}
		select {
		case jobs <- j:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, d := range dirs {
		files := s.dirs[d]
		sort.SliceStable(files, func(a, b int) bool { return files[a].name < files[b].name })
		for _, g := range groups(files, func(f smallFile) int { return len(f.b) }, p.opt.SharedChunk) {
			if err := send(g); err != nil {
				return err
			}
		}
	}
	s.dirs, s.bytes = map[string][]smallFile{}, 0
	return nil
}

// flatTree is the root filesystem the layers make, applied one by one.
type flatTree struct {
	nodes    map[string]*flatNode
	children map[string]map[string]struct{} // dir path -> child names
	layer    map[string]bool                // paths made by the layer being applied
	skipped  int
}

type flatNode struct {
	e   manifest.Entry // Regular entries get their chunks from obj
	obj *fileObj       // regular files and hard links: shared by every name of one file
}

// fileObj is one regular file's contents and metadata, shared by its hard
// links.
type fileObj struct {
	e      manifest.Entry
	chunks []manifest.Chunk
}

func newFlatTree() *flatTree {
	t := &flatTree{nodes: map[string]*flatNode{}, children: map[string]map[string]struct{}{}}
	t.nodes[""] = &flatNode{e: manifest.Entry{Path: "", Type: manifest.Dir, Mode: 0o755}}
	return t
}

func (t *flatTree) startLayer() { t.layer = map[string]bool{} }
func (t *flatTree) count() int  { return len(t.nodes) }

// cleanTarPath maps a tar entry's name into the image: relative to its
// root, clean. ok is false for names that leave the root.
func cleanTarPath(name string) (string, error) {
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("entry %q leaves the image's root (a \"..\" in its path)", name)
		}
	}
	p := path.Clean("/" + name)
	if p == "/" {
		return "", nil
	}
	return p[1:], nil
}

// apply applies one tar entry; for a regular file it returns the object
// its bytes go into.
func (t *flatTree) apply(hdr *tar.Header) (*fileObj, error) { return t.applyWith(hdr, nil) }

// applyWith is apply with the object a regular file's chunks went into
// already (nil: a new one, chunked by the caller).
func (t *flatTree) applyWith(hdr *tar.Header, pre *fileObj) (*fileObj, error) {
	p, err := cleanTarPath(hdr.Name)
	if err != nil {
		return nil, err
	}
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	if strings.HasPrefix(base, ".wh.") {
		if err := t.parentDirs(dir, hdr.Name); err != nil {
			return nil, err
		}
		if base == ".wh..wh..opq" {
			// An opaque directory: what lower layers put in it goes.
			for name := range t.children[dir] {
				if c := join(dir, name); !t.layer[c] {
					t.remove(c)
				}
			}
			return nil, nil
		}
		victim := base[len(".wh."):]
		if victim == "" || victim == "." || strings.HasPrefix(victim, ".wh.") {
			return nil, fmt.Errorf("whiteout %q names no entry (a whiteout of the root or of a whiteout)", hdr.Name)
		}
		if c := join(dir, victim); !t.layer[c] {
			t.remove(c)
		}
		return nil, nil
	}
	if p == "" {
		if hdr.Typeflag != tar.TypeDir {
			return nil, fmt.Errorf("entry %q would replace the image's root with a non-directory", hdr.Name)
		}
		t.nodes[""].e = t.meta(hdr, "", manifest.Dir)
		return nil, nil
	}
	if err := manifest.ValidPath(p); err != nil {
		return nil, fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	if err := t.parentDirs(dir, hdr.Name); err != nil {
		return nil, err
	}
	var n *flatNode
	var obj *fileObj
	switch hdr.Typeflag {
	case tar.TypeDir:
		if old, ok := t.nodes[p]; ok && old.e.Type == manifest.Dir {
			old.e = t.meta(hdr, p, manifest.Dir) // the directory stays, its contents too
			t.layer[p] = true
			return nil, nil
		}
		n = &flatNode{e: t.meta(hdr, p, manifest.Dir)}
	case tar.TypeReg, tar.TypeRegA:
		obj = pre
		if obj == nil {
			obj = &fileObj{}
		}
		obj.e = t.meta(hdr, p, manifest.Regular)
		obj.e.Size = hdr.Size
		n = &flatNode{e: obj.e, obj: obj}
	case tar.TypeSymlink:
		e := t.meta(hdr, p, manifest.Symlink)
		e.Target, e.Size = hdr.Linkname, int64(len(hdr.Linkname))
		n = &flatNode{e: e}
	case tar.TypeLink:
		target, err := cleanTarPath(hdr.Linkname)
		if err != nil {
			return nil, fmt.Errorf("hard link %q: %w", hdr.Name, err)
		}
		tn, ok := t.nodes[target]
		if !ok || tn.obj == nil {
			return nil, fmt.Errorf("hard link %q to %q, which is not a regular file of the image so far", hdr.Name, hdr.Linkname)
		}
		if target == p {
			return nil, nil
		}
		n = &flatNode{e: tn.obj.e, obj: tn.obj}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		t.skipped++
		return nil, nil
	case tar.TypeXGlobalHeader:
		return nil, nil
	default:
		return nil, fmt.Errorf("entry %q has tar type %q, which gpuwarm does not unpack", hdr.Name, hdr.Typeflag)
	}
	t.remove(p) // whatever was there (a directory with all below it)
	n.e.Path = p
	t.nodes[p] = n
	if t.children[dir] == nil {
		t.children[dir] = map[string]struct{}{}
	}
	t.children[dir][base] = struct{}{}
	t.layer[p] = true
	return obj, nil
}

// parentDirs makes sure every ancestor of an entry in dir is a directory,
// adding those the layer left implicit.
func (t *flatTree) parentDirs(dir, name string) error {
	if dir == "" {
		return nil
	}
	if n, ok := t.nodes[dir]; ok {
		if n.e.Type != manifest.Dir {
			return fmt.Errorf("entry %q goes through %q, which is a %s in the image, not a directory", name, dir, n.e.Type)
		}
		return nil
	}
	parent, base := path.Split(dir)
	parent = strings.TrimSuffix(parent, "/")
	if err := t.parentDirs(parent, name); err != nil {
		return err
	}
	if err := manifest.ValidPath(dir); err != nil {
		return fmt.Errorf("entry %q: %w", name, err)
	}
	t.nodes[dir] = &flatNode{e: manifest.Entry{Path: dir, Type: manifest.Dir, Mode: 0o755}}
	if t.children[parent] == nil {
		t.children[parent] = map[string]struct{}{}
	}
	t.children[parent][base] = struct{}{}
	return nil
}

// remove takes p and everything below it out of the tree.
func (t *flatTree) remove(p string) {
	if _, ok := t.nodes[p]; !ok {
		return
	}
	for name := range t.children[p] {
		t.remove(join(p, name))
	}
	delete(t.children, p)
	delete(t.nodes, p)
	dir, base := path.Split(p)
	if c := t.children[strings.TrimSuffix(dir, "/")]; c != nil {
		delete(c, base)
	}
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (t *flatTree) meta(hdr *tar.Header, p string, typ manifest.Type) manifest.Entry {
	e := manifest.Entry{Path: p, Type: typ, Mode: uint32(hdr.Mode) & 0o7777, UID: uint32(hdr.Uid), GID: uint32(hdr.Gid),
		Mtime: hdr.ModTime.UnixNano()}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			e.Xattrs = append(e.Xattrs, manifest.Xattr{Name: name, Value: []byte(v)})
		}
	}
	sort.Slice(e.Xattrs, func(i, j int) bool { return e.Xattrs[i].Name < e.Xattrs[j].Name })
	return e
}

// entries returns the tree as manifest entries, in order. The first name of
// each regular file (in that order) carries its contents; its other names
// are hard links to it.
func (t *flatTree) entries() []manifest.Entry {
	paths := make([]string, 0, len(t.nodes))
	for p := range t.nodes {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	first := map[*fileObj]string{}
	out := make([]manifest.Entry, 0, len(paths))
	for _, p := range paths {
		n := t.nodes[p]
		if n.obj == nil {
			out = append(out, n.e)
			continue
		}
		if f, ok := first[n.obj]; ok {
			out = append(out, manifest.Entry{Path: p, Type: manifest.Hardlink, Target: f})
			continue
		}
		first[n.obj] = p
		e := n.obj.e
		e.Path, e.Chunks = p, n.obj.chunks
		if len(e.Chunks) == 0 {
			e.Chunks = nil
		}
		out = append(out, e)
	}
	return out
}
