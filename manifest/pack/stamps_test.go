package pack

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// A re-pack keeps the chunks of files whose stamps did not change, reads
// the one that did (same size, new bytes), and the image is what a full
// pack makes; a record for an image the tag no longer names is ignored.
func TestRepackSkipsUnchangedFiles(t *testing.T) {
	ctx := context.Background()
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	for i, name := range []string{"a.bin", "b.bin", "dir/c.bin"} {
		os.MkdirAll(filepath.Dir(filepath.Join(src, name)), 0o755)
		os.WriteFile(filepath.Join(src, name), bytes.Repeat([]byte{byte('a' + i)}, 300<<10), 0o644)
	}
	stamps := StampPath(t.TempDir(), st, src, "t")
	pack := func(prev *Previous) *Result {
		t.Helper()
		res, err := Dir(ctx, st, src, Options{ChunkSize: 128 << 10, Previous: prev})
		if err != nil {
			t.Fatal(err)
		}
		if err := store.SetTag(ctx, st, "t", res.ID); err != nil {
			t.Fatal(err)
		}
		if err := SaveStamps(stamps, res.ID, 128<<10, res.Stamps); err != nil {
			t.Fatal(err)
		}
		return res
	}
	first := pack(nil)
	if first.Reused != 0 {
		t.Fatalf("first pack reused %d", first.Reused)
	}
	prev, err := LoadPrevious(ctx, st, stamps, "t", 128<<10)
	if err != nil || prev == nil {
		t.Fatalf("LoadPrevious: %v %v", prev, err)
	}
	same := pack(prev)
	if same.Reused != 3 || same.ReadBytes != 0 || same.ID != first.ID {
		t.Fatalf("unchanged re-pack: reused %d, read %d, image %s (first %s)", same.Reused, same.ReadBytes, same.ID, first.ID)
	}
	// Same size, new bytes: its ctime moved, so it is read again.
	os.WriteFile(filepath.Join(src, "b.bin"), bytes.Repeat([]byte{'z'}, 300<<10), 0o644)
	prev, _ = LoadPrevious(ctx, st, stamps, "t", 128<<10)
	changed := pack(prev)
	if changed.Reused != 2 || changed.ReadBytes != 300<<10 {
		t.Fatalf("re-pack after a change: reused %d, read %d", changed.Reused, changed.ReadBytes)
	}
	full, err := Dir(ctx, st, src, Options{ChunkSize: 128 << 10})
	if err != nil || full.ID != changed.ID {
		t.Fatalf("the re-pack's image %s differs from a full pack's %s (%v)", changed.ID, full.ID, err)
	}
	ix, _ := manifest.Load(ctx, st, changed.ID)
	for _, e := range ix.Entries {
		if e.Path == "b.bin" {
			if _, err := store.ReadAll(ctx, st, store.H(store.Chunk, e.Chunks[0].ID)); err != nil {
				t.Fatal("b.bin's new chunk is not in the store")
			}
		}
	}
	// The tag moved elsewhere: the record no longer applies.
	store.SetTag(ctx, st, "t", first.ID)
	if prev, _ := LoadPrevious(ctx, st, stamps, "t", 128<<10); prev != nil {
		t.Fatal("a record for another image was used")
	}
	// Another chunk size: not used either.
	store.SetTag(ctx, st, "t", changed.ID)
	if prev, _ := LoadPrevious(ctx, st, stamps, "t", 256<<10); prev != nil {
		t.Fatal("a record for another chunk size was used")
	}
}

// A directory's small files are reused all together or read all again:
// unchanged, they keep their shared chunks; one changed, added or removed,
// and the directory is packed as a full pack packs it (the same image); a
// pack that shares no chunks does not reuse shared pieces.
func TestRepackSmallFilesByDirectory(t *testing.T) {
	ctx := context.Background()
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	for _, d := range []string{"a", "b"} {
		os.MkdirAll(filepath.Join(src, d), 0o755)
		for i := range 6 {
			os.WriteFile(filepath.Join(src, d, fmt.Sprint(i)), bytes.Repeat([]byte(d), 100+i), 0o644)
		}
	}
	stamps := StampPath(t.TempDir(), st, src, "t")
	pack := func(opt Options, incremental bool) *Result {
		t.Helper()
		if incremental {
			prev, err := LoadPrevious(ctx, st, stamps, "t", 0)
			if err != nil || prev == nil {
				t.Fatalf("LoadPrevious: %v %v", prev, err)
			}
			opt.Previous = prev
		}
		res, err := Dir(ctx, st, src, opt)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.SetTag(ctx, st, "t", res.ID); err != nil {
			t.Fatal(err)
		}
		if err := SaveStamps(stamps, res.ID, 0, res.Stamps); err != nil {
			t.Fatal(err)
		}
		return res
	}
	first := pack(Options{}, false)
	if same := pack(Options{}, true); same.Reused != 12 || same.ReadBytes != 0 || same.ID != first.ID {
		t.Fatalf("unchanged re-pack: reused %d, read %d bytes, same image %v", same.Reused, same.ReadBytes, same.ID == first.ID)
	}
	for name, change := range map[string]func(){
		"a file changed": func() { os.WriteFile(filepath.Join(src, "a/2"), []byte("new"), 0o644) },
		"a file added":   func() { os.WriteFile(filepath.Join(src, "a/9"), []byte("added"), 0o644) },
		"a file removed": func() { os.Remove(filepath.Join(src, "a/4")) },
	} {
		change()
		res := pack(Options{}, true)
		if res.Reused != 6 {
			t.Errorf("%s: reused %d files, want b's 6", name, res.Reused)
		}
		if full, err := Dir(ctx, st, src, Options{}); err != nil || full.ID != res.ID {
			t.Errorf("%s: the re-pack's image differs from a full pack's (%v)", name, err)
		}
	}
	plain := pack(Options{SmallFile: -1}, true)
	ix, err := manifest.Load(ctx, st, plain.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ix.Entries {
		if shares(e.Chunks) {
			t.Fatalf("%s: a pack sharing no chunks reused a shared piece", e.Path)
		}
	}
}
