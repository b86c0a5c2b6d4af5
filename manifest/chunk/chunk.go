// Package chunk encodes chunk contents for the store and decodes them back,
// verifying their identity.
//
// A stored chunk ("blob") is one codec byte followed by the payload:
//
//	0x00 raw     payload is the chunk itself
//	0x01 zstd    payload is a zstd frame of the chunk
//	0x02 planes2 a chunk of 16-bit values (bf16, fp16 weights) split into
//	             byte planes: u32 length L, a zstd frame (L bytes) of the
//	             odd bytes (sign and exponent, which take few values), then
//	             the even bytes raw (mantissas, incompressible)
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

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/klauspost/compress/zstd"
)

// Ref names one chunk of a file: its ID and uncompressed size.
type Ref struct {
	ID   digest.ID
	Size uint32 // uncompressed bytes
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
		out = append(out, CodecPlanes2, 0, 0, 0, 0)
		out = e.EncodeAll(hi, out)
		binary.LittleEndian.PutUint32(out[1:], uint32(len(out)-5))
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

// planePool holds the byte planes' scratch buffers (a chunk's size each).
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

// interleave writes lo[i], hi[i] pairs to out (len 2*len(lo)), eight
// pairs at a time.
func interleave(out, lo, hi []byte) {
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
	e, _ := codecs()
	buf := make([]byte, 0, 3*sample/2)
	planes := make([]byte, sample)
	n := 0
	for _, off := range []int{0, (len(data)/2 - sample/2) &^ 1, len(data) - sample} {
		split2(planes, data[off:off+sample])
		buf = e.EncodeAll(planes[sample/2:], buf)
		n += sample / 2
	}
	// The plane must shrink by a third for the chunk to shrink by a sixth.
	return len(buf) < n-n/3
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
		if len(payload) < 4 {
			return nil, fmt.Errorf("%w: byte planes: short payload", ErrCorrupt)
		}
		l := binary.LittleEndian.Uint32(payload)
		if uint64(l) > uint64(len(payload)-4) {
			return nil, fmt.Errorf("%w: byte planes: frame of %d bytes in a %d byte payload", ErrCorrupt, l, len(payload))
		}
		frame, lo := payload[4:4+l], payload[4+l:]
		if len(lo) > MaxSize/2 {
			return nil, fmt.Errorf("%w: byte planes: %d bytes exceeds the %d byte limit", ErrCorrupt, 2*len(lo), MaxSize)
		}
		_, d := codecs()
		pb := getPlanes(0)
		defer planePool.Put(pb)
		hi, err := d.DecodeAll(frame, (*pb)[:0])
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
		}
		*pb = hi[:0]
		if len(hi) != len(lo) {
			return nil, fmt.Errorf("%w: byte planes of %d and %d bytes", ErrCorrupt, len(lo), len(hi))
		}
		n := 2 * len(lo)
		out := dst
		if out == nil || cap(out) < n {
			out = make([]byte, n)
		}
		out = out[:n]
		interleave(out, lo, hi)
		return out, nil
	default:
		return nil, fmt.Errorf("%w: unknown codec byte 0x%02x", ErrCorrupt, codec)
	}
}
