package manifest

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

func sample() *Manifest {
	c1 := Chunk{ID: digest.Of([]byte("one")), Size: 3}
	c2 := Chunk{ID: digest.Of([]byte("two")), Size: 3}
	return &Manifest{
		Annotations: map[string]string{"gpuwarm.kind": "files", "a": "b"},
		Entries: []Entry{
			{Path: "", Type: Dir, Mode: 0755},
			{Path: "bin", Type: Dir, Mode: 0755, Mtime: -5},
			{Path: "bin/python", Type: Regular, Mode: 0755, Size: 6, Chunks: []Chunk{c1, c2},
				Xattrs: []Xattr{{Name: "user.a", Value: []byte("1")}, {Name: "user.b", Value: nil}}},
			{Path: "bin/python3", Type: Hardlink, Target: "bin/python"},
			{Path: "empty", Type: Regular, Mode: 0600, UID: 1000, GID: 1000},
			{Path: "link", Type: Symlink, Mode: 0777, Size: 10, Target: "bin/python"},
			{Path: "odd name \n\xff", Type: Regular, Mode: 0644, Size: 3, Chunks: []Chunk{c1}},
		},
	}
}

func TestRoundTrip(t *testing.T) {
	m := sample()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	enc := m.Encode()
	got, err := Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID() != m.ID() || string(got.Encode()) != string(enc) {
		t.Fatal("round trip changed the encoding")
	}
	ix := NewIndex(m.ID(), got)
	i, ok := ix.Lookup("bin/python3")
	if !ok || ix.Resolve(i) != 2 || ix.Nlink(2) != 2 {
		t.Fatalf("hard link resolution: %v %d %d", ok, ix.Resolve(i), ix.Nlink(2))
	}
	if ix.Nlink(0) != 3 {
		t.Fatalf("root nlink = %d, want 3", ix.Nlink(0))
	}
	if f, l := ix.ChunkSpan(2, 2, 2); f != 0 || l != 2 {
		t.Fatalf("ChunkSpan(2,2) = %d,%d", f, l)
	}
	if f, l := ix.ChunkSpan(2, 3, 100); f != 1 || l != 2 {
		t.Fatalf("ChunkSpan(3,100) = %d,%d", f, l)
	}
	if kids := ix.Children(0); len(kids) != 4 {
		t.Fatalf("root has %d children", len(kids))
	}
	if ix.Bytes() != m.Stats().Bytes || ix.Bytes() == 0 {
		t.Fatalf("Bytes() = %d, Stats().Bytes = %d", ix.Bytes(), m.Stats().Bytes)
	}
}

// sampleV2 is sample with one chunk big enough for a block index, which has
// one.
func sampleV2() *Manifest {
	m := sample()
	big := Chunk{ID: digest.Of([]byte("big")), Size: 1 << 20, Blocks: digest.Of([]byte("index"))}
	m.Entries[4].Chunks = []Chunk{big, {ID: digest.Of([]byte("tail")), Size: 1 << 20}}
	m.Entries[4].Size = 2 << 20
	return m
}

