package e2e

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// TestPackMountTree packs a tree with every kind of entry (and a 200 MB
// file), mounts it, and checks contents and metadata; then many concurrent
// readers; then a remount shows the same inode numbers.
func TestPackMountTree(t *testing.T) {
	requireFUSE(t)
	transports(t, packMountTree)
}

func packMountTree(t *testing.T, flags []string) {
	tmp := t.TempDir()
	src, storeDir, mnt := filepath.Join(tmp, "src"), filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	makeTree(t, src, 200)
	out := gw(t, "pack", src, "--tag", "tree", "--store", storeDir)
	if !strings.Contains(out, "packed") || !strings.Contains(out, "MB/s") {
		t.Fatalf("pack summary: %s", out)
	}
	// Packing again uploads nothing new.
	if out := gw(t, "pack", src, "--tag", "tree2", "--store", storeDir); !strings.Contains(out, "new   0 B in 0 chunks") {
		t.Fatalf("second pack uploaded chunks: %s", out)
	}
	d := startMount(t, storeDir, mnt, filepath.Join(tmp, "cache"), flags...)
	compareTrees(t, src, filepath.Join(mnt, "tree"))

	// The same image is reachable by its ID with the same inode numbers.
	id := strings.TrimSpace(gw(t, "inspect", "tree", "--store", storeDir, "--json"))
	if !strings.Contains(id, `"image":"`) {
		t.Fatalf("inspect --json: %s", id)
	}
	imageID := id[strings.Index(id, `"image":"`)+9:][:64]
	var a, b syscall.Stat_t
	syscall.Stat(filepath.Join(mnt, "tree/bin/tool"), &a)
	if err := syscall.Stat(filepath.Join(mnt, "by-id", imageID, "bin/tool"), &b); err != nil || a.Ino != b.Ino {
		t.Fatalf("by-id: %v, inode %d vs %d", err, a.Ino, b.Ino)
	}

	t.Run("concurrent-readers", func(t *testing.T) {
		concurrentReaders(t, src, filepath.Join(mnt, "tree"))
	})

	t.Run("read-only", func(t *testing.T) {
		for _, flag := range []int{os.O_WRONLY, os.O_RDWR, os.O_CREATE | os.O_WRONLY} {
			if _, err := os.OpenFile(filepath.Join(mnt, "tree/small.txt"), flag, 0); !errors.Is(err, syscall.EROFS) {
				t.Errorf("open flag %#x: want EROFS, got %v", flag, err)
			}
		}
		if err := os.Mkdir(filepath.Join(mnt, "tree/new"), 0o755); err == nil {
			t.Error("mkdir succeeded on a read-only mount")
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(filepath.Join(mnt, "tree"), &st); err != nil || st.Blocks == 0 || st.Files == 0 {
			t.Errorf("statfs: %v %+v", err, st)
		}
	})

	t.Run("tags-appear", func(t *testing.T) {
		gw(t, "pack", filepath.Join(src, "dir"), "--tag", "late", "--store", storeDir)
		if _, err := os.Stat(filepath.Join(mnt, "late/sub/deep/file")); err != nil {
			t.Fatalf("a tag made after mounting is not visible: %v", err)
		}
	})

	ino1 := a.Ino
	checkTransport(t, d, flags)
	d.stop(t)
	d2 := startMount(t, storeDir, mnt, filepath.Join(tmp, "cache"), flags...)
	syscall.Stat(filepath.Join(mnt, "tree/bin/tool"), &a)
	if a.Ino != ino1 {
		t.Fatalf("inode changed across remount: %d -> %d", ino1, a.Ino)
	}
	d2.stop(t)
}

func concurrentReaders(t *testing.T, src, mnt string) {
	files := []string{"big/weights.bin", "exact-chunk.bin", "chunk-plus-one.bin", "zeros.img", "bin/tool", "a-hardlink"}
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; i < 40; i++ {
				name := files[rnd.IntN(len(files))]
				sf, _ := os.Open(filepath.Join(src, name))
				mf, err := os.Open(filepath.Join(mnt, name))
				if err != nil {
					t.Error(err)
					return
				}
				st, _ := sf.Stat()
				off := rnd.Int64N(st.Size())
				n := 1 + rnd.IntN(3<<20)
				want, got := make([]byte, n), make([]byte, n)
				wn, _ := sf.ReadAt(want, off)
				gn, err := mf.ReadAt(got, off)
				if (err != nil && err != io.EOF) || wn != gn || !bytes.Equal(want[:wn], got[:gn]) {
					t.Errorf("reader %d: %s [%d,+%d): got %d bytes (%v), want %d", w, name, off, n, gn, err, wn)
				}
				sf.Close()
				mf.Close()
			}
		}(w)
	}
	wg.Wait()
}

// TestRunPythonFromMount packs Python's interpreter and standard library and
// runs a program from the mount.
func TestRunPythonFromMount(t *testing.T) {
	requireFUSE(t)
	transports(t, runPythonFromMount)
}

