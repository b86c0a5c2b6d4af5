package pack

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Chunks read back exactly, with O_DIRECT (large files, a short last
// block) and without (small files); a file that shrank is an error.
func TestSourceReader(t *testing.T) {
	dir := t.TempDir()
	const chunk = 1 << 20
	big := make([]byte, 3*chunk+123)
	rand.New(rand.NewSource(1)).Read(big)
	small := []byte("a small file")
	os.WriteFile(filepath.Join(dir, "big"), big, 0o644)
	os.WriteFile(filepath.Join(dir, "small"), small, 0o644)
	r := newSourceReader(chunk)
	defer r.close()
	for i := 0; i*chunk < len(big); i++ {
		off := i * chunk
		size := min(chunk, len(big)-off)
		b, err := r.read(filepath.Join(dir, "big"), int64(off), int64(size))
		if err != nil || !bytes.Equal(b, big[off:off+size]) {
			t.Fatalf("big chunk %d: %v", i, err)
		}
	}
	if !r.direct {
		t.Log("this filesystem refused O_DIRECT: read through the page cache")
	}
	if b, err := r.read(filepath.Join(dir, "small"), 0, int64(len(small))); err != nil || !bytes.Equal(b, small) || r.direct {
		t.Fatalf("small file: %q %v direct=%v", b, err, r.direct)
	}
	os.Truncate(filepath.Join(dir, "big"), chunk+10)
	if _, err := r.read(filepath.Join(dir, "big"), 2*chunk, chunk); err == nil || !strings.Contains(err.Error(), "shrank") {
		t.Fatalf("a shrunk file: %v", err)
	}
}
