package pack

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
	"golang.org/x/sys/unix"
)

// walked returns the srcFile the walk would make of dir/rel.
func walked(t *testing.T, dir, rel string) *srcFile {
	t.Helper()
	f := &srcFile{rel: rel, full: filepath.Join(dir, rel)}
	if err := unix.Lstat(f.full, &f.st); err != nil {
		t.Fatal(err)
	}
	return f
}

func rootOf(t *testing.T, dir string) int {
	t.Helper()
	fd, err := openRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

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
	r := newSourceReader(rootOf(t, dir), chunk)
	defer r.close()
	bigF := walked(t, dir, "big")
	for i := 0; i*chunk < len(big); i++ {
		off := i * chunk
		size := min(chunk, len(big)-off)
		b, err := r.read(bigF, int64(off), int64(size))
		if err != nil || !bytes.Equal(b, big[off:off+size]) {
			t.Fatalf("big chunk %d: %v", i, err)
		}
	}
	if !r.direct {
		t.Log("this filesystem refused O_DIRECT: read through the page cache")
	}
	if b, err := r.read(walked(t, dir, "small"), 0, int64(len(small))); err != nil || !bytes.Equal(b, small) || r.direct {
		t.Fatalf("small file: %q %v direct=%v", b, err, r.direct)
	}
	os.Truncate(filepath.Join(dir, "big"), chunk+10)
	if _, err := r.read(bigF, 2*chunk, chunk); !errors.Is(err, errChanged) {
		t.Fatalf("a shrunk file: %v", err)
	}
}

// A file swapped for a symlink after the walk, a directory on its path
// swapped for a symlink, a file replaced or rewritten in place: none is
// read; each fails naming the file.
func TestSourceSwapsRefused(t *testing.T) {
	secretDir := t.TempDir()
	secret := filepath.Join(secretDir, "shadow")
	os.WriteFile(secret, []byte("root's secret"), 0o600)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	for _, n := range []string{"z.txt", "sub/f.txt", "w.txt", "r.txt"} {
		os.WriteFile(filepath.Join(dir, n), []byte("harmless"), 0o644)
	}
	files := map[string]*srcFile{}
	for _, n := range []string{"z.txt", "sub/f.txt", "w.txt", "r.txt"} {
		files[n] = walked(t, dir, n)
	}
	// After the walk:
	os.Remove(filepath.Join(dir, "z.txt"))
	os.Symlink(secret, filepath.Join(dir, "z.txt"))
	os.Rename(filepath.Join(dir, "sub"), filepath.Join(dir, "sub.old"))
	os.MkdirAll(filepath.Join(secretDir, "sub"), 0o755)
	os.WriteFile(filepath.Join(secretDir, "sub", "f.txt"), []byte("secret too"), 0o600)
	os.Symlink(filepath.Join(secretDir, "sub"), filepath.Join(dir, "sub"))
	time.Sleep(20 * time.Millisecond)                                    // past the filesystem's timestamp granularity
	os.WriteFile(filepath.Join(dir, "w.txt"), []byte("HARMLESS"), 0o644) // same size, rewritten
	os.Remove(filepath.Join(dir, "r.txt"))
	os.WriteFile(filepath.Join(dir, "r.txt"), []byte("harmless"), 0o644) // another inode
	r := newSourceReader(rootOf(t, dir), 1<<20)
	defer r.close()
	for n, f := range files {
		b, err := r.read(f, 0, f.st.Size)
		if !errors.Is(err, errChanged) || !strings.Contains(err.Error(), f.full) {
			t.Errorf("%s: read %q, err %v; want an error naming it", n, b, err)
		}
	}
}

// A tree changed between the walk and the upload fails the pack, naming
// the file; nothing of the secret reaches the store.
func TestPackRefusesSwappedFile(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(secret, []byte("root's secret, never to be packed"), 0o600)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.txt"), []byte("a"), 0o644)
	os.WriteFile(filepath.Join(dir, "z.txt"), []byte("z"), 0o644)
	afterWalk = func() {
		os.Remove(filepath.Join(dir, "z.txt"))
		os.Symlink(secret, filepath.Join(dir, "z.txt"))
	}
	defer func() { afterWalk = nil }()
	storeDir := t.TempDir()
	st, err := filestore.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Dir(context.Background(), st, dir, Options{})
	if !errors.Is(err, errChanged) || !strings.Contains(err.Error(), "z.txt") {
		t.Fatalf("pack of a tree with a swapped file: %v", err)
	}
	st.List(context.Background(), store.Chunk, func(in store.Info) error {
		b, _ := st.Get(context.Background(), store.Handle{Kind: store.Chunk, Name: in.Name}, 0, -1)
		if bytes.Contains(b, []byte("secret")) {
			t.Errorf("the secret reached the store in chunk %s", in.Name)
		}
		return nil
	})
}