func TestBlockIndexVersions(t *testing.T) {
	// Without a block index an image is still written as version 1 (its
	// ID unchanged); with one, as version 2, and read back with it.
	if v := sample().Encode()[4]; v != 1 {
		t.Fatalf("an image without block indexes is written as version %d", v)
	}
	m := sampleV2()
	enc := m.Encode()
	if enc[4] != 2 {
		t.Fatalf("an image with a block index is written as version %d", enc[4])
	}
	got, err := Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	if c := got.Entries[4].Chunks; c[0].Blocks != m.Entries[4].Chunks[0].Blocks || !c[1].Blocks.IsZero() {
		t.Fatalf("block indexes read back as %v", c)
	}
	// A version-2 encoding of an image needing only version 1 is not
	// canonical (two encodings of one tree would get two IDs).
	v1 := sample().Encode()
	if _, err := Decode(append(append([]byte("GWMF"), 2), v1[5:]...)); err == nil {
		t.Error("a version-2 encoding without block index flags was accepted")
	}
	// A block index on a chunk of one block is refused.
	small := sampleV2()
	small.Entries[2].Chunks[0].Blocks = digest.Of([]byte("x"))
	if err := small.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("block index on a 3-byte chunk: want ErrInvalid, got %v", err)
	}
	// A flag other than 0 or 1 is refused.
	bad := append([]byte(nil), enc...)
	i := strings.Index(string(bad), string(m.Entries[4].Chunks[1].ID[:]))
	if i < 0 {
		t.Fatal("chunk not found in the encoding")
	}
	bad[i+digest.Size+3] = 7 // after the ID and the 3-byte varint of 1 MiB
	if _, err := Decode(bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("block index flag 7: want ErrInvalid, got %v", err)
	}
}

// sampleV3 is sampleV2 with two small files sharing one chunk.
func sampleV3() *Manifest {
	m := sampleV2()
	pack := digest.Of([]byte("onetwo!"))
	m.Entries[2].Chunks = []Chunk{{ID: pack, Size: 3, Whole: 7}, {ID: digest.Of([]byte("two")), Size: 3}}
	m.Entries[6].Chunks = []Chunk{{ID: pack, Size: 4, Off: 3, Whole: 7}}
	m.Entries[6].Size = 4
	return m
}

func TestSharedChunkVersions(t *testing.T) {
	// Pieces of shared chunks need version 3; images without any keep
	// their lower version (and ID).
	if v := sampleV2().Encode()[4]; v != 2 {
		t.Fatalf("an image with block indexes and no shared chunk is written as version %d", v)
	}
	m := sampleV3()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	enc := m.Encode()
	if enc[4] != 3 {
		t.Fatalf("an image with shared chunks is written as version %d", enc[4])
	}
	got, err := Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := got.Entries[6].Chunks[0], m.Entries[6].Chunks[0]; a != b || !a.Shared() || a.Len() != 7 {
		t.Fatalf("shared piece read back as %+v, want %+v", a, b)
	}
	if c := got.Entries[4].Chunks[0]; c.Blocks != m.Entries[4].Chunks[0].Blocks || c.Shared() {
		t.Fatalf("a plain chunk with a block index read back as %+v", c)
	}
	ix := NewIndex(got.ID(), got)
	if f, l := ix.ChunkSpan(2, 3, 3); f != 1 || l != 2 || ix.ChunkOffset(2, 1) != 3 {
		t.Fatalf("offsets in a file with a shared piece: span %d,%d, offset %d", f, l, ix.ChunkOffset(2, 1))
	}
	if s := got.Stats(); s.UniqueBytes != 7+3+2<<20 {
		t.Fatalf("unique bytes %d: a shared chunk counts its whole length once", s.UniqueBytes)
	}
	// The shared flag is refused in a version-2 manifest.
	v2 := append([]byte(nil), enc...)
	v2[4] = 2
	if _, err := Decode(v2); !errors.Is(err, ErrInvalid) {
		t.Errorf("shared flag in version 2: want ErrInvalid, got %v", err)
	}
	cases := map[string]func(c *Chunk){
		"piece past the end":   func(c *Chunk) { c.Off = 5 },
		"whole chunk":          func(c *Chunk) { c.Off, c.Whole = 0, 4 },
		"with a block index":   func(c *Chunk) { c.Blocks = digest.Of([]byte("i")) },
		"offset, not shared":   func(c *Chunk) { c.Whole = 0 },
		"over the chunk limit": func(c *Chunk) { c.Whole = 1 << 30 },
	}
	for name, mutate := range cases {
		m := sampleV3()
		mutate(&m.Entries[6].Chunks[0])
		if err := m.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: want ErrInvalid, got %v", name, err)
		}
	}
}

