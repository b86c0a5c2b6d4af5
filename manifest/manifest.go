// Package manifest describes an image: a tree of entries whose file contents
// are lists of content-addressed chunks.
//
// The encoding is binary, versioned and canonical: one tree has exactly one
// encoding, so the image ID (the SHA-256 of the encoding) names the tree.
// Decode accepts only canonical input (it re-encodes and compares), validates
// every field, and bounds every length, because manifests come from a store
// that other tenants or a damaged disk may have written.
//
// Layout (all integers unsigned varints unless noted):
//
//	"GWMF" version(1 byte)
//	nAnnotations { key value }            keys strictly increasing
//	nEntries     { entry }                paths strictly increasing, root first
//	entry: path type(1 byte) mode uid gid mtime(zigzag varint, ns) size
//	       target nXattrs { name value } nChunks { ref }
//	ref:   id(32 bytes) size                          version 1
//	       id size flags(1 byte) [blocks(32 bytes)]    version 2: flags 0 or 1 (has a block index)
//	       id size flags [blocks] [off whole]          version 3: flags bit 1 = shared chunk
//
// Strings are a varint length and bytes. Offsets of pieces in their file are
// not stored: they are the running sum of the pieces' sizes. A shared chunk
// holds several small files (chunk.Ref.Shared); its reference gives where
// the piece starts in it and its whole length.
package manifest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

// Version is the newest encoding version this package reads and writes.
// Version 2 adds a block index to chunk references (chunk.Ref.Blocks),
// version 3 pieces of shared chunks (chunk.Ref.Shared). An image is written
// in the lowest version that holds it, so images that gain nothing from a
// newer one keep their IDs, and images of every older version stay
// readable.
const Version = 3

var magic = []byte("GWMF")

// Limits that bound what a decoder allocates.
const (
	MaxPath        = 4096
	MaxName        = 255
	MaxXattrName   = 255
	MaxXattrValue  = 64 << 10
	MaxAnnotation  = 64 << 10
	MaxEncodedSize = store.MaxManifestObject
	// MaxEntries and MaxChunkRefs bound what a loaded image costs in memory
	// (an index of 1M entries and 4M chunk references takes a few hundred
	// MB): 4 TiB of files at the default chunk size. A larger tree is
	// refused by pack and by every reader; split it into several images.
	MaxEntries   = 1 << 20
	MaxChunkRefs = 1 << 22
)

// Type is the kind of an entry.
type Type uint8

const (
	Dir      Type = 1
	Regular  Type = 2
	Symlink  Type = 3
	Hardlink Type = 4 // another name for the Regular entry at Target
)

