// Package chunk encodes chunk contents for the store and decodes them back,
// verifying their identity.
//
// A stored chunk ("blob") is one codec byte followed by the payload:
//
//	0x00 raw     payload is the chunk itself
//	0x01 zstd    payload is a zstd frame of the chunk
//	0x02 planes2 a chunk of 16-bit values (bf16, fp16 weights) split into
//	             byte planes: the odd bytes (sign and exponent, which take
//	             few values) entropy-coded in blocks of 128 KiB, each a kind
//	             byte (0 huff0 4X stream with its table, 1 raw, 2 one
//	             repeated byte), a u32 length and its bytes; then the even
//	             bytes raw (mantissas, incompressible)
//
// Chunks are compressed only when that saves at least 1/16 of their size, so
// incompressible data (weights, already-compressed files) costs nothing to
// read back. The chunk's ID is always the SHA-256 of the uncompressed bytes,
// and Decode refuses any blob whose contents do not hash to the expected ID:
// nothing corrupt leaves this package.
package chunk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/huff0"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/klauspost/compress/zstd"
)

// Ref names one piece of a file: the chunk that holds it, by ID, and the
// piece's uncompressed size; for a chunk stored raw, the ID of its block
// index (see BlockIndex; zero when it has none and is only ever fetched
// whole).
//
// Most pieces are whole chunks. Small files are packed several to a chunk
// (see Shared): such a piece is the chunk's bytes [Off, Off+Size) of its
// Whole bytes, and the chunk is fetched, verified and cached whole, once for
// all the files in it.
type Ref struct {
	ID     digest.ID
	Size   uint32 // uncompressed bytes of the piece
	Blocks digest.ID
	Off    uint32 // where the piece starts in a shared chunk
	Whole  uint32 // a shared chunk's length; 0 when the piece is the chunk
}

// Shared reports whether r is part of a chunk that holds several files.
func (r Ref) Shared() bool { return r.Whole != 0 }

// Len is the length of the chunk r names: what a fetch of it decodes to.
func (r Ref) Len() uint32 {
	if r.Whole != 0 {
		return r.Whole
	}
	return r.Size
}

// Codec bytes.
const (
	CodecRaw     byte = 0
	CodecZstd    byte = 1
	CodecPlanes2 byte = 2
)

// MaxSize bounds the size of one decoded chunk, so a hostile blob cannot make
// a worker allocate without limit.
const MaxSize = 64 << 20

// ErrCorrupt is returned (wrapped) when a blob cannot be decoded or does not
// match its ID.
var ErrCorrupt = errors.New("corrupt chunk")

var (
	encOnce sync.Once
	enc     *zstd.Encoder
	dec     *zstd.Decoder
)

func codecs() (*zstd.Encoder, *zstd.Decoder) {
	encOnce.Do(func() {
		var err error
		// EncodeAll runs on as many chunks at once as the concurrency
		// lets (pack's and the page server's workers each encode one):
		// at 1, every worker waited for the one encoder, and a pack of a
		// Python venv (7.3 GB, 69k files, mostly compressible) used 1.2 of
		// 16 cores for 44 s.
		enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithLowerEncoderMem(true))
		if err != nil {
			panic(err)
		}
		dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(MaxSize), zstd.WithDecoderMaxWindow(MaxSize))
		if err != nil {
			panic(err)
		}
	})
	return enc, dec
}

// Encode returns the blob for data, compressed when that pays.
func Encode(data []byte) []byte { return EncodeTo(nil, data) }

// EncodeTo is Encode building the blob in dst's memory when dst has the
// capacity (1+len(data) bytes hold any blob), so that a caller reusing one
// buffer, aligned for O_DIRECT say, allocates and copies nothing more.
func EncodeTo(dst, data []byte) []byte {
	e, _ := codecs()
	if len(data) >= 512 && compressible(data) {
		out := dst[:0]
		if cap(out) < len(data)/2+16 {
			out = make([]byte, 0, len(data)/2+16)
		}
		out = append(out, CodecZstd)
		out = e.EncodeAll(data, out)
		if len(out)-1 <= len(data)-len(data)/16 {
			return out
		}
	}
	if len(data) >= 512 && len(data)%2 == 0 && planesPay(data) {
		h := len(data) / 2
		pb := getPlanes(len(data))
		split2(*pb, data)
		lo, hi := (*pb)[:h], (*pb)[h:]
		out := dst[:0]
		if cap(out) < len(data)+16 {
			out = make([]byte, 0, len(data)+16)
		}
		out = append(out, CodecPlanes2)
		out = appendPlane(out, hi)
		out = append(out, lo...)
		planePool.Put(pb)
		if len(out)-1 <= len(data)-len(data)/16 {
			return out
		}
	}
	out := dst[:0]
	if cap(out) < 1+len(data) {
		out = make([]byte, 0, 1+len(data))
	}
	out = append(out, CodecRaw)
	return append(out, data...)
}

