package manifest

import (
	"sort"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// Index is a decoded manifest with the lookups a filesystem needs.
type Index struct {
	ID digest.ID
	*Manifest
	byPath   map[string]int
	children [][]int32 // per directory entry: indices of its children, by name
	offsets  [][]int64 // per regular entry: start offset of each chunk
	nlink    []uint32
	bytes    int64 // regular files' bytes
}

// NewIndex builds the lookup tables for a validated manifest.
func NewIndex(id digest.ID, m *Manifest) *Index {
	ix := &Index{
		ID:       id,
		Manifest: m,
		byPath:   make(map[string]int, len(m.Entries)),
		children: make([][]int32, len(m.Entries)),
		offsets:  make([][]int64, len(m.Entries)),
		nlink:    make([]uint32, len(m.Entries)),
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		ix.byPath[e.Path] = i
		ix.nlink[i] = 1
		if i > 0 {
			p := ix.byPath[parentOf(e.Path)]
			ix.children[p] = append(ix.children[p], int32(i))
		}
		switch e.Type {
		case Dir:
			ix.nlink[i] = 2
		case Regular:
			offs := make([]int64, len(e.Chunks))
			var off int64
			for j, c := range e.Chunks {
				offs[j] = off
				off += int64(c.Size)
			}
			ix.offsets[i] = offs
			ix.bytes += e.Size
		case Hardlink:
			ix.nlink[ix.byPath[e.Target]]++
		}
	}
	for i, kids := range ix.children {
		if m.Entries[i].Type == Dir {
			for _, k := range kids {
				if m.Entries[k].Type == Dir {
					ix.nlink[i]++
				}
			}
		}
		// Paths sort with their parent's prefix, but "a-b" sorts before "a/b";
		// children of one directory differ only in the last component, so the
		// order is by name already. Keep it explicit anyway.
		sort.SliceStable(kids, func(a, b int) bool {
			return Base(m.Entries[kids[a]].Path) < Base(m.Entries[kids[b]].Path)
		})
	}
	return ix
}

// Lookup returns the index of the entry at path p.
func (ix *Index) Lookup(p string) (int, bool) {
	i, ok := ix.byPath[p]
	return i, ok
}

// Children returns the entries of directory i, sorted by name.
func (ix *Index) Children(i int) []int32 { return ix.children[i] }

// Resolve follows a hard link to the regular entry it names.
func (ix *Index) Resolve(i int) int {
	if ix.Entries[i].Type == Hardlink {
		return ix.byPath[ix.Entries[i].Target]
	}
	return i
}

// Nlink returns the link count of entry i (after Resolve).
func (ix *Index) Nlink(i int) uint32 { return ix.nlink[i] }

// ChunkSpan returns the chunks of regular entry i that overlap
// [off, off+n), as a slice index range, with the start offset of the first.
func (ix *Index) ChunkSpan(i int, off, n int64) (first, last int) {
	offs := ix.offsets[i]
	e := &ix.Entries[i]
	if off >= e.Size || n <= 0 {
		return 0, 0
	}
	end := off + n
	first = sort.Search(len(offs), func(j int) bool { return offs[j]+int64(e.Chunks[j].Size) > off })
	last = sort.Search(len(offs), func(j int) bool { return offs[j] >= end })
	return first, last
}

// Bytes is the sum of the image's regular files' sizes (statfs asks for
// it often; Stats walks every chunk).
func (ix *Index) Bytes() int64 { return ix.bytes }

// ChunkOffset returns the file offset of chunk j of regular entry i.
func (ix *Index) ChunkOffset(i, j int) int64 { return ix.offsets[i][j] }

// Stats sums an image's contents.
type Stats struct {
	Files, Dirs, Symlinks, Hardlinks int
	Bytes                            int64 // logical file bytes
	Chunks                           int   // chunk references
	UniqueChunks                     int
	UniqueBytes                      int64
}

// Stats counts entries and chunks.
func (m *Manifest) Stats() Stats {
	var s Stats
	seen := make(map[digest.ID]bool)
	for i := range m.Entries {
		e := &m.Entries[i]
		switch e.Type {
		case Dir:
			s.Dirs++
		case Regular:
			s.Files++
			s.Bytes += e.Size
		case Symlink:
			s.Symlinks++
		case Hardlink:
			s.Hardlinks++
		}
		for _, c := range e.Chunks {
			s.Chunks++
			if !seen[c.ID] {
				seen[c.ID] = true
				s.UniqueChunks++
				s.UniqueBytes += int64(c.Len())
			}
		}
	}
	return s
}

// ChunkIDs returns every distinct chunk the manifest references, block
// indexes included (they are stored as chunks).
func (m *Manifest) ChunkIDs() []digest.ID {
	seen := make(map[digest.ID]bool)
	var ids []digest.ID
	add := func(id digest.ID) {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for i := range m.Entries {
		for _, c := range m.Entries[i].Chunks {
			add(c.ID)
			if !c.Blocks.IsZero() {
				add(c.Blocks)
			}
		}
	}
	return ids
}