func (t Type) String() string {
	switch t {
	case Dir:
		return "dir"
	case Regular:
		return "file"
	case Symlink:
		return "symlink"
	case Hardlink:
		return "hardlink"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Chunk is one piece of a file: the chunk layer's reference, so that the
// block cache can assemble files without depending on the image format.
type Chunk = chunk.Ref

// Xattr is an extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Entry is one node of the tree.
type Entry struct {
	Path   string // "" for the root, else slash-separated and clean
	Type   Type
	Mode   uint32 // permission bits, 07777
	UID    uint32
	GID    uint32
	Mtime  int64 // Unix nanoseconds
	Size   int64 // Regular: sum of chunk sizes; Symlink: len(Target)
	Target string
	Xattrs []Xattr
	Chunks []Chunk
}

// Manifest is a whole image.
type Manifest struct {
	Annotations map[string]string
	Entries     []Entry
}

// ErrInvalid is wrapped by every validation failure.
var ErrInvalid = errors.New("invalid manifest")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Encode returns the canonical encoding. It sorts annotations and xattrs;
// entries must already be in order (Validate says so).
func (m *Manifest) Encode() []byte {
	var b []byte
	b = append(b, magic...)
	v := m.version()
	b = append(b, v)
	keys := make([]string, 0, len(m.Annotations))
	for k := range m.Annotations {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, m.Annotations[k])
	}
	b = binary.AppendUvarint(b, uint64(len(m.Entries)))
	for i := range m.Entries {
		e := &m.Entries[i]
		b = appendString(b, e.Path)
		b = append(b, byte(e.Type))
		b = binary.AppendUvarint(b, uint64(e.Mode))
		b = binary.AppendUvarint(b, uint64(e.UID))
		b = binary.AppendUvarint(b, uint64(e.GID))
		b = binary.AppendVarint(b, e.Mtime)
		b = binary.AppendUvarint(b, uint64(e.Size))
		b = appendString(b, e.Target)
		xs := append([]Xattr(nil), e.Xattrs...)
		sort.Slice(xs, func(i, j int) bool { return xs[i].Name < xs[j].Name })
		b = binary.AppendUvarint(b, uint64(len(xs)))
		for _, x := range xs {
			b = appendString(b, x.Name)
			b = appendString(b, string(x.Value))
		}
		b = binary.AppendUvarint(b, uint64(len(e.Chunks)))
		for _, c := range e.Chunks {
			b = append(b, c.ID[:]...)
			b = binary.AppendUvarint(b, uint64(c.Size))
			if v < 2 {
				continue
			}
			var flags byte
			if !c.Blocks.IsZero() {
				flags |= flagBlocks
			}
			if c.Shared() {
				flags |= flagShared
			}
			b = append(b, flags)
			if !c.Blocks.IsZero() {
				b = append(b, c.Blocks[:]...)
			}
			if c.Shared() {
				b = binary.AppendUvarint(b, uint64(c.Off))
				b = binary.AppendUvarint(b, uint64(c.Whole))
			}
		}
	}
	return b
}

// Flags of a chunk reference (version 2 on).
const (
	flagBlocks byte = 1 << 0
	flagShared byte = 1 << 1 // version 3 on
)

// version is the encoding version m needs: 3 if any piece is of a shared
// chunk, else 2 if any chunk has a block index, else 1.
func (m *Manifest) version() byte {
	v := byte(1)
	for i := range m.Entries {
		for _, c := range m.Entries[i].Chunks {
			if c.Shared() {
				return 3
			}
			if !c.Blocks.IsZero() {
				v = 2
			}
		}
	}
	return v
}

// ID returns the image ID: the digest of the canonical encoding.
func (m *Manifest) ID() digest.ID { return digest.Of(m.Encode()) }

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// Decode parses and validates an encoded manifest.
func Decode(data []byte) (*Manifest, error) {
	if len(data) > MaxEncodedSize {
		return nil, invalid("%d bytes exceeds the %d byte limit", len(data), MaxEncodedSize)
	}
	d := decoder{b: data}
	m, err := d.manifest()
	if err != nil {
		return nil, err
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if !bytes.Equal(m.Encode(), data) {
		return nil, invalid("encoding is not canonical")
	}
	return m, nil
}

type decoder struct {
	version byte
	b       []byte
	off     int
	chunks  int // chunk references so far
}

func (d *decoder) uvarint(what string, max uint64) (uint64, error) {
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		return 0, invalid("truncated or overlong %s at byte %d", what, d.off)
	}
	if v > max {
		return 0, invalid("%s %d exceeds %d at byte %d", what, v, max, d.off)
	}
	d.off += n
	return v, nil
}

func (d *decoder) varint(what string) (int64, error) {
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		return 0, invalid("truncated or overlong %s at byte %d", what, d.off)
	}
	d.off += n
	return v, nil
}

func (d *decoder) bytes(what string, n int) ([]byte, error) {
	if n > len(d.b)-d.off {
		return nil, invalid("truncated %s at byte %d", what, d.off)
	}
	s := d.b[d.off : d.off+n]
	d.off += n
	return s, nil
}