// planePool holds the byte planes' scratch buffers (a chunk's size for
// encoding, a block's for decoding).
var planePool sync.Pool

func getPlanes(n int) *[]byte {
	pb, _ := planePool.Get().(*[]byte)
	if pb == nil {
		b := make([]byte, 0, max(n, 1<<20))
		pb = &b
	}
	if cap(*pb) < n {
		*pb = make([]byte, n)
	}
	*pb = (*pb)[:n]
	return pb
}

// split2 writes src's even bytes, then its odd bytes, to dst.
func split2(dst, src []byte) {
	h := len(src) / 2
	lo, hi := dst[:h], dst[h:2*h]
	for i := 0; i < h; i++ {
		lo[i], hi[i] = src[2*i], src[2*i+1]
	}
}

// planeLen finds the length h of the planes of a planes2 payload: the
// coded plane's blocks (all of planeBlock bytes but the last) followed by
// h raw bytes.
func planeLen(payload []byte) (int, error) {
	rest := payload
	for blocks := 1; ; blocks++ {
		if len(rest) < 5 {
			return 0, fmt.Errorf("%w: byte planes: short block header", ErrCorrupt)
		}
		l := binary.LittleEndian.Uint32(rest[1:])
		if uint64(l) > uint64(len(rest)-5) {
			return 0, fmt.Errorf("%w: byte planes: block of %d bytes in %d", ErrCorrupt, l, len(rest)-5)
		}
		rest = rest[5+l:]
		// What is left is the mantissa plane once it is no longer than
		// the blocks so far can hold and more than the blocks before.
		h := len(rest)
		if h > (blocks-1)*planeBlock && h <= blocks*planeBlock {
			return h, nil
		}
		if h <= (blocks-1)*planeBlock || blocks > MaxSize/2/planeBlock {
			return 0, fmt.Errorf("%w: byte planes: blocks and mantissas do not match", ErrCorrupt)
		}
	}
}

// interleaveGeneric writes lo[i], hi[i] pairs to out (len 2*len(lo)),
// eight pairs at a time; interleave (per architecture) is the entry point.
func interleaveGeneric(out, lo, hi []byte) {
	h := len(lo)
	hi = hi[:h]
	out = out[:2*h]
	i := 0
	for ; i+8 <= h; i += 8 {
		l := binary.LittleEndian.Uint64(lo[i:])
		g := binary.LittleEndian.Uint64(hi[i:])
		binary.LittleEndian.PutUint64(out[2*i:], spread(l)|spread(g)<<8)
		binary.LittleEndian.PutUint64(out[2*i+8:], spread(l>>32)|spread(g>>32)<<8)
	}
	for ; i < h; i++ {
		out[2*i], out[2*i+1] = lo[i], hi[i]
	}
}

// spread moves the low four bytes of x to the even bytes of the result.
func spread(x uint64) uint64 {
	x &= 0xffffffff
	x = (x | x<<16) & 0x0000ffff0000ffff
	return (x | x<<8) & 0x00ff00ff00ff00ff
}

// planesPay guesses from three samples whether the sign-and-exponent
// plane of 16-bit values compresses where the bytes as they are did not:
// bf16 and fp16 weights, whose exponents take few values.
func planesPay(data []byte) bool {
	const sample = 16 << 10
	if len(data) <= 4*sample {
		return false
	}
	planes := make([]byte, sample)
	var s huff0.Scratch
	s.Reuse = huff0.ReusePolicyNone
	in, n := 0, 0
	for _, off := range []int{0, (len(data)/2 - sample/2) &^ 1, len(data) - sample} {
		split2(planes, data[off:off+sample])
		out, _, err := huff0.Compress4X(planes[sample/2:], &s)
		switch {
		case err == nil:
			n += len(out)
		case errors.Is(err, huff0.ErrUseRLE):
			n++
		default:
			n += sample / 2
		}
		in += sample / 2
	}
	// The plane must shrink by a third for the chunk to shrink by a sixth.
	return n < in-in/3
}