func runPythonFromMount(t *testing.T, flags []string) {
	// The system's interpreter (not a pyenv shim): one binary, stdlib beside it.
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3 (make setup installs it)")
	}
	tmp := t.TempDir()
	prefix := filepath.Join(tmp, "src")
	stdlib := strings.TrimSpace(run(t, py, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"))
	buildPythonTree(t, py, stdlib, prefix)
	storeDir, mnt := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	gw(t, "pack", prefix, "--tag", "python", "--store", storeDir)
	d := startMount(t, storeDir, mnt, filepath.Join(tmp, "cache"), flags...)
	prog := `import json, hashlib, decimal, email.parser, sqlite3, sys
print(sys.prefix, hashlib.sha256(json.dumps({"x": [1, 2, 3]}).encode()).hexdigest()[:16], decimal.Decimal(1)/7)`
	out := run(t, filepath.Join(mnt, "python/bin/python3"), "-I", "-c", prog)
	want := strings.Replace(run(t, filepath.Join(prefix, "bin/python3"), "-I", "-c", prog), prefix, filepath.Join(mnt, "python"), 1)
	if !strings.HasPrefix(out, filepath.Join(mnt, "python")+" ") || out != want {
		t.Fatalf("python from the mount printed %q, want %q", out, want)
	}
	checkTransport(t, d, flags)
	if s := d.stats(t); s.Fetches == 0 {
		t.Fatalf("no chunks fetched: %+v", s)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// buildPythonTree lays out PREFIX/bin/python3 and PREFIX/lib/python3.X so
// that the interpreter finds its standard library next to itself.
func buildPythonTree(t *testing.T, py, stdlib, prefix string) {
	t.Helper()
	real, _ := filepath.EvalSymlinks(py)
	lib := filepath.Join(prefix, "lib", filepath.Base(stdlib))
	os.MkdirAll(filepath.Join(prefix, "bin"), 0o755)
	os.MkdirAll(filepath.Join(prefix, "lib"), 0o755)
	run(t, "cp", "-a", real, filepath.Join(prefix, "bin/python3"))
	run(t, "cp", "-a", stdlib, lib)
	// Debian keeps extension modules (lib-dynload) inside the stdlib dir;
	// drop test suites and caches to keep the image small.
	for _, junk := range []string{"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3"} {
		os.RemoveAll(filepath.Join(lib, junk))
	}
	os.RemoveAll(filepath.Join(lib, "site-packages"))
	os.RemoveAll(filepath.Join(lib, "dist-packages"))
}

// TestCorruptStoreChunk: a chunk corrupted in the store makes reads of it
// fail with EIO; every other read still returns correct bytes.
func TestCorruptStoreChunk(t *testing.T) {
	requireFUSE(t)
	transports(t, corruptStoreChunk)
}

func corruptStoreChunk(t *testing.T, flags []string) {
	tmp := t.TempDir()
	src, storeDir, mnt := filepath.Join(tmp, "src"), filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	makeTree(t, src, 8)
	gw(t, "pack", src, "--tag", "t", "--store", storeDir)
	// Corrupt the chunk holding bytes [1 MiB, 2 MiB) of the big file.
	big, _ := os.ReadFile(filepath.Join(src, "big/weights.bin"))
	bad := digest.Of(big[1<<20 : 2<<20])
	fs, _ := filestore.Open(storeDir)
	h := store.H(store.Chunk, bad)
	blob, err := fs.Get(ctxT(t), h, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	blob[len(blob)/2] ^= 0xff
	os.WriteFile(filepath.Join(storeDir, "chunks", bad.String()[:2], bad.String()), blob, 0o644)

	d := startMount(t, storeDir, mnt, filepath.Join(tmp, "cache"), flags...)
	f, err := os.Open(filepath.Join(mnt, "t/big/weights.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	// The damaged byte is the chunk's 524,287th: in its block 31 (a
	// random read fetches blocks, each checked against the chunk's
	// index; a mismatch sends it to the whole chunk, which fails too).
	if _, err := f.ReadAt(buf, 1<<20+520000); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of the corrupt chunk: want EIO, got %v", err)
	}
	// An intact block of it is served, checked by the index.
	if _, err := f.ReadAt(buf, 1<<20+100); err != nil || !bytes.Equal(buf, big[1<<20+100:1<<20+100+4096]) {
		t.Fatalf("read of an intact block of the corrupt chunk: %v", err)
	}
	if _, err := f.ReadAt(buf, 3<<20); err != nil || !bytes.Equal(buf, big[3<<20:3<<20+4096]) {
		t.Fatalf("read of a good chunk of the same file: %v", err)
	}
	compareOne(t, filepath.Join(src, "bin/tool"), filepath.Join(mnt, "t/bin/tool"))
	if !d.logHas("corrupt chunk") {
		t.Fatalf("the daemon did not log why the read failed:\n%s", d.logs.String())
	}
	checkTransport(t, d, flags)
	if s := d.stats(t); s.Corrupt == 0 {
		t.Fatalf("corrupt counter not raised: %+v", s)
	}
}

// A damaged shared chunk (several small files packed together) fails the
// reads of every file in it with EIO, never serving another file's bytes
// or damaged ones; the small files of other chunks read as packed.
func TestCorruptSharedChunk(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	src, storeDir, mnt := filepath.Join(tmp, "src"), filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	for _, d := range []string{"a", "b"} {
		os.MkdirAll(filepath.Join(src, d), 0o755)
		for i := range 10 {
			os.WriteFile(filepath.Join(src, d, fmt.Sprintf("f%d.py", i)), bytes.Repeat([]byte(d+fmt.Sprint(i)), 500+i), 0o644)
		}
	}
	gw(t, "pack", src, "--tag", "t", "--store", storeDir)
	fst, _ := filestore.Open(storeDir)
	id, err := store.ResolveTag(ctxT(t), fst, "t")
	if err != nil {
		t.Fatal(err)
	}
	ix, err := manifest.Load(ctxT(t), fst, id)
	if err != nil {
		t.Fatal(err)
	}
	i, _ := ix.Lookup("a/f3.py")
	c := ix.Entries[i].Chunks[0]
	if !c.Shared() {
		t.Fatalf("a/f3.py is not in a shared chunk: %+v", c)
	}
	path := filepath.Join(storeDir, "chunks", c.ID.String()[:2], c.ID.String())
	blob, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blob[len(blob)-2] ^= 0xff
	os.WriteFile(path, blob, 0o644)
	startMount(t, storeDir, mnt, filepath.Join(tmp, "cache"))
	for k := range 10 {
		name := fmt.Sprintf("f%d.py", k)
		if _, err := os.ReadFile(filepath.Join(mnt, "t/a", name)); !errors.Is(err, syscall.EIO) {
			t.Fatalf("a/%s in the damaged chunk: want EIO, got %v", name, err)
		}
		compareOne(t, filepath.Join(src, "b", name), filepath.Join(mnt, "t/b", name))
	}
}

// pack --small-files 0 gives every file chunks of its own: an image that
// mounts older than manifest version 3 read.
func TestPackWithoutSharedChunks(t *testing.T) {
	tmp := t.TempDir()
	src, storeDir := filepath.Join(tmp, "src"), filepath.Join(tmp, "store")
	os.MkdirAll(src, 0o755)
	for i := range 5 {
		os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d", i)), []byte(fmt.Sprint("small ", i)), 0o644)
	}
	for _, c := range []struct {
		flag    string
		version byte
	}{{"--small-files=32K", 3}, {"--small-files=0", 1}} {
		gw(t, "pack", src, "--tag", "t", "--store", storeDir, c.flag)
		fst, _ := filestore.Open(storeDir)
		id, err := store.ResolveTag(ctxT(t), fst, "t")
		if err != nil {
			t.Fatal(err)
		}
		enc, err := store.ReadAll(ctxT(t), fst, store.H(store.Manifest, id))
		if err != nil {
			t.Fatal(err)
		}
		if enc[4] != c.version {
			t.Errorf("pack %s: manifest version %d, want %d", c.flag, enc[4], c.version)
		}
	}
}

func compareOne(t *testing.T, a, b string) {
	t.Helper()
	if fileSum(t, a) != fileSum(t, b) {
		t.Fatalf("%s differs from %s", b, a)
	}
}

// TestDiskCacheCorruptionAndKill9: the disk tier survives kill -9 of the
// daemon and is reused by the next one; corrupted or truncated entries are
// detected and refetched.
func TestDiskCacheCorruptionAndKill9(t *testing.T) {
	requireFUSE(t)
	src, storeDir, mnt, cacheDir := packedTree(t, 16)
	d := startMount(t, storeDir, mnt, cacheDir)
	compareTrees(t, src, filepath.Join(mnt, "t"))
	// Disk writes are asynchronous (and wait for a quiet moment, at most a
	// few seconds on a busy machine): wait until every fetched chunk is on
	// disk.
	// Assemblies of whole files too: a write is journaled right after it
	// is committed, and kill -9 between the two would leave a file the
	// next daemon must hash.
	first := d.stats(t)
	for i := 0; i < 2000 && (first.Disk.Entries < first.Fetches || first.Disk.Queued > 0 || first.Assembly.Running > 0); i++ {
		time.Sleep(10 * time.Millisecond)
		first = d.stats(t)
	}
	d.kill9(t)

	// The dead mount is left behind; a new daemon detaches it and mounts.
	d2 := startMount(t, storeDir, mnt, cacheDir)
	// The files the first daemon wrote to its disk tier (its journal says
	// which, kill -9 loses none of that) are re-hashed ahead of demand,
	// then handed to the kernel by passthrough without hashing in the open.
	d2.waitRechecked(t)
	compareTrees(t, src, filepath.Join(mnt, "t"))
	s := d2.stats(t)
	if s.Fetches != 0 || s.Disk.Hits == 0 {
		t.Fatalf("after kill -9 and remount the disk cache was not used: fetches %d, disk hits %d (first run fetched %d)", s.Fetches, s.Disk.Hits, first.Fetches)
	}
	if s.Opens.Passthrough == 0 || s.Disk.Hashed != 0 || s.Disk.Rechecked == 0 {
		t.Fatalf("after remount: %d passthrough opens, %d files hashed in opens (want 0), %d re-hashed ahead", s.Opens.Passthrough, s.Disk.Hashed, s.Disk.Rechecked)
	}
	d2.stop(t)

	// Corrupt every disk entry: flip a byte in half, truncate the rest.
	var n int
	filepath.Walk(cacheDir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || !strings.Contains(info.Name(), ".") || strings.HasPrefix(info.Name(), ".") {
			return nil
		}
		b, _ := os.ReadFile(p)
		if len(b) == 0 {
			return nil
		}
		if n%2 == 0 {
			b[len(b)/2] ^= 1
		} else {
			b = b[:len(b)/2]
		}
		os.WriteFile(p, b, 0o600)
		n++
		return nil
	})
	if n == 0 {
		t.Fatal("no disk cache entries found")
	}
	// Every entry is read again (chunks through the daemon, whole files
	// assembled for passthrough when opened), so every corruption is seen,
	// and the contents still match.
	d3 := startMount(t, storeDir, mnt, cacheDir)
	compareTrees(t, src, filepath.Join(mnt, "t"))
	s = d3.stats(t)
	if s.Corrupt < int64(n) || s.Fetches == 0 {
		t.Fatalf("%d corrupted entries: corrupt counter %d, refetches %d", n, s.Corrupt, s.Fetches)
	}
}

// TestTinyCacheLimits: with limits far below the data read, reads stay
// correct and the tiers stay within their limits.
func TestTinyCacheLimits(t *testing.T) {
	requireFUSE(t)
	src, storeDir, mnt, cacheDir := packedTree(t, 40)
	const memLimit, diskLimit = 3 << 20, 5 << 20
	d := startMount(t, storeDir, mnt, cacheDir, "--mem-cache", "3MiB", "--disk-cache", "5MiB")
	concurrentReaders(t, src, filepath.Join(mnt, "t"))
	compareTrees(t, src, filepath.Join(mnt, "t"))
	// The disk tier's writes run in the background, after the readers
	// have gone quiet (slowly under the race detector): the limits are
	// checked once every queued write has landed.
	s := d.stats(t)
	for deadline := time.Now().Add(60 * time.Second); s.Disk.Queued > 0 && time.Now().Before(deadline); s = d.stats(t) {
		time.Sleep(50 * time.Millisecond)
	}
	if s.Memory.Bytes > memLimit || s.Disk.Bytes > diskLimit || s.Memory.Evictions == 0 || s.Disk.Evictions == 0 {
		t.Fatalf("limits not kept: %+v", s)
	}
	var onDisk int64
	filepath.Walk(cacheDir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && info.Name() != "verified" { // chunks, not the journal
			onDisk += info.Size()
		}
		return nil
	})
	if onDisk > diskLimit+4096 {
		t.Fatalf("%d bytes in the cache directory, limit %d", onDisk, diskLimit)
	}
}

// TestCacheDirOnFullDisk: a --cache-dir whose filesystem holds less than
// the disk tier's limit, beside another user of the disk: every read is
// right, the tier keeps to the room there is, leaving a reserve free for the
// disk's other users, says so in its log, and leaves their files alone;
// when the other user then takes the reserve too, reads stay right.
func TestCacheDirOnFullDisk(t *testing.T) {
	requireFUSE(t)
	src, storeDir, mnt, _ := packedTree(t, 24)
	const fsSize = 16 << 20
	disk := t.TempDir()
	if err := syscall.Mount("tmpfs", disk, "tmpfs", 0, "size="+strconv.Itoa(fsSize)); err != nil {
		t.Skipf("cannot mount a small tmpfs: %v", err)
	}
	defer syscall.Unmount(disk, syscall.MNT_DETACH)
	other := filepath.Join(disk, "other")
	if err := os.WriteFile(other, bytes.Repeat([]byte{7}, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	free := func() int64 {
		var st syscall.Statfs_t
		syscall.Statfs(disk, &st)
		return int64(st.Bavail) * st.Bsize
	}
	d := startMount(t, storeDir, mnt, filepath.Join(disk, "cache"), "--disk-cache", "1GiB", "--mem-cache", "4MiB")
	concurrentReaders(t, src, filepath.Join(mnt, "t"))
	compareTrees(t, src, filepath.Join(mnt, "t"))
	for deadline := time.Now().Add(20 * time.Second); d.stats(t).Disk.Queued > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	s := d.stats(t)
	if s.Disk.Limit > fsSize-4<<20 || s.Disk.Bytes > s.Disk.Limit || s.Disk.Entries == 0 {
		t.Fatalf("disk tier on a %d-byte filesystem holding 4 MiB of another's: %+v", fsSize, s.Disk)
	}
	if f := free(); f < fsSize/40 {
		t.Fatalf("the disk tier left %d bytes free of %d", f, fsSize)
	}
	if !d.logHas("short of room") {
		t.Fatalf("the daemon did not say its cache directory is short of room:\n%s", d.logs.String())
	}
	// The other user takes what is left.
	f, err := os.OpenFile(other, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, free()))
	f.Close()
	st, err := os.Stat(other)
	if err != nil || st.Size() < 4<<20 {
		t.Fatalf("the other file: %v, %v", st, err)
	}
	concurrentReaders(t, src, filepath.Join(mnt, "t"))
	compareTrees(t, src, filepath.Join(mnt, "t"))
	if st2, err := os.Stat(other); err != nil || st2.Size() != st.Size() {
		t.Fatalf("the other file changed under the disk tier: %v, %v", st2, err)
	}
	s = d.stats(t)
	if s.Disk.Bytes > s.Disk.Limit {
		t.Fatalf("disk tier over its limit: %+v", s.Disk)
	}
	t.Logf("disk tier: %+v", s.Disk)
}

// TestFewFUSEReadersWaiting: the daemon keeps a quarter of its Ps (at least
// 2) waiting on /dev/fuse, not one per P, even after a burst of concurrent
// requests, so that Ps stay idle while the readers wait (see fusefs.Mount);
// --fuse-readers sets the number (5 here: more wait than the default lets).
func TestFewFUSEReadersWaiting(t *testing.T) {
	requireFUSE(t)
	def := max(2, runtime.NumCPU()/4)
	for _, readers := range []int{def, def + 3} {
		t.Run(fmt.Sprint(readers), func(t *testing.T) {
			src, storeDir, mnt, cacheDir := packedTree(t, 8)
			var args []string
			lo := 1 // after a burst, at least one waits; more may have exited
			if readers != def {
				args, lo = []string{"--fuse-readers", fmt.Sprint(readers)}, def+2
			}
			d := startMount(t, storeDir, mnt, cacheDir, args...)
			// go-fuse lets one more than its limit wait.
			deadline := time.Now().Add(20 * time.Second)
			for {
				concurrentReaders(t, src, filepath.Join(mnt, "t"))
				time.Sleep(100 * time.Millisecond)
				n, threads := waitingReaders(t, d)
				if n >= lo && n <= readers+1 {
					t.Logf("%d threads of %d wait on /dev/fuse (%d CPUs)", n, threads, runtime.NumCPU())
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d threads wait on /dev/fuse; want %d to %d (%d CPUs)", n, lo, readers+1, runtime.NumCPU())
				}
			}
		})
	}
}

// waitingReaders counts the daemon's threads blocked reading /dev/fuse.
func waitingReaders(t *testing.T, d *daemon) (waiting, threads int) {
	t.Helper()
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", d.cmd.Process.Pid))
	for _, task := range tasks {
		w, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/wchan", d.cmd.Process.Pid, task.Name()))
		if string(w) == "fuse_dev_do_read" {
			waiting++
		}
	}
	return waiting, len(tasks)
}

// TestUmountCommand: gpuwarm umount makes the daemon exit cleanly.
func TestUmountCommand(t *testing.T) {
	requireFUSE(t)
	transports(t, umountCommand)
}

func umountCommand(t *testing.T, flags []string) {
	tmp := t.TempDir()
	storeDir, mnt := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	os.MkdirAll(filepath.Join(tmp, "src"), 0o755)
	os.WriteFile(filepath.Join(tmp, "src/f"), []byte("x"), 0o644)
	gw(t, "pack", filepath.Join(tmp, "src"), "--tag", "t", "--store", storeDir)
	d := startMount(t, storeDir, mnt, filepath.Join(tmp, "cache"), flags...)
	if b, err := os.ReadFile(filepath.Join(mnt, "t/f")); string(b) != "x" {
		t.Fatalf("read through the mount: %q, %v", b, err)
	}
	checkTransport(t, d, flags)
	gw(t, "umount", mnt)
	if err := <-d.done; err != nil {
		t.Fatalf("daemon exit after umount: %v\n%s", err, d.logs.String())
	}
	d.cmd.ProcessState = &os.ProcessState{}
	if err := fusefs.Unmount(mnt); err == nil {
		t.Fatal("still mounted")
	}
	_ = sha256.New
}

// TestAssembledFilesPassthrough: by default a fully cached multi-chunk
// file is assembled on disk, replacing its chunks' entries (the disk tier
// holds its bytes once), and a new daemon serves it whole by
// passthrough, without the store, with the right bytes; a corrupted
// assembled file is caught at open and never served; --assemble-files=false
// turns assembly off.
func TestAssembledFilesPassthrough(t *testing.T) {
	requireFUSE(t)
	transports(t, assembledFilesPassthrough)
}

func assembledFilesPassthrough(t *testing.T, flags []string) {
	src, storeDir, mnt, cacheDir := packedTree(t, 24)
	d := startMount(t, storeDir, mnt, cacheDir, flags...)
	big := filepath.Join(mnt, "t/big/weights.bin")
	compareOne(t, filepath.Join(src, "big/weights.bin"), big)
	compareOne(t, filepath.Join(src, "big/weights.bin"), big) // all chunks cached: assembles
	deadline := time.Now().Add(20 * time.Second)
	// The chunks' own disk-tier writes wait for the daemon to be idle.
	for s := d.stats(t); time.Now().Before(deadline) && (s.Assembly.Done < 1 || s.Disk.Queued > 0); s = d.stats(t) {
		time.Sleep(50 * time.Millisecond)
	}
	// One copy per byte: the assembled file replaced its chunks' entries.
	if s := d.stats(t); s.Assembly.Done < 1 || s.Assembly.Failed != 0 || s.Disk.Bytes != 24<<20 || s.Disk.Entries != 1 {
		t.Fatalf("file not assembled, or its chunks kept beside it: %+v", s)
	}
	d.stop(t)
	d2 := startMount(t, storeDir, mnt, cacheDir, flags...)
	d2.waitRechecked(t)
	compareOne(t, filepath.Join(src, "big/weights.bin"), big)
	if s := d2.stats(t); s.Fetches != 0 || s.Opens.Passthrough == 0 {
		t.Fatalf("the assembled file was not served from disk by passthrough: %+v", s)
	}
	d2.stop(t)

	// Flip a byte in the assembled file (the largest in the disk tier):
	// the next daemon's open finds it, drops it, and serves right bytes.
	biggest, size := largestFile(cacheDir)
	f, err := os.OpenFile(biggest, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := []byte{0}
	f.ReadAt(b, size/2)
	b[0] ^= 0xff
	f.WriteAt(b, size/2)
	f.Close()
	d3 := startMount(t, storeDir, mnt, cacheDir, flags...)
	compareOne(t, filepath.Join(src, "big/weights.bin"), big)
	if s := d3.stats(t); s.Corrupt == 0 || s.Opens.Passthrough != 0 {
		t.Fatalf("the corrupted assembled file went unnoticed: %+v", s)
	}
	d3.stop(t)

	cacheDir2 := filepath.Join(t.TempDir(), "cache")
	d4 := startMount(t, storeDir, mnt, cacheDir2, append([]string{"--assemble-files=false"}, flags...)...)
	compareOne(t, filepath.Join(src, "big/weights.bin"), big)
	compareOne(t, filepath.Join(src, "big/weights.bin"), big)
	time.Sleep(300 * time.Millisecond)
	if s := d4.stats(t); s.Assembly.Running+s.Assembly.Done != 0 || s.Disk.Bytes > 24<<20+1<<20 {
		t.Fatalf("--assemble-files=false assembled: %+v", s)
	}
}

// TestAssembledFileOpenModes: a multi-chunk file read whole is assembled in
// the background, read back (so the copy sits in the page cache) and the
// FUSE file's own pages are dropped (the kernel would otherwise drop them
// inside the next open, and the file would be cached twice); opens are then
// passthrough ones from the resident copy, with no read reaching the daemon.
// When the copy's pages are gone too, the next open is a passthrough one
// from the disk; after that read the copy is in the page cache again. A
// file that is not assembled is served from the kernel's page cache while
// it holds the file whole, and a drop of those pages is noticed when the
// daemon is asked for bytes it gave.
func TestAssembledFileOpenModes(t *testing.T) {
	requireFUSE(t)
	transports(t, assembledFileOpenModes)
}

func assembledFileOpenModes(t *testing.T, flags []string) {
	src, storeDir, mnt, cacheDir := packedTree(t, 24)
	// A memory tier smaller than the file: were it all there, the daemon
	// would serve it from memory rather than by passthrough from the disk.
	d := startMount(t, storeDir, mnt, cacheDir, append([]string{"--mem-cache", "8MiB"}, flags...)...)
	want := filepath.Join(src, "big/weights.bin")
	big := filepath.Join(mnt, "t/big/weights.bin")
	compareOne(t, want, big)
	// Every chunk has been read: the file is assembled in the background.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && d.stats(t).Assembly.Done < 1 {
		time.Sleep(50 * time.Millisecond)
	}
	s0 := d.stats(t)
	if s0.Assembly.Done < 1 {
		t.Fatalf("file not assembled after one whole read: %+v", s0)
	}
	// The FUSE file's own pages go once the copy is in place (and are not
	// left for the next open to drop).
	for d.stats(t).Assembly.PagesDropped < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the FUSE file's pages were not dropped after assembly: %+v", d.stats(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
	for fusePages(t, big) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d pages of the FUSE file still cached after assembly", fusePages(t, big))
		}
		time.Sleep(20 * time.Millisecond)
	}
	s0 = d.stats(t)
	compareOne(t, want, big)
	s1 := d.stats(t)
	if s1.Opens.Resident != s0.Opens.Resident+1 || s1.Opens.Passthrough != s0.Opens.Passthrough+1 {
		t.Fatalf("after assembly: opens %+v -> %+v, want a resident passthrough one", s0.Opens, s1.Opens)
	}
	if s1.Memory.Hits != s0.Memory.Hits || s1.Fetches != s0.Fetches {
		t.Fatalf("the daemon served reads of a passthrough file: %+v -> %+v", s0.Stats, s1.Stats)
	}

	// Drop the assembled copy's pages (the largest file in the disk tier).
	copyPath, _ := largestFile(cacheDir)
	dropPages(t, copyPath)
	compareOne(t, want, big)
	s2 := d.stats(t)
	if s2.Opens.Passthrough != s1.Opens.Passthrough+1 || s2.Opens.Resident != s1.Opens.Resident {
		t.Fatalf("with no copy in the page cache, the open was not a passthrough one from the disk: %+v -> %+v", s1.Opens, s2.Opens)
	}
	// The read brought the copy into the page cache: the next open finds
	// it there. (The kernel may let a page of it go before that open: it
	// did once in a full test run, with the machine's memory mostly free.
	// Three tries.)
	for try := 1; ; try++ {
		compareOne(t, want, big)
		s3 := d.stats(t)
		if s3.Opens.Resident == s2.Opens.Resident+1 && s3.Opens.Passthrough == s2.Opens.Passthrough+1 {
			break
		}
		if try == 3 || s3.Opens.Passthrough != s2.Opens.Passthrough+1 {
			t.Fatalf("with the copy in the page cache: opens %+v -> %+v, want a resident passthrough one", s2.Opens, s3.Opens)
		}
		s2 = s3
	}
	d.stop(t)

	// Not assembled: the kernel's page cache serves the file while it
	// holds it whole; the daemon notices when it is asked again.
	d = startMount(t, storeDir, mnt, cacheDir+"-noasm", append([]string{"--assemble-files=false"}, flags...)...)
	compareOne(t, want, big)
	// The kernel may let some pages go between two reads (it did in CI,
	// twice): the daemon then serves them, and counts the file as not held
	// whole until it has served all of it again; so the next try starts
	// from none of its pages cached, and reads it whole.
	var p0, p1 mountStats
	for try := 0; ; try++ {
		p0 = d.stats(t)
		compareOne(t, want, big)
		p1 = d.stats(t)
		if p1.Opens.PageCache == p0.Opens.PageCache+1 && p1.Memory.Hits == p0.Memory.Hits && p1.Fetches == p0.Fetches {
			break
		}
		if try == 4 {
			t.Fatalf("a file the kernel holds whole: %+v -> %+v, want a page-cache open the daemon serves nothing of", p0, p1)
		}
		t.Logf("try %d: the kernel let pages go (%+v -> %+v); reading the file whole again", try, p0.Opens, p1.Opens)
		dropPages(t, big)
		compareOne(t, want, big)
	}
	dropPages(t, big)
	f, err := os.Open(big)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if p2 := d.stats(t); p2.Opens.PageCacheLost <= p1.Opens.PageCacheLost {
		t.Fatalf("pages dropped by the kernel not noticed: %+v", p2.Opens)
	}
}

// fusePages is how many pages of the FUSE file p the kernel caches (its
// own, not a passthrough backing file's).
func fusePages(t *testing.T, p string) int64 {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Cachestat_t
	if err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &st, 0); err != nil {
		t.Fatalf("cachestat %s: %v", p, err)
	}
	return int64(st.Cache)
}

// largestFile is the largest regular file under dir, and its size.
func largestFile(dir string) (path string, size int64) {
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Size() > size {
			path, size = p, fi.Size()
		}
		return nil
	})
	return path, size
}

