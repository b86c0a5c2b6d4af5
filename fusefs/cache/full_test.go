package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// smallFS mounts a tmpfs of size bytes for the test.
func smallFS(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(size)); err != nil {
		t.Skipf("cannot mount a small tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fill writes n bytes of a file that is not the cache's: another user of
// the worker's disk.
func fill(t *testing.T, path string, n int) {
	t.Helper()
	if err := os.WriteFile(path, make([]byte, n), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freeBytes(t *testing.T, dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// A disk tier whose limit is more than its filesystem holds keeps to the
// room there is: at start, and when other files fill the disk under it
// (the writes the filesystem refuses shrink the tier and are retried, never
// failing a read), and it grows back once room comes back.
func TestDiskTierFitsAFullFilesystem(t *testing.T) {
	const fsSize = 8 << 20
	root := smallFS(t, fsSize)
	st, datas, ids := fixture(t, 30, 256<<10) // 7.5 MiB
	fill(t, filepath.Join(root, "other-1"), 3<<20)
	dir := filepath.Join(root, "cache")
	c, err := Open(st, Config{Dir: dir, MemBytes: 1 << 20, DiskBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close() }()
	if lim := c.Stats().Disk.Limit; lim > fsSize-3<<20 || lim < 1<<20 {
		t.Fatalf("limit at start %d with %d free; want what the filesystem holds, less a reserve", lim, freeBytes(t, root))
	}
	// Another user of the disk takes most of what is left: the tier has
	// not looked yet, so its writes run into a full filesystem.
	fill(t, filepath.Join(root, "other-2"), int(freeBytes(t, root))-1536<<10)
	for round := 0; round < 2; round++ {
		getAll(t, c, ids, datas, fmt.Sprintf("round %d", round))
		c.Flush()
	}
	s := c.Stats().Disk
	if s.Full == 0 {
		t.Fatalf("no write ran into the full filesystem: %+v", s)
	}
	if s.Bytes > s.Limit || s.Entries == 0 {
		t.Fatalf("disk tier after the filesystem filled: %+v", s)
	}
	if tmps, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmps) > 1 { // the journal's may be there
		t.Fatalf("%d temporary files left in the disk tier", len(tmps))
	}
	// What it kept is served from the disk, the rest from the store (and
	// written in their place).
	c.DropMemory()
	getAll(t, c, ids, datas, "after dropping memory")
	if hits := c.Stats().Disk.Hits; hits == 0 {
		t.Fatalf("no disk hits after dropping memory: %+v", c.Stats().Disk)
	}
	c.Flush()
	// Room comes back: the tier grows again.
	low := c.Stats().Disk.Limit
	os.Remove(filepath.Join(root, "other-2"))
	c.disk.fit()
	if lim := c.Stats().Disk.Limit; lim <= low+1<<20 {
		t.Fatalf("limit %d once room came back (was %d)", lim, low)
	}
	// And a new daemon finds the files it kept intact.
	kept := c.Stats().Disk.Entries
	c.Close()
	c, err = Open(st, Config{Dir: dir, MemBytes: 1 << 20, DiskBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Stats().Disk.Entries; got != kept {
		t.Fatalf("reopened: %d entries, want %d", got, kept)
	}
	getAll(t, c, ids, datas, "after reopening")
}
