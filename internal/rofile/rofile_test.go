package rofile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 10)
	n, err := f.ReadAt(b, 1)
	if string(b[:n]) != "ello" {
		t.Fatalf("read %q (%v)", b[:n], err)
	}
	if _, err := f.Write([]byte("x")); err == nil {
		t.Fatal("a read-only file took a write")
	}
	if _, err := Open(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v, want ErrNotExist", err)
	}
	var pe *fs.PathError
	if _, err := Open(filepath.Join(dir, "missing")); !errors.As(err, &pe) || pe.Path != filepath.Join(dir, "missing") {
		t.Fatalf("error %v does not name the path", err)
	}
}