// dropPages drops the page cache of the file at p.
func dropPages(t *testing.T, p string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Sync() // dirty pages would stay
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
}

// TestOpenServedFromMemoryElsePassthrough: a one-chunk file whose chunk is
// in the memory tier is served through the daemon (after drop_caches a
// passthrough open would read the disk); after a restart, with only the
// disk tier warm, it is served by FUSE passthrough where the kernel has it.
func TestOpenServedFromMemoryElsePassthrough(t *testing.T) {
	requireFUSE(t)
	transports(t, openServedFromMemoryElsePassthrough)
}

func openServedFromMemoryElsePassthrough(t *testing.T, flags []string) {
	src, storeDir, mnt, cacheDir := packedTree(t, 0)
	d := startMount(t, storeDir, mnt, cacheDir, flags...)
	file := filepath.Join(mnt, "t/bin/tool")
	compareOne(t, filepath.Join(src, "bin/tool"), file)
	before := d.stats(t).Opens
	compareOne(t, filepath.Join(src, "bin/tool"), file)
	if o := d.stats(t).Opens; o.Cached != before.Cached+1 || o.Passthrough != before.Passthrough {
		t.Fatalf("an open of a file in the memory tier: %+v -> %+v, want one more cached open", before, o)
	}
	d.stop(t)
	d2 := startMount(t, storeDir, mnt, cacheDir, flags...)
	d2.waitRechecked(t)
	compareOne(t, filepath.Join(src, "bin/tool"), file)
	o := d2.stats(t).Opens
	if o.Passthrough+o.Cached != 1 {
		t.Fatalf("opens %+v, want one", o)
	}
	if o.Passthrough != 1 {
		t.Fatalf("a file only in the disk tier was not served by passthrough: %+v", o)
	}
	if s := d2.stats(t); s.Fetches != 0 {
		t.Fatalf("the store was read: %+v", s.Stats)
	}
}