// scratchPool keeps huff0's decoding tables between chunks.
var scratchPool sync.Pool

// planeBlock is the size of the blocks a plane is entropy-coded in
// (huff0's largest).
const planeBlock = 128 << 10

// Kinds of a plane's blocks.
const (
	blockHuff byte = 0
	blockRaw  byte = 1
	blockRLE  byte = 2
)

// appendPlane appends plane p, block by block, each coded on its own (a
// table each: blocks decode independently).
func appendPlane(out, p []byte) []byte {
	s := &huff0.Scratch{Reuse: huff0.ReusePolicyNone}
	for off := 0; off < len(p); off += planeBlock {
		b := p[off:min(off+planeBlock, len(p))]
		comp, _, err := huff0.Compress4X(b, s)
		switch {
		case err == nil:
			out = append(out, blockHuff)
			out = binary.LittleEndian.AppendUint32(out, uint32(len(comp)))
			out = append(out, comp...)
		case errors.Is(err, huff0.ErrUseRLE):
			out = append(out, blockRLE)
			out = binary.LittleEndian.AppendUint32(out, 1)
			out = append(out, b[0])
		default: // incompressible, or too small
			out = append(out, blockRaw)
			out = binary.LittleEndian.AppendUint32(out, uint32(len(b)))
			out = append(out, b...)
		}
	}
	return out
}

// readPlane decodes a plane of n bytes from payload's start a block at a
// time, into scratch (planeBlock bytes; raw blocks are handed over as they
// are), calling emit with each block's offset and bytes; it returns what
// follows the plane.
func readPlane(scratch []byte, n int, payload []byte, emit func(off int, block []byte)) ([]byte, error) {
	s, _ := scratchPool.Get().(*huff0.Scratch)
	defer func() {
		if s != nil {
			scratchPool.Put(s)
		}
	}()
	for off := 0; off < n; off += planeBlock {
		want := min(planeBlock, n-off)
		if len(payload) < 5 {
			return nil, fmt.Errorf("%w: byte planes: short block header", ErrCorrupt)
		}
		kind, l := payload[0], binary.LittleEndian.Uint32(payload[1:])
		payload = payload[5:]
		if uint64(l) > uint64(len(payload)) {
			return nil, fmt.Errorf("%w: byte planes: block of %d bytes in %d", ErrCorrupt, l, len(payload))
		}
		b := payload[:l]
		payload = payload[l:]
		out := scratch[:want]
		switch kind {
		case blockRaw:
			if len(b) != want {
				return nil, fmt.Errorf("%w: byte planes: raw block of %d bytes, want %d", ErrCorrupt, len(b), want)
			}
			out = b
		case blockRLE:
			if len(b) != 1 {
				return nil, fmt.Errorf("%w: byte planes: repeated-byte block of %d bytes", ErrCorrupt, len(b))
			}
			for i := range out {
				out[i] = b[0]
			}
		case blockHuff:
			var err error
			var rest []byte
			if s, rest, err = huff0.ReadTable(b, s); err != nil {
				return nil, fmt.Errorf("%w: byte planes: %v", ErrCorrupt, err)
			}
			got, err := s.Decoder().Decompress4X(out[:0:want], rest)
			if err != nil || len(got) != want {
				return nil, fmt.Errorf("%w: byte planes: block decodes to %d bytes, want %d (%v)", ErrCorrupt, len(got), want, err)
			}
		default:
			return nil, fmt.Errorf("%w: byte planes: block kind %d", ErrCorrupt, kind)
		}
		emit(off, out)
	}
	return payload, nil
}