func (d *decoder) str(what string, max int) (string, error) {
	n, err := d.uvarint(what+" length", uint64(max))
	if err != nil {
		return "", err
	}
	s, err := d.bytes(what, int(n))
	return string(s), err
}

func (d *decoder) count(what string, minSize int) (int, error) {
	// Each item takes at least minSize bytes, which bounds allocation.
	n, err := d.uvarint(what, uint64((len(d.b)-d.off)/minSize+1))
	return int(n), err
}

func (d *decoder) manifest() (*Manifest, error) {
	head, err := d.bytes("header", len(magic)+1)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(head[:len(magic)], magic) {
		return nil, invalid("not a gpuwarm manifest (bad magic %q)", head[:len(magic)])
	}
	if v := head[len(magic)]; v < 1 || v > Version {
		return nil, invalid("manifest version %d; this gpuwarm reads versions 1 to %d: upgrade gpuwarm", v, Version)
	}
	d.version = head[len(magic)]
	m := &Manifest{}
	na, err := d.count("annotation count", 2)
	if err != nil {
		return nil, err
	}
	if na > 0 {
		m.Annotations = make(map[string]string, na)
	}
	prev := ""
	for i := 0; i < na; i++ {
		k, err := d.str("annotation key", MaxAnnotation)
		if err != nil {
			return nil, err
		}
		v, err := d.str("annotation value", MaxAnnotation)
		if err != nil {
			return nil, err
		}
		if i > 0 && k <= prev {
			return nil, invalid("annotation keys not strictly increasing at %q", k)
		}
		prev = k
		m.Annotations[k] = v
	}
	ne, err := d.count("entry count", 13)
	if err != nil {
		return nil, err
	}
	if ne > MaxEntries {
		return nil, invalid("%d entries exceeds the limit of %d (split the tree into several images)", ne, MaxEntries)
	}
	m.Entries = make([]Entry, ne)
	for i := range m.Entries {
		if err := d.entry(&m.Entries[i]); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
	}
	if d.off != len(d.b) {
		return nil, invalid("%d trailing bytes", len(d.b)-d.off)
	}
	return m, nil
}

func (d *decoder) entry(e *Entry) error {
	var err error
	if e.Path, err = d.str("path", MaxPath); err != nil {
		return err
	}
	t, err := d.bytes("type", 1)
	if err != nil {
		return err
	}
	e.Type = Type(t[0])
	mode, err := d.uvarint("mode", 07777)
	if err != nil {
		return err
	}
	e.Mode = uint32(mode)
	uid, err := d.uvarint("uid", 1<<32-1)
	if err != nil {
		return err
	}
	gid, err := d.uvarint("gid", 1<<32-1)
	if err != nil {
		return err
	}
	e.UID, e.GID = uint32(uid), uint32(gid)
	if e.Mtime, err = d.varint("mtime"); err != nil {
		return err
	}
	size, err := d.uvarint("size", 1<<62)
	if err != nil {
		return err
	}
	e.Size = int64(size)
	if e.Target, err = d.str("target", MaxPath); err != nil {
		return err
	}
	nx, err := d.count("xattr count", 2)
	if err != nil {
		return err
	}
	for i := 0; i < nx; i++ {
		name, err := d.str("xattr name", MaxXattrName)
		if err != nil {
			return err
		}
		val, err := d.str("xattr value", MaxXattrValue)
		if err != nil {
			return err
		}
		e.Xattrs = append(e.Xattrs, Xattr{Name: name, Value: []byte(val)})
	}
	nc, err := d.count("chunk count", digest.Size+1)
	if err != nil {
		return err
	}
	if d.chunks += nc; d.chunks > MaxChunkRefs {
		return invalid("more than %d chunk references (split the tree into several images)", MaxChunkRefs)
	}
	if nc > 0 {
		e.Chunks = make([]Chunk, nc)
	}
	for i := range e.Chunks {
		id, err := d.bytes("chunk id", digest.Size)
		if err != nil {
			return err
		}
		copy(e.Chunks[i].ID[:], id)
		sz, err := d.uvarint("chunk size", chunk.MaxSize)
		if err != nil {
			return err
		}
		e.Chunks[i].Size = uint32(sz)
		if d.version < 2 {
			continue
		}
		flag, err := d.bytes("chunk flags", 1)
		if err != nil {
			return err
		}
		known := flagBlocks
		if d.version >= 3 {
			known |= flagShared
		}
		if flag[0]&^known != 0 {
			return invalid("chunk flags %#x in a version %d manifest", flag[0], d.version)
		}
		if flag[0]&flagBlocks != 0 {
			bid, err := d.bytes("block index id", digest.Size)
			if err != nil {
				return err
			}
			copy(e.Chunks[i].Blocks[:], bid)
		}
		if flag[0]&flagShared != 0 {
			off, err := d.uvarint("offset in shared chunk", chunk.MaxSize)
			if err != nil {
				return err
			}
			whole, err := d.uvarint("shared chunk size", chunk.MaxSize)
			if err != nil {
				return err
			}
			if whole == 0 {
				return invalid("shared chunk of 0 bytes")
			}
			e.Chunks[i].Off, e.Chunks[i].Whole = uint32(off), uint32(whole)
		}
	}
	return nil
}

