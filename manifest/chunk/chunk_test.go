package chunk

import (
	"bytes"
	"errors"
	"math"
	"math/rand"
	randv2 "math/rand/v2"
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

func TestRoundTrip(t *testing.T) {
	rnd := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(rnd)
	cases := map[string][]byte{
		"empty":  {},
		"small":  []byte("hello"),
		"zeros":  make([]byte, 1<<20),
		"random": rnd,
		"text":   bytes.Repeat([]byte("import torch\n"), 10000),
	}
	for name, data := range cases {
		blob := Encode(data)
		got, err := Decode(blob, digest.Of(data))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: round trip differs", name)
		}
		if name == "zeros" && blob[0] != CodecZstd {
			t.Errorf("zeros not compressed")
		}
		if name == "random" && blob[0] != CodecRaw {
			t.Errorf("random data stored compressed")
		}
	}
}

func TestDecodeRejectsWrongContent(t *testing.T) {
	data := bytes.Repeat([]byte("abc"), 1000)
	blob := Encode(data)
	blob[len(blob)-1] ^= 1
	if _, err := Decode(blob, digest.Of(data)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("want ErrCorrupt, got %v", err)
	}
	if _, err := Decode([]byte{9, 1, 2}, digest.Of(data)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unknown codec: want ErrCorrupt, got %v", err)
	}
}

func TestDecodeTo(t *testing.T) {
	for _, data := range [][]byte{bytes.Repeat([]byte("compressible "), 10000), randomBytes(70000)} {
		blob, id := Encode(data), digest.Of(data)
		dst := make([]byte, 0, len(data))
		got, err := DecodeTo(dst, blob, id)
		if err != nil || !bytes.Equal(got, data) || &got[0] != &dst[:1][0] {
			t.Fatalf("codec %d: decoded into its own memory or wrongly: %v", blob[0], err)
		}
		small := make([]byte, 0, 10)
		if got, err := DecodeTo(small, blob, id); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("codec %d: a buffer too small: %v", blob[0], err)
		}
		if _, err := DecodeTo(dst, blob, digest.Of([]byte("other"))); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("codec %d: wrong digest accepted: %v", blob[0], err)
		}
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	x := uint64(88172645463325252)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

func FuzzDecode(f *testing.F) {
	f.Add(Encode([]byte("hello world hello world hello world")))
	f.Add(Encode(make([]byte, 4096)))
	f.Add([]byte{1, 0x28, 0xb5, 0x2f, 0xfd})
	f.Add(Encode(bf16Bytes(80<<10, 3)))
	f.Add([]byte{CodecPlanes2, blockRaw, 2, 0, 0, 0, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, blob []byte) {
		data, err := decode(nil, blob)
		if err != nil {
			return
		}
		// Decoding into a buffer gives the same bytes, in the buffer when
		// they fit.
		dst := make([]byte, 0, len(data)+3)
		into, err := decode(dst, blob)
		if err != nil || !bytes.Equal(into, data) || (len(into) > 0 && &into[0] != &dst[:1][0]) {
			t.Fatalf("decode into a buffer: %v", err)
		}
		// Whatever decodes must re-encode to something that decodes to it.
		back, err := Decode(Encode(data), digest.Of(data))
		if err != nil || !bytes.Equal(back, data) {
			t.Fatalf("re-encode failed: %v", err)
		}
	})
}

// EncodeTo builds blobs in the caller's buffer when it has the room, and
// they decode like Encode's.
func TestEncodeTo(t *testing.T) {
	buf := make([]byte, 0, 1<<20+1)
	for _, data := range [][]byte{
		bytes.Repeat([]byte("compressible "), 50000), // zstd
		randomBytes(1 << 20),                         // raw
		[]byte("tiny"),                               // raw, too small to try
	} {
		blob := EncodeTo(buf, data)
		if !bytes.Equal(blob, Encode(data)) {
			t.Fatalf("%d bytes: EncodeTo and Encode differ", len(data))
		}
		if &blob[0] != &buf[:1][0] {
			t.Fatalf("%d bytes: blob not built in the buffer", len(data))
		}
		got, err := Decode(blob, digest.Of(data))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: round trip: %v", len(data), err)
		}
	}
	if blob := EncodeTo(make([]byte, 0, 10), randomBytes(4096)); len(blob) != 4097 {
		t.Fatalf("a buffer too small: %d-byte blob", len(blob))
	}
}

// bf16Bytes imitates bf16 weights: N(0, 0.02) samples (Box-Muller)
// rounded to bfloat16, little-endian.
func bf16Bytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := randv2.New(randv2.NewPCG(seed, 1))
	for i := 0; i+1 < n; i += 2 {
		v := float32(r.NormFloat64() * 0.02)
		u := math.Float32bits(v) >> 16
		b[i], b[i+1] = byte(u), byte(u>>8)
	}
	return b
}

