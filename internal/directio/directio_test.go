package directio

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

// Files of every length around block boundaries hold exactly their bytes:
// whole blocks written with O_DIRECT, the rest through the page cache.
func TestWriteNewLengths(t *testing.T) {
	dir := t.TempDir()
	rnd := rand.New(rand.NewSource(1))
	for _, size := range []int{0, 1, 100, Align - 1, Align, Align + 1, 3*Align + 17, 1<<20 + 1} {
		data := make([]byte, size)
		rnd.Read(data)
		padded, done := Pad(data)
		// Junk after the data must not reach the file.
		for i := size; i < len(padded); i++ {
			padded[i] = 0xAA
		}
		name := filepath.Join(dir, "f")
		os.Remove(name)
		err := WriteNew(name, padded[:size], 0o600, true)
		done()
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		got, err := os.ReadFile(name)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: read back %d bytes (%v), want its %d bytes", size, len(got), err, size)
		}
	}
}
