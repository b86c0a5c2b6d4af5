package pack

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"golang.org/x/sys/unix"
)

// A re-pack of a tree that mostly did not change should not read and hash
// it all again. After a pack, the worker keeps, per (store, tree, tag), the
// stamp of every regular file it packed: device, inode, size, mtime and
// ctime. The next pack of the same tree under the same tag reuses a file's
// chunks from the tag's image when its stamp is identical: ctime changes
// with any write or metadata change and cannot be set back by a program
// (only by the clock), so an identical stamp means identical bytes. The
// reused chunks are the tag's image's, which gc keeps while the tag names
// it; a record made for another image (the tag moved), another chunk size
// or another store is ignored.

// DefaultStampDir is where the stamps are kept.
const DefaultStampDir = "/var/lib/gpuwarm/pack-stamps"

// Stamp identifies a file's state.
type Stamp struct {
	Dev, Ino     uint64
	Size         int64
	Mtime, Ctime int64
}

func stampOf(st *unix.Stat_t) Stamp {
	return Stamp{Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size, Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano()}
}

// stampRecord is the file kept per (store, tree, tag).
type stampRecord struct {
	Image     string           `json:"image"`
	ChunkSize int              `json:"chunk_size"`
	Files     map[string]Stamp `json:"files"`
}

// Previous is what a pack may reuse: the files of the tag's last image
// whose stamps it recorded.
type Previous struct {
	image     digest.ID
	chunkSize int
	stamps    map[string]Stamp
	entries   map[string]*manifest.Entry
}

// StampPath is the record of tree root packed into st as tag.
func StampPath(dir string, st store.Store, root, tag string) string {
	abs, err := filepath.Abs(root)
	if err != nil {
		abs = root
	}
	h := sha256.Sum256([]byte(st.Location() + "\x00" + abs + "\x00" + tag))
	return filepath.Join(dir, hex.EncodeToString(h[:16])+".json")
}

// LoadPrevious reads the stamp record at path and, if it was made for the
// image tag names now, that image's manifest. No record, or one that no
// longer applies, is not an error: the pack reads everything.
func LoadPrevious(ctx context.Context, st store.Store, path, tag string, chunkSize int) (*Previous, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rec stampRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, nil // a damaged record: pack it all
	}
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	id, err := store.ReadTag(ctx, st, tag)
	if err != nil || id.String() != rec.Image || rec.ChunkSize != chunkSize {
		return nil, nil
	}
	ix, err := manifest.Load(ctx, st, id)
	if err != nil {
		return nil, fmt.Errorf("the tag's last image: %w", err)
	}
	p := &Previous{image: id, chunkSize: chunkSize, stamps: rec.Files, entries: map[string]*manifest.Entry{}}
	for i := range ix.Entries {
		if e := &ix.Entries[i]; e.Type == manifest.Regular {
			p.entries[e.Path] = e
		}
	}
	return p, nil
}

// reuse returns the chunks of rel from the previous image if its stamp is
// unchanged.
func (p *Previous) reuse(rel string, s Stamp) ([]manifest.Chunk, bool) {
	if p == nil {
		return nil, false
	}
	old, ok := p.stamps[rel]
	if !ok || old != s {
		return nil, false
	}
	e, ok := p.entries[rel]
	if !ok || e.Size != s.Size {
		return nil, false
	}
	return e.Chunks, true
}

// SaveStamps records the stamps of the files of a pack that made image id.
func SaveStamps(path string, id digest.ID, chunkSize int, stamps map[string]Stamp) error {
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	b, err := json.Marshal(stampRecord{Image: id.String(), ChunkSize: chunkSize, Files: stamps})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
