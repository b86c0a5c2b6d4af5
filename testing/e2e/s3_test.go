package e2e

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/testing/s3server"
)

func startS3(t *testing.T) *s3server.Server {
	t.Helper()
	if _, err := s3server.Binary(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	srv, err := s3server.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	if err := srv.CreateBucket(ctxT(t), "fleet"); err != nil {
		t.Fatal(err)
	}
	srv.SetEnv()
	return srv
}

// TestTwoWorkersOneBucket: worker A packs into the bucket; workers A and B,
// each with its own cache and mount point, serve it.
func TestTwoWorkersOneBucket(t *testing.T) {
	requireFUSE(t)
	srv := startS3(t)
	url := srv.URL("fleet", "prod")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	makeTree(t, src, 24)
	out := gw(t, "pack", src, "--tag", "app", "--store", url)
	if !strings.Contains(out, "packed") {
		t.Fatal(out)
	}
	if ls := gw(t, "ls", "--store", url); !strings.Contains(ls, "app") {
		t.Fatalf("ls on the bucket: %s", ls)
	}
	a := startMount(t, url, filepath.Join(tmp, "a/mnt"), filepath.Join(tmp, "a/cache"))
	b := startMount(t, url, filepath.Join(tmp, "b/mnt"), filepath.Join(tmp, "b/cache"))
	compareTrees(t, src, filepath.Join(tmp, "b/mnt/app"))
	compareTrees(t, src, filepath.Join(tmp, "a/mnt/app"))
	sa, sb := a.stats(t), b.stats(t)
	if sa.Fetches == 0 || sb.Fetches == 0 || sa.FetchErrors+sb.FetchErrors != 0 {
		t.Fatalf("each worker should fetch into its own cache: A %+v, B %+v", sa, sb)
	}
}

// TestS3ServerDownDuringReads: with the server stopped, reads retry then
// fail with EIO and a log line naming the store; never wrong bytes. Once the
// server is back, the same reads succeed.
func TestS3ServerDownDuringReads(t *testing.T) {
	requireFUSE(t)
	srv := startS3(t)
	url := srv.URL("fleet", "p") + "&retries=2&timeout=2s"
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	makeTree(t, src, 4)
	gw(t, "pack", src, "--tag", "app", "--store", url)
	mnt := filepath.Join(tmp, "mnt")
	d := startMount(t, url, mnt, filepath.Join(tmp, "cache"))
	// Resolve the tag and read one file while the server is up.
	compareOne(t, filepath.Join(src, "small.txt"), filepath.Join(mnt, "app/small.txt"))

	srv.Stop()
	start := time.Now()
	_, err := os.ReadFile(filepath.Join(mnt, "app/big/weights.bin"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("read with the S3 server down: want EIO, got %v", err)
	}
	if el := time.Since(start); el > 30*time.Second {
		t.Fatalf("EIO took %v", el)
	}
	logs := d.logs.String()
	if !strings.Contains(logs, "retrying") || !strings.Contains(logs, "read failed") || !strings.Contains(logs, srv.Endpoint) {
		t.Fatalf("daemon log does not say what failed and where:\n%s", logs)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	compareOne(t, filepath.Join(src, "big/weights.bin"), filepath.Join(mnt, "app/big/weights.bin"))
}

// TestGCOnBucket: gc keeps what tags reference and removes the rest.
func TestGCOnBucket(t *testing.T) {
	srv := startS3(t)
	url := srv.URL("fleet", "gc")
	tmp := t.TempDir()
	for _, name := range []string{"keep", "drop"} {
		dir := filepath.Join(tmp, name)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "common"), []byte("shared by both images"), 0o644)
		os.WriteFile(filepath.Join(dir, "own"), []byte("only in "+name), 0o644)
		gw(t, "pack", dir, "--tag", name, "--store", url)
	}
	gw(t, "rm", "drop", "--store", url)
	out := gw(t, "gc", "--grace", "0", "--store", url)
	if !strings.Contains(out, "deleted: 1 images, 1 chunks") {
		t.Fatalf("gc report: %s", out)
	}
	if out := gw(t, "inspect", "keep", "--store", url); !strings.Contains(out, "2 files") {
		t.Fatalf("kept image damaged: %s", out)
	}
	// Everything of the kept image is still readable.
	tmpMnt := filepath.Join(tmp, "mnt")
	if os.Geteuid() == 0 {
		startMount(t, url, tmpMnt, filepath.Join(tmp, "cache"))
		for _, f := range []string{"common", "own"} {
			compareOne(t, filepath.Join(tmp, "keep", f), filepath.Join(tmpMnt, "keep", f))
		}
	}
}

// TestRandomReadsFromBucketByRange: random 4 KiB reads of a large file of
// incompressible bytes in a bucket fetch blocks of its chunks by ranged
// GETs (each checked against the chunk's block index), a small multiple
// of what they ask for, and return the file's bytes.
func TestRandomReadsFromBucketByRange(t *testing.T) {
	requireFUSE(t)
	srv := startS3(t)
	url := srv.URL("fleet", "ranged")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	os.MkdirAll(src, 0o755)
	data := make([]byte, 64<<20)
	rand.New(rand.NewSource(7)).Read(data)
	if err := os.WriteFile(filepath.Join(src, "weights.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	gw(t, "pack", src, "--tag", "w", "--store", url)
	d := startMount(t, url, filepath.Join(tmp, "mnt"), filepath.Join(tmp, "cache"))
	f, err := os.Open(filepath.Join(tmp, "mnt/w/weights.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := rand.New(rand.NewSource(8))
	const reads = 200
	buf := make([]byte, 4096)
	for i := 0; i < reads; i++ {
		off := r.Int63n(int64(len(data))-4096) &^ 4095
		if _, err := f.ReadAt(buf, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		if !bytes.Equal(buf, data[off:off+4096]) {
			t.Fatalf("read at %d: wrong bytes", off)
		}
	}
	s := d.stats(t)
	// Each read: one 16 KiB block and, for its chunk's first, the chunk's
	// 2 KiB index; the kernel may read a little around some of them.
	if s.RangedFetches < reads/2 || s.FetchBytes > 8*reads*4096 || s.FetchErrors != 0 {
		t.Fatalf("%d random 4 KiB reads: %d fetches (%d ranged), %d bytes, %d errors", reads, s.Fetches, s.RangedFetches, s.FetchBytes, s.FetchErrors)
	}
}