func TestValidateRejects(t *testing.T) {
	cases := map[string]func(m *Manifest){
		"no root":          func(m *Manifest) { m.Entries = m.Entries[1:] },
		"unsorted":         func(m *Manifest) { m.Entries[4], m.Entries[5] = m.Entries[5], m.Entries[4] },
		"dotdot":           func(m *Manifest) { m.Entries[6].Path = "../x" },
		"missing parent":   func(m *Manifest) { m.Entries[6].Path = "zz/y" },
		"size mismatch":    func(m *Manifest) { m.Entries[2].Size = 7 },
		"dangling link":    func(m *Manifest) { m.Entries[3].Target = "nope" },
		"mode bits":        func(m *Manifest) { m.Entries[2].Mode = 0100755 },
		"symlink no size":  func(m *Manifest) { m.Entries[5].Size = 0 },
		"unknown type":     func(m *Manifest) { m.Entries[4].Type = 9 },
		"file under file":  func(m *Manifest) { m.Entries[6].Path = "empty/x" },
		"empty chunk":      func(m *Manifest) { m.Entries[6].Chunks[0].Size = 0; m.Entries[6].Size = 0 },
		"unsorted xattrs":  func(m *Manifest) { x := m.Entries[2].Xattrs; x[0], x[1] = x[1], x[0] },
		"hardlink to link": func(m *Manifest) { m.Entries[3].Target = "link" },
	}
	for name, mutate := range cases {
		m := sample()
		mutate(m)
		if err := m.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: want ErrInvalid, got %v", name, err)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	enc := sample().Encode()
	bad := map[string][]byte{
		"empty":     nil,
		"magic":     append([]byte("XXXX"), enc[4:]...),
		"version":   append(append([]byte("GWMF"), 99), enc[5:]...),
		"truncated": enc[:len(enc)-3],
		"trailing":  append(append([]byte{}, enc...), 0),
	}
	for name, b := range bad {
		if _, err := Decode(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: want ErrInvalid, got %v", name, err)
		}
	}
	// A non-minimal varint (0x80 0x00 for 0) is not canonical.
	nc := append([]byte("GWMF\x01\x80\x00"), enc[6:]...)
	if _, err := Decode(nc); err == nil {
		t.Error("non-canonical varint accepted")
	}
}

func TestValidTag(t *testing.T) {
	for _, ok := range []string{"python3", "llama-1.1b_v2", "A"} {
		if err := ValidTag(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".hidden", "-x", "a/b", "a b", digest.Of(nil).String()} {
		if ValidTag(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sample().Encode())
	f.Add((&Manifest{Entries: []Entry{{Type: Dir}}}).Encode())
	f.Add([]byte("GWMF\x01\x00\x01\x00\x01"))
	f.Add(sampleV2().Encode())
	f.Add(sampleV3().Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		// Anything accepted is canonical and indexable.
		if string(m.Encode()) != string(b) {
			t.Fatal("accepted a non-canonical encoding")
		}
		ix := NewIndex(m.ID(), m)
		for i := range m.Entries {
			if m.Entries[i].Type == Regular {
				ix.ChunkSpan(i, 0, m.Entries[i].Size)
			}
		}
	})
}

// A manifest claiming more entries than MaxEntries is refused before its
// entries are allocated, and pack's own check (Validate) refuses to build one.
func TestEntryLimit(t *testing.T) {
	b := append([]byte(nil), magic...)
	b = append(b, Version, 0) // no annotations
	b = binary.AppendUvarint(b, MaxEntries+1)
	b = append(b, make([]byte, 13*(MaxEntries+1))...)
	if _, err := Decode(b); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("decode of %d entries: %v", MaxEntries+1, err)
	}
	m := &Manifest{Entries: make([]Entry, MaxEntries+1)}
	m.Entries[0].Type = Dir
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("validate of %d entries: %v", MaxEntries+1, err)
	}
}