// compressible guesses from a sample whether zstd will pay, so that large
// incompressible chunks (model weights) skip the full compression attempt.
// The sample is three 4 KiB pieces: zstd judges them in 9 us a 1 MiB chunk
// against 119 us for 16 KiB pieces (18% of the chunk's SHA-256 on the 2-CPU
// VM), and both sizes judged alike on random bytes, bf16 and fp32 weights
// (1.00), a shared library (0.60 and 0.54 of their size) and source text
// (0.39 and 0.34); a sample must shrink by a tenth.
func compressible(data []byte) bool {
	const sample = 4 << 10
	if len(data) <= 4*sample {
		return true
	}
	e, _ := codecs()
	buf := make([]byte, 0, 3*sample)
	// Beginning, middle and end of the chunk.
	n := 0
	for _, off := range []int{0, len(data)/2 - sample/2, len(data) - sample} {
		buf = e.EncodeAll(data[off:off+sample], buf)
		n += sample
	}
	return len(buf) < n-n/10
}

// Decode checks blob against want and returns the chunk contents (which
// may share blob's memory).
func Decode(blob []byte, want digest.ID) ([]byte, error) {
	return DecodeTo(nil, blob, want)
}

// DecodeTo is Decode writing the contents into dst's memory when they fit
// in its capacity (a zstd blob decodes straight into it, a raw one is
// copied); otherwise, or with a nil dst, into memory of its own. The result
// aliases dst exactly when &result[0] == &dst[:1][0].
func DecodeTo(dst, blob []byte, want digest.ID) ([]byte, error) {
	data, err := decode(dst, blob)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", want.Short(), err)
	}
	if got := digest.Of(data); got != want {
		return nil, fmt.Errorf("chunk %s: %w: contents hash to %s", want.Short(), ErrCorrupt, got.Short())
	}
	return data, nil
}

// DecodeParts is DecodeTo for a blob read in two parts: its codec byte and
// its payload (a scatter read puts a raw chunk's payload where it belongs,
// and dst may then be that very memory: nothing moves). A zstd payload
// must not overlap dst.
func DecodeParts(dst []byte, codec byte, payload []byte, want digest.ID) ([]byte, error) {
	data, err := decodePayload(dst, codec, payload)
	if err != nil {
		return nil, fmt.Errorf("chunk %s: %w", want.Short(), err)
	}
	if got := digest.Of(data); got != want {
		return nil, fmt.Errorf("chunk %s: %w: contents hash to %s", want.Short(), ErrCorrupt, got.Short())
	}
	return data, nil
}

func decode(dst, blob []byte) ([]byte, error) {
	if len(blob) == 0 {
		return nil, fmt.Errorf("%w: empty blob", ErrCorrupt)
	}
	return decodePayload(dst, blob[0], blob[1:])
}

func decodePayload(dst []byte, codec byte, payload []byte) ([]byte, error) {
	switch codec {
	case CodecRaw:
		if len(payload) > MaxSize {
			return nil, fmt.Errorf("%w: %d bytes exceeds the %d byte limit", ErrCorrupt, len(payload), MaxSize)
		}
		if dst != nil && cap(dst) >= len(payload) {
			return append(dst[:0], payload...), nil
		}
		return payload, nil
	case CodecZstd:
		_, d := codecs()
		if dst != nil {
			dst = dst[:0]
		}
		out, err := d.DecodeAll(payload, dst)
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
		}
		return out, nil
	case CodecPlanes2:
		// The mantissa plane is what follows the coded plane, and both
		// are half the chunk: its length is found from the blocks' headers
		// (each names its length; the number of blocks follows from it).
		h, err := planeLen(payload)
		if err != nil {
			return nil, err
		}
		n := 2 * h
		if n > MaxSize {
			return nil, fmt.Errorf("%w: byte planes: %d bytes exceeds the %d byte limit", ErrCorrupt, n, MaxSize)
		}
		out := dst
		if out == nil || cap(out) < n {
			out = make([]byte, n)
		}
		out = out[:n]
		// Each decoded block of the coded plane is interleaved with its
		// mantissas at once, so a decode needs a block of scratch, not a
		// plane (same speed as a whole plane at a time). planeLen
		// found the mantissa plane: the h bytes at the end.
		lo := payload[len(payload)-h:]
		pb := getPlanes(planeBlock)
		defer planePool.Put(pb)
		rest, err := readPlane((*pb)[:planeBlock], h, payload, func(off int, hi []byte) {
			interleave(out[2*off:], lo[off:off+len(hi)], hi)
		})
		if err != nil {
			return nil, err
		}
		if len(rest) != h {
			return nil, fmt.Errorf("%w: byte planes of %d and %d bytes", ErrCorrupt, len(rest), h)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%w: unknown codec byte 0x%02x", ErrCorrupt, codec)
	}
}