// Validate checks the tree's invariants: a root directory first, clean
// paths in strictly increasing order, every parent a directory, sizes that
// match chunk lists, hard links to earlier regular files, sorted xattrs.
func (m *Manifest) Validate() error {
	if len(m.Entries) == 0 || m.Entries[0].Path != "" || m.Entries[0].Type != Dir {
		return invalid("the first entry must be the root directory (path \"\")")
	}
	for k, v := range m.Annotations {
		if k == "" || len(k) > MaxAnnotation || len(v) > MaxAnnotation {
			return invalid("annotation %q: empty key or over %d bytes", k, MaxAnnotation)
		}
	}
	if len(m.Entries) > MaxEntries {
		return invalid("%d entries exceeds the limit of %d (split the tree into several images)", len(m.Entries), MaxEntries)
	}
	refs := 0
	for i := range m.Entries {
		refs += len(m.Entries[i].Chunks)
	}
	if refs > MaxChunkRefs {
		return invalid("%d chunk references exceed the limit of %d (split the tree into several images)", refs, MaxChunkRefs)
	}
	kinds := make(map[string]Type, len(m.Entries))
	for i := range m.Entries {
		e := &m.Entries[i]
		if err := e.validate(i, m, kinds); err != nil {
			return fmt.Errorf("entry %d (%q): %w", i, e.Path, err)
		}
		kinds[e.Path] = e.Type
	}
	return nil
}