// bf16 weights are stored as byte planes, at most 0.8 of their size, and
// read back exactly.
func TestPlanes2(t *testing.T) {
	data := bf16Bytes(1<<20, 7)
	blob := Encode(data)
	if blob[0] != CodecPlanes2 {
		t.Fatalf("bf16 chunk stored with codec %d", blob[0])
	}
	if ratio := float64(len(blob)) / float64(len(data)); ratio > 0.8 {
		t.Fatalf("bf16 chunk stored at %.2f of its size", ratio)
	}
	got, err := Decode(blob, digest.Of(data))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("round trip: %v", err)
	}
	dst := make([]byte, 0, len(data))
	got, err = DecodeTo(dst, blob, digest.Of(data))
	if err != nil || &got[0] != &dst[:1][0] {
		t.Fatalf("DecodeTo did not decode into dst: %v", err)
	}
	// Random bytes stay raw; an odd-length plane payload is corrupt.
	if b := Encode(randomBytes(1 << 20)); b[0] != CodecRaw {
		t.Fatalf("random bytes stored with codec %d", b[0])
	}
	// Hostile payloads: blocks and mantissas that do not match, a block
	// longer than the payload, an unknown block kind.
	for name, blob := range map[string][]byte{
		"unequal":      append([]byte{CodecPlanes2, blockRaw, 3, 0, 0, 0, 1, 2, 3}, 9, 9),
		"long block":   {CodecPlanes2, blockHuff, 0xff, 0xff, 0, 0, 1},
		"unknown kind": {CodecPlanes2, 9, 1, 0, 0, 0, 7, 8},
		"empty":        {CodecPlanes2},
	} {
		if _, err := Decode(blob, digest.Of(nil)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A raw block and a repeated-byte block decode too.
	raw := append([]byte{CodecPlanes2, blockRaw, 2, 0, 0, 0, 'b', 'd'}, 'a', 'c')
	if got, err := Decode(raw, digest.Of([]byte("abcd"))); err != nil || string(got) != "abcd" {
		t.Errorf("raw block: %q %v", got, err)
	}
	rle := append([]byte{CodecPlanes2, blockRLE, 1, 0, 0, 0, 'z'}, 'a', 'b')
	if got, err := Decode(rle, digest.Of([]byte("azbz"))); err != nil || string(got) != "azbz" {
		t.Errorf("repeated-byte block: %q %v", got, err)
	}
}

func BenchmarkDecodePlanes2(b *testing.B) {
	data := bf16Bytes(1<<20, 7)
	blob := Encode(data)
	id := digest.Of(data)
	dst := make([]byte, 0, len(data))
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := DecodeParts(dst, blob[0], blob[1:], id); err != nil {
			b.Fatal(err)
		}
	}
}

// The decode alone, without the SHA-256 every read also pays.
func BenchmarkDecodePlanes2NoHash(b *testing.B) {
	data := bf16Bytes(1<<20, 7)
	blob := Encode(data)
	dst := make([]byte, 0, len(data))
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := decodePayload(dst, blob[0], blob[1:]); err != nil {
			b.Fatal(err)
		}
	}
}

// interleave (SSE2 on amd64) agrees with the Go version at every length
// and alignment.
func TestInterleave(t *testing.T) {
	r := randv2.New(randv2.NewPCG(1, 2))
	for n := 0; n < 200; n++ {
		for _, skew := range []int{0, 1, 7} {
			lo, hi := make([]byte, n+skew), make([]byte, n+skew)
			for i := range lo {
				lo[i], hi[i] = byte(r.Uint32()), byte(r.Uint32())
			}
			got, want := make([]byte, 2*n+skew+3), make([]byte, 2*n+skew+3)
			got[len(got)-1], want[len(want)-1] = 0xaa, 0xaa // past the end: untouched
			interleave(got[skew:], lo[skew:], hi[skew:])
			interleaveGeneric(want[skew:], lo[skew:], hi[skew:])
			if !bytes.Equal(got, want) {
				t.Fatalf("n=%d skew=%d: %x, want %x", n, skew, got, want)
			}
		}
	}
}

func TestBlockIndex(t *testing.T) {
	data := make([]byte, 3*BlockSize+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	ix := BlockIndex(data)
	if Blocks(uint32(len(data))) != 4 || len(ix) != 4*digest.Size {
		t.Fatalf("%d blocks, index of %d bytes", Blocks(uint32(len(data))), len(ix))
	}
	for k := 0; k < 4; k++ {
		id, err := BlockID(ix, uint32(len(data)), k)
		lo, hi := BlockSpan(uint32(len(data)), k)
		if err != nil || id != digest.Of(data[lo:hi]) {
			t.Fatalf("block %d [%d, %d): %v", k, lo, hi, err)
		}
	}
	if _, lo := BlockSpan(uint32(len(data)), 3); lo != int64(len(data)) {
		t.Fatal("the last block does not end at the chunk's end")
	}
	if _, err := BlockID(ix[:len(ix)-1], uint32(len(data)), 0); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a short index: want ErrCorrupt, got %v", err)
	}
	if _, err := BlockID(ix, uint32(len(data)), 4); err == nil {
		t.Fatal("block 4 of 4 accepted")
	}
	// Only raw blobs of more than one block are indexed.
	if !Indexed(len(data), 1+len(data)) || Indexed(len(data), len(data)) || Indexed(BlockSize, 1+BlockSize) {
		t.Fatal("Indexed")
	}
}