// TestPassthroughFileWrittenWhileOpen: a disk-tier file written while the
// kernel reads it by passthrough (an open still live, or its release still
// pending) is not handed to a new open, which fails with EIO; once the
// open ones are closed, the next open finds the file changed, drops it and
// serves the right bytes from the store.
func TestPassthroughFileWrittenWhileOpen(t *testing.T) {
	requireFUSE(t)
	src, storeDir, mnt, cacheDir := packedTree(t, 0)
	want, err := os.ReadFile(filepath.Join(src, "bin/tool"))
	if err != nil {
		t.Fatal(err)
	}
	d := startMount(t, storeDir, mnt, cacheDir)
	file := filepath.Join(mnt, "t/bin/tool")
	compareOne(t, filepath.Join(src, "bin/tool"), file)
	d.stop(t) // written to the disk tier by now (stop flushes)
	d2 := startMount(t, storeDir, mnt, cacheDir)
	d2.waitRechecked(t)
	held, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	if o := d2.stats(t).Opens; o.Passthrough != 1 {
		held.Close()
		t.Fatalf("not opened by passthrough: %+v", o)
	}
	// The disk-tier file holding the chunk, written through the filesystem.
	var backing string
	filepath.Walk(cacheDir, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() && info.Size() == int64(len(want)) {
			if b, _ := os.ReadFile(p); bytes.Equal(b, want) {
				backing = p
			}
		}
		return nil
	})
	if backing == "" {
		held.Close()
		t.Fatal("the file's chunk is not in the disk tier")
	}
	w, err := os.OpenFile(backing, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteAt([]byte("J"), 0)
	w.Close()
	if f, err := os.Open(file); !errors.Is(err, syscall.EIO) {
		if err == nil {
			b, _ := io.ReadAll(f)
			f.Close()
			t.Errorf("a new open of a file whose disk-tier copy was written while open succeeded (read %q...)", b[:min(len(b), 8)])
		} else {
			t.Errorf("a new open of a file whose disk-tier copy was written while open: %v, want EIO", err)
		}
	}
	held.Close()
	for deadline := time.Now().Add(2 * time.Second); !d2.logHas("written since it was verified"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("no log line for the refused open:\n%s", d2.logs.String())
			break
		}
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		// The release of the held open reaches the daemon asynchronously.
		b, err := os.ReadFile(file)
		if err == nil {
			if !bytes.Equal(b, want) {
				t.Fatalf("after the open ones closed: wrong bytes (%q...)", b[:min(len(b), 8)])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the open ones closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s := d2.stats(t); s.Corrupt == 0 || s.Fetches == 0 {
		t.Fatalf("the written copy was not dropped and fetched again: %+v", s.Stats)
	}
}

// packedTree packs makeTree's tree (bigMB of large file) as tag "t" into a
// new file store and returns the source, store, mountpoint and cache paths.
func packedTree(t *testing.T, bigMB int) (src, storeDir, mnt, cacheDir string) {
	t.Helper()
	tmp := t.TempDir()
	src, storeDir, mnt, cacheDir = filepath.Join(tmp, "src"), filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt"), filepath.Join(tmp, "cache")
	makeTree(t, src, bigMB)
	gw(t, "pack", src, "--tag", "t", "--store", storeDir)
	return src, storeDir, mnt, cacheDir
}

// TestSignalsDuringSlowReads: a reader that keeps receiving signals (as
// every Go program does: the runtime preempts goroutines with SIGURG) while
// its lookups and reads wait on a slow store. The kernel tells the daemon
// of a signal (FUSE_INTERRUPT), which ends the request's context; the
// daemon goes on waiting for a caller that is not being killed (see
// TestSignalEndsWaitOnSlowStore), and must never answer EIO, which the
// reader would report as an I/O error. Each round is a fresh daemon, so the
// tag list and the manifest come from the store inside the first lookup.
func TestSignalsDuringSlowReads(t *testing.T) {
	requireFUSE(t)
	transports(t, signalsDuringSlowReads)
}

func signalsDuringSlowReads(t *testing.T, flags []string) {
	src, storeDir, mnt, cacheDir := packedTree(t, 2)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	stop := make(chan struct{})
	defer close(stop)
	var sent atomic.Int64
	for w := 0; w < 2; w++ {
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-sigs:
				default:
					syscall.Kill(os.Getpid(), syscall.SIGWINCH)
					sent.Add(1)
					time.Sleep(20 * time.Microsecond)
				}
			}
		}()
	}
	for round := 0; round < 8; round++ {
		d := startMount(t, storeDir+"?sim-latency=30ms&sim-bandwidth=100000000", mnt, cacheDir+strconv.Itoa(round), flags...)
		var wg sync.WaitGroup
		for _, f := range []string{"small.txt", "bin/tool", "dir/sub/deep/file", "exact-chunk.bin"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				want, _ := os.ReadFile(filepath.Join(src, f))
				got, err := os.ReadFile(filepath.Join(mnt, "t", f))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("round %d: %s: %v", round, f, err)
				}
			}()
		}
		wg.Wait()
		checkTransport(t, d, flags)
		d.stop(t)
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.logs.String())
			break
		}
	}
	t.Logf("%d signals sent while reading", sent.Load())
}

