package inflate

import (
	"bytes"
	stdgzip "compress/gzip"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	kgzip "github.com/klauspost/compress/gzip"
)

// native is compiled in where ISA-L's header is; with the header there the
// library must load too (libisal-dev brings it), or every test would pass
// without exercising it.
func requireNative(t *testing.T) {
	t.Helper()
	if ok, err := Native(); !ok {
		if compiledIn() {
			t.Fatalf("ISA-L compiled in but not loadable: %v", err)
		}
		t.Skipf("ISA-L: %v", err)
	}
}

// sample is data like a layer's: text, bf16-like weights and random bytes.
func sample(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := 0; i < n; {
		k := min(n-i, 1+r.IntN(64<<10))
		switch r.IntN(3) {
		case 0:
			for j := i; j < i+k; j++ {
				b[j] = "the quick brown fox jumps over the lazy dog\n"[r.IntN(44)]
			}
		case 1:
			for j := i; j+1 < i+k; j += 2 {
				b[j], b[j+1] = byte(r.Uint32()), 0x3c+byte(r.IntN(3))
			}
		default:
			for j := i; j < i+k; j++ {
				b[j] = byte(r.Uint32())
			}
		}
		i += k
	}
	return b
}

func gz(t testing.TB, data []byte, level int, name string) []byte {
	var buf bytes.Buffer
	w, err := stdgzip.NewWriterLevel(&buf, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Name, w.Comment, w.Extra = name, name, []byte(name)
	w.Write(data)
	w.Close()
	return buf.Bytes()
}

// oneByteReader hands its bytes out one at a time: every buffer edge.
type oneByteReader struct{ b []byte }

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

func readAll(t *testing.T, newR func(io.Reader) (io.ReadCloser, error), r io.Reader) ([]byte, error) {
	t.Helper()
	z, err := newR(r)
	if err != nil {
		return nil, err
	}
	defer z.Close()
	return io.ReadAll(z)
}

func TestNativeMatchesTheData(t *testing.T) {
	requireNative(t)
	one := sample(1, 3<<20+17)
	two := sample(2, 700<<10)
	cases := map[string]struct {
		stream []byte
		want   []byte
	}{
		"level 1":            {gz(t, one, 1, ""), one},
		"level 6, named":     {gz(t, one, 6, "layer.tar"), one},
		"level 9":            {gz(t, two, 9, ""), two},
		"stored (level 0)":   {gz(t, two, 0, ""), two},
		"empty":              {gz(t, nil, 6, ""), nil},
		"two members":        {append(gz(t, one, 1, "a"), gz(t, two, 6, "b")...), append(append([]byte{}, one...), two...)},
		"an empty member in": {append(append(gz(t, two, 6, ""), gz(t, nil, 6, "")...), gz(t, two, 1, "")...), append(append([]byte{}, two...), two...)},
	}
	for name, c := range cases {
		for _, feed := range []string{"whole", "byte by byte"} {
			var r io.Reader = bytes.NewReader(c.stream)
			if feed == "byte by byte" {
				if len(c.stream) > 1<<20 {
					continue
				}
				r = &oneByteReader{c.stream}
			}
			got, err := readAll(t, newNative, r)
			if err != nil || !bytes.Equal(got, c.want) {
				t.Errorf("%s, %s: %d bytes, %v; want %d bytes", name, feed, len(got), err, len(c.want))
			}
		}
	}
	// klauspost's writer too (what other tools' layers may come from).
	var buf bytes.Buffer
	w, _ := kgzip.NewWriterLevel(&buf, kgzip.BestSpeed)
	w.Write(one)
	w.Close()
	if got, err := readAll(t, newNative, &buf); err != nil || !bytes.Equal(got, one) {
		t.Errorf("klauspost's gzip: %d bytes, %v", len(got), err)
	}
}

// Damage is an error, never data: a flipped byte anywhere (deflate data,
// CRC-32, length), a stream cut short, bytes after the last member that
// are not a member, and what is not gzip at all.
func TestNativeRefusesDamage(t *testing.T) {
	requireNative(t)
	data := sample(3, 1<<20)
	good := gz(t, data, 6, "")
	r := rand.New(rand.NewPCG(9, 9))
	for i := 0; i < 40; i++ {
		bad := bytes.Clone(good)
		k := 10 + r.IntN(len(bad)-10) // past the header's mtime and flags
		if i%4 == 0 {
			k = len(bad) - 1 - r.IntN(8) // the trailer
		}
		bad[k] ^= byte(1 + r.IntN(255))
		got, err := readAll(t, newNative, bytes.NewReader(bad))
		if err == nil {
			t.Fatalf("byte %d of %d flipped: read %d bytes without an error (equal to the data: %v)", k, len(bad), len(got), bytes.Equal(got, data))
		}
	}
	for _, cut := range []int{1, 10, 100, len(good) / 2, len(good) - 8, len(good) - 1} {
		if _, err := readAll(t, newNative, bytes.NewReader(good[:cut])); !errors.Is(err, io.ErrUnexpectedEOF) && err == nil {
			t.Errorf("cut to %d bytes: no error", cut)
		}
	}
	if _, err := readAll(t, newNative, bytes.NewReader(good[:len(good)-4])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("trailer cut: %v, want unexpected EOF", err)
	}
	if _, err := readAll(t, newNative, bytes.NewReader(append(bytes.Clone(good), "trailing junk"...))); err == nil {
		t.Error("bytes after the last member that are not a member: no error")
	}
	if _, err := readAll(t, newNative, bytes.NewReader([]byte("plain tar bytes, not gzip at all........"))); err == nil {
		t.Error("not gzip: no error")
	}
}

func TestReadAfterCloseAndCloseTwice(t *testing.T) {
	requireNative(t)
	z, err := newNative(bytes.NewReader(gz(t, []byte("abc"), 6, "")))
	if err != nil {
		t.Fatal(err)
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := z.Read(make([]byte, 10)); err == nil {
		t.Fatal("read after Close succeeded")
	}
}

// FuzzInflate: any bytes, whole or one at a time, never crash the native
// reader, and where both it and the Go inflate read a stream to its end
// they return the same bytes.
func FuzzInflate(f *testing.F) {
	f.Add(gz(f, []byte("hello, layer"), 6, "x"))
	f.Add(append(gz(f, sample(5, 5000), 1, ""), gz(f, nil, 9, "")...))
	f.Add(gz(f, sample(6, 3000), 0, ""))
	f.Add([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		if ok, _ := Native(); !ok {
			t.Skip("no ISA-L")
		}
		got, err := readAll(t, newNative, bytes.NewReader(b))
		want, werr := readAll(t, newGo, bytes.NewReader(b))
		if err == nil && werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("ISA-L read %d bytes, the Go inflate %d, and they differ", len(got), len(want))
		}
		if len(b) < 4096 {
			got2, err2 := readAll(t, newNative, &oneByteReader{b})
			if (err == nil) != (err2 == nil) || err == nil && !bytes.Equal(got, got2) {
				t.Fatalf("byte by byte: %d bytes, %v; whole: %d bytes, %v", len(got2), err2, len(got), err)
			}
		}
	})
}
