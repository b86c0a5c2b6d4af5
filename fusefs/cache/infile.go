package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/gpuwarm/gpuwarm/internal/rofile"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// One copy per byte: once a file is assembled into the disk tier (for
// passthrough), the entries of its chunks are dropped, and a read of one of
// those chunks outside passthrough (another file holding the same chunk, a
// restore's memory, a handle opened before the assembly) is served from
// the assembled file's byte range, verified against the chunk's SHA-256.
// The list of an assembled file's chunks is kept beside it (maps/ID), so
// that the next daemon knows where they are; a map whose file is gone, or
// whose chunks do not add up to the file, is removed.

// inFileLoc is where a chunk's bytes are inside an assembled file.
type inFileLoc struct {
	file digest.ID
	off  int64
	size uint32
}

const mapsDir = "maps"

func (d *diskTier) mapPath(file digest.ID) string {
	return filepath.Join(d.dir, mapsDir, file.String())
}

// encodeMap is a file's chunk list: 32-byte ID and 4-byte size each.
func encodeMap(chunks []chunk.Ref) []byte {
	b := make([]byte, 0, len(chunks)*36)
	for _, c := range chunks {
		b = append(b, c.ID[:]...)
		b = binary.LittleEndian.AppendUint32(b, c.Size)
	}
	return b
}

func decodeMap(b []byte) ([]chunk.Ref, bool) {
	if len(b) == 0 || len(b)%36 != 0 {
		return nil, false
	}
	refs := make([]chunk.Ref, len(b)/36)
	for i := range refs {
		copy(refs[i].ID[:], b[i*36:])
		refs[i].Size = binary.LittleEndian.Uint32(b[i*36+32:])
		if refs[i].Size == 0 {
			return nil, false
		}
	}
	return refs, true
}

// replaceChunks records that the assembled file (an entry of the tier)
// holds chunks and drops their own entries.
func (d *diskTier) replaceChunks(file digest.ID, chunks []chunk.Ref) error {
	if err := os.MkdirAll(filepath.Join(d.dir, mapsDir), 0o700); err != nil {
		return err
	}
	tmp := filepath.Join(d.dir, "tmp", strconv.FormatUint(d.seq.Add(1), 10))
	if err := os.WriteFile(tmp, encodeMap(chunks), 0o600); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, d.mapPath(file)); err != nil {
		os.Remove(tmp)
		return err
	}
	d.mu.Lock()
	if _, ok := d.entries[file]; !ok { // evicted already
		d.mu.Unlock()
		os.Remove(d.mapPath(file))
		return nil
	}
	gone := d.mapLocked(file, chunks)
	d.mu.Unlock()
	removeFiles(gone)
	return nil
}

// mapLocked indexes file's chunks and drops their own entries, returning
// the files to remove.
func (d *diskTier) mapLocked(file digest.ID, chunks []chunk.Ref) (gone []string) {
	var off int64
	var mine []digest.ID
	for _, c := range chunks {
		if _, ok := d.inFile[c.ID]; !ok {
			d.inFile[c.ID] = inFileLoc{file: file, off: off, size: c.Size}
			mine = append(mine, c.ID)
		}
		off += int64(c.Size)
		if el, ok := d.entries[c.ID]; ok && c.ID != file {
			e := el.Value.(*diskEntry)
			d.lru.Remove(el)
			delete(d.entries, c.ID)
			d.used -= e.size
			gone = append(gone, d.path(e.id, e.sum))
		}
	}
	d.fileChunks[file] = mine
	return gone
}

// forgetLocked drops what the index says of an entry leaving the tier and
// returns its map file to remove ("" if it had none).
func (d *diskTier) forgetLocked(id digest.ID) string {
	mine, ok := d.fileChunks[id]
	if !ok {
		return ""
	}
	for _, c := range mine {
		if d.inFile[c].file == id {
			delete(d.inFile, c)
		}
	}
	delete(d.fileChunks, id)
	return d.mapPath(id)
}

// inFileHas reports whether chunk id is inside an assembled file.
func (d *diskTier) inFileHas(id digest.ID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.inFile[id]
	return ok
}

// getInFile reads chunk id from the assembled file holding it, verified by
// its SHA-256, into a buffer from pool.
func (d *diskTier) getInFile(id digest.ID, size uint32, pool *bufPool) (*buf, error) {
	d.mu.Lock()
	loc, ok := d.inFile[id]
	var e diskEntry
	if ok {
		var el = d.entries[loc.file]
		if el == nil {
			ok = false
		} else {
			d.lru.MoveToFront(el)
			e = *el.Value.(*diskEntry)
		}
	}
	d.mu.Unlock()
	if !ok {
		return nil, fs.ErrNotExist
	}
	if size != 0 && size != loc.size {
		return nil, fs.ErrNotExist // another length: the caller's image decides (see Cache.get)
	}
	f, err := rofile.Open(d.path(loc.file, e.sum))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			d.drop(loc.file, e)
		}
		return nil, err
	}
	defer f.Close()
	b := pool.get(int(loc.size))
	_, err = f.ReadAt(b.b, loc.off)
	if err == nil && digest.Of(b.b) != id {
		err = fmt.Errorf("%w: chunk %s inside %s does not hash to its ID", errCorruptEntry, id.Short(), d.path(loc.file, e.sum))
	}
	return d.readDone(b, err, func() { d.drop(loc.file, e) })
}

// loadMaps indexes the chunks of the assembled files an earlier daemon
// left (at open, before anything else uses the tier).
func (d *diskTier) loadMaps() {
	ents, err := os.ReadDir(filepath.Join(d.dir, mapsDir))
	if err != nil {
		return
	}
	var gone []string
	for _, de := range ents {
		p := filepath.Join(d.dir, mapsDir, de.Name())
		id, err := digest.Parse(de.Name())
		el, ok := d.entries[id]
		if err != nil || !ok {
			os.Remove(p)
			continue
		}
		b, err := os.ReadFile(p)
		chunks, good := decodeMap(b)
		var size int64
		for _, c := range chunks {
			size += int64(c.Size)
		}
		if err != nil || !good || size != el.Value.(*diskEntry).size || FileID(chunks) != id {
			os.Remove(p)
			continue
		}
		gone = append(gone, d.mapLocked(id, chunks)...)
	}
	removeFiles(gone)
}