func (e *Entry) validate(i int, m *Manifest, kinds map[string]Type) error {
	if i > 0 {
		if err := ValidPath(e.Path); err != nil {
			return err
		}
		if prev := m.Entries[i-1].Path; e.Path <= prev {
			return invalid("paths not strictly increasing (after %q)", prev)
		}
		if kinds[parentOf(e.Path)] != Dir {
			return invalid("parent directory missing")
		}
	}
	if e.Mode&^07777 != 0 {
		return invalid("mode %o has bits outside 07777", e.Mode)
	}
	for j, x := range e.Xattrs {
		if x.Name == "" || len(x.Name) > MaxXattrName || len(x.Value) > MaxXattrValue {
			return invalid("xattr %q: bad name or value size", x.Name)
		}
		if j > 0 && x.Name <= e.Xattrs[j-1].Name {
			return invalid("xattrs not strictly increasing at %q", x.Name)
		}
	}
	switch e.Type {
	case Dir:
		if e.Size != 0 || e.Target != "" || len(e.Chunks) != 0 {
			return invalid("directory with size, target or chunks")
		}
	case Regular:
		if e.Target != "" {
			return invalid("regular file with a target")
		}
		var sum int64
		for _, c := range e.Chunks {
			if c.Size == 0 {
				return invalid("empty chunk %s", c.ID.Short())
			}
			if !c.Blocks.IsZero() && int(c.Size) <= chunk.BlockSize {
				return invalid("chunk %s of %d bytes with a block index (only chunks of more than one block have one)", c.ID.Short(), c.Size)
			}
			if c.Shared() {
				switch {
				case !c.Blocks.IsZero():
					return invalid("shared chunk %s with a block index", c.ID.Short())
				case c.Whole > chunk.MaxSize || uint64(c.Off)+uint64(c.Size) > uint64(c.Whole):
					return invalid("piece [%d, +%d) of shared chunk %s of %d bytes", c.Off, c.Size, c.ID.Short(), c.Whole)
				case c.Off == 0 && c.Size == c.Whole:
					return invalid("shared chunk %s is all one piece (it is a plain chunk)", c.ID.Short())
				}
			} else if c.Off != 0 {
				return invalid("offset %d in chunk %s, which is not shared", c.Off, c.ID.Short())
			}
			sum += int64(c.Size)
		}
		if sum != e.Size {
			return invalid("size %d but chunks sum to %d", e.Size, sum)
		}
	case Symlink:
		if e.Target == "" || strings.IndexByte(e.Target, 0) >= 0 || len(e.Chunks) != 0 || e.Size != int64(len(e.Target)) {
			return invalid("symlink needs a non-empty target, size = len(target), no chunks")
		}
	case Hardlink:
		if kinds[e.Target] != Regular || len(e.Chunks) != 0 || e.Size != 0 || len(e.Xattrs) != 0 ||
			e.Mode != 0 || e.UID != 0 || e.GID != 0 || e.Mtime != 0 {
			return invalid("hard link must name an earlier regular file (%q) and carry nothing else", e.Target)
		}
	default:
		return invalid("unknown entry type %d", e.Type)
	}
	return nil
}

// ValidPath reports whether p is a clean relative path of valid names.
func ValidPath(p string) error {
	if p == "" || len(p) > MaxPath {
		return invalid("path empty or over %d bytes", MaxPath)
	}
	for _, name := range strings.Split(p, "/") {
		if name == "" || name == "." || name == ".." || len(name) > MaxName || strings.IndexByte(name, 0) >= 0 {
			return invalid("bad path component %q", name)
		}
	}
	return nil
}

func parentOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

// Base returns the last path component.
func Base(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// ByIDDir is the directory at a mount's root that holds every image by its
// ID; no tag may have its name.
const ByIDDir = "by-id"

// RootfsDir is the hidden directory at a mount's root that holds every
// image by its ID as a container's root filesystem (an overlay's lower
// layer): the same trees as ByIDDir, never served by FUSE passthrough (see
// package fusefs). Tags are never hidden, so none can clash with it.
const RootfsDir = ".rootfs"

// ValidTag reports whether name can be a tag: it is also a directory name at
// the mount point, so it is short, printable and not hidden.
func ValidTag(name string) error {
	if name == "" || len(name) > 128 || name[0] == '.' || name[0] == '-' || !utf8.ValidString(name) {
		return fmt.Errorf("tag %q: use 1-128 characters from A-Z a-z 0-9 . _ - and do not start with '.' or '-'", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("tag %q: character %q not allowed; use A-Z a-z 0-9 . _ -", name, r)
		}
	}
	if name == ByIDDir {
		return fmt.Errorf("tag %q is reserved: the mount lists every image by ID there; choose another name", name)
	}
	if len(name) == 2*digest.Size {
		if _, err := digest.Parse(name); err == nil {
			return fmt.Errorf("tag %q looks like an image ID; choose another name", name)
		}
	}
	return nil
}
