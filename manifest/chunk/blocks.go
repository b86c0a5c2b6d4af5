package chunk

import (
	"crypto/sha256"
	"fmt"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// BlockSize is the unit of a ranged read of a raw chunk: a cold random read
// fetches the blocks it touches, not the whole chunk. At 16 KiB a random 4
// KiB read pulls at most 4x what it asks for (8x where it straddles two
// blocks, which one read in five of 4 KiB does), and a 1 MiB chunk's index
// is 2 KiB.
const BlockSize = 16 << 10

// Blocks returns how many blocks a chunk of size bytes has.
func Blocks(size uint32) int { return int((int64(size) + BlockSize - 1) / BlockSize) }

// BlockIndex returns the block index of a chunk's plaintext: the SHA-256 of
// each BlockSize piece (the last may be shorter), concatenated. The index is
// itself stored as a chunk, named by its own digest, which the image's
// reference carries (Ref.Blocks): a ranged read fetches it once, then checks
// every block it fetches against it.
func BlockIndex(data []byte) []byte {
	out := make([]byte, 0, Blocks(uint32(len(data)))*digest.Size)
	for off := 0; off < len(data); off += BlockSize {
		s := sha256.Sum256(data[off:min(off+BlockSize, len(data))])
		out = append(out, s[:]...)
	}
	return out
}

// Indexed reports whether a chunk of this plaintext and stored blob gets a
// block index: only raw blobs can be read by range (a compressed payload's
// bytes do not sit at their plaintext offsets), and a chunk of one block
// gains nothing from it. blobLen is the stored blob's length (1+len(data)
// exactly when it is raw: Encode compresses only what saves 1/16).
func Indexed(dataLen, blobLen int) bool {
	return dataLen > BlockSize && blobLen == 1+dataLen
}

// BlockID returns block k's digest from a chunk's index, checking that the
// index fits a chunk of size bytes.
func BlockID(index []byte, size uint32, k int) (digest.ID, error) {
	n := Blocks(size)
	if len(index) != n*digest.Size {
		return digest.ID{}, fmt.Errorf("%w: block index of %d bytes for a chunk of %d blocks", ErrCorrupt, len(index), n)
	}
	if k < 0 || k >= n {
		return digest.ID{}, fmt.Errorf("block %d of a chunk of %d blocks", k, n)
	}
	var id digest.ID
	copy(id[:], index[k*digest.Size:])
	return id, nil
}

// BlockSpan returns block k's byte range [lo, hi) in a chunk of size bytes;
// in the stored raw blob it sits one byte further on (the codec byte).
func BlockSpan(size uint32, k int) (lo, hi int64) {
	lo = int64(k) * BlockSize
	return lo, min(lo+BlockSize, int64(size))
}