// TestManyTags: a lookup of one tag reads that tag, not every tag in the
// store (a fleet's store holds hundreds, each a round trip away); the root
// lists them all; a tag created after the mount is found at once, and one
// moved to another image is followed within --tag-ttl.
func TestManyTags(t *testing.T) {
	requireFUSE(t)
	ctx := t.Context()
	tmp := t.TempDir()
	storeDir, mnt := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	for _, v := range []string{"one", "two"} {
		os.MkdirAll(filepath.Join(tmp, v), 0o755)
		os.WriteFile(filepath.Join(tmp, v, "f"), []byte(v), 0o644)
		os.Symlink("target-"+v, filepath.Join(tmp, v, "l"))
		gw(t, "pack", filepath.Join(tmp, v), "--tag", v, "--store", storeDir)
	}
	st, err := filestore.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	one, err := store.ResolveTag(ctx, st, "one")
	if err != nil {
		t.Fatal(err)
	}
	two, _ := store.ResolveTag(ctx, st, "two")
	const n = 300
	for i := 0; i < n; i++ {
		if err := store.SetTag(ctx, st, fmt.Sprintf("t%03d", i), one); err != nil {
			t.Fatal(err)
		}
	}
	// 5 ms a request: listing and reading every tag one by one would take
	// 1.5 s per lookup.
	startMount(t, storeDir+"?sim-latency=5ms&sim-bandwidth=1e9", mnt, filepath.Join(tmp, "cache"), "--tag-ttl", "300ms")
	start := time.Now()
	b, err := os.ReadFile(filepath.Join(mnt, "t150/f"))
	if err != nil || string(b) != "one" {
		t.Fatalf("read t150/f: %q, %v", b, err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("looking up one of %d tags took %v", n, d)
	}
	ents, err := os.ReadDir(mnt)
	if err != nil || len(ents) != n+3 { // the tags, one, two, by-id
		t.Fatalf("root lists %d entries (want %d): %v", len(ents), n+3, err)
	}
	if err := store.SetTag(ctx, st, "late", two); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "late/f")); err != nil || string(b) != "two" {
		t.Fatalf("tag made after the mount: %q, %v", b, err)
	}
	// The kernel keeps link targets (symlink caching): a tag moved to
	// another image must still show that image's.
	for i := 0; i < 2; i++ {
		if l, err := os.Readlink(filepath.Join(mnt, "t150/l")); err != nil || l != "target-one" {
			t.Fatalf("readlink t150/l: %q, %v", l, err)
		}
	}
	if err := store.SetTag(ctx, st, "t150", two); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(mnt, "t150/f"))
		l, _ := os.Readlink(filepath.Join(mnt, "t150/l"))
		if err == nil && string(b) == "two" && l == "target-two" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("t150 still reads %q, links to %q (%v) after being moved to another image", b, l, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(mnt, "no-such-tag")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat of a missing tag: %v", err)
	}
}

// TestSystemdNotify: under a supervisor that speaks systemd's notify
// protocol (a unit with Type=notify), the mount says READY=1 only once it
// serves, and STOPPING=1 when it is told to stop.
func TestSystemdNotify(t *testing.T) {
	requireFUSE(t)
	src, storeDir, mnt, cacheDir := packedTree(t, 1)
	sock := filepath.Join(t.TempDir(), "notify")
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	msgs := make(chan string, 8)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := l.Read(buf)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	cmd := exec.Command(gpuwarmBin, "mount", mnt, "--store", storeDir, "--cache-dir", cacheDir)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		syscall.Unmount(mnt, syscall.MNT_DETACH)
	}()
	select {
	case m := <-msgs:
		if !strings.HasPrefix(m, "READY=1\n") {
			t.Fatalf("first notification %q, want READY=1", m)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no READY=1 from the mount\n%s", logs.String())
	}
	// Ready means serving: no polling.
	compareTrees(t, src, filepath.Join(mnt, "t"))
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case m := <-msgs:
		if !strings.HasPrefix(m, "STOPPING=1") {
			t.Fatalf("notification on SIGTERM %q, want STOPPING=1", m)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no STOPPING=1 from the mount\n%s", logs.String())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mount exited with %v after SIGTERM\n%s", err, logs.String())
	}
}
