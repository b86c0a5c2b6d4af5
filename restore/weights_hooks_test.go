package restore

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// weightsRestoreRig packs a weights file into a store, lays out a stand-in
// for the mount's by-id path, and returns restore options whose weights
// hooks wrap inner (the CUDA restore's place) and the snapshot's
// annotations.
func weightsRestoreRig(t *testing.T, inner func(context.Context, int) error) (*Options, map[string]string, string) {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)
	if err := os.WriteFile(filepath.Join(src, "w.safetensors"), make([]byte, 64), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := filestore.Open(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := pack.Dir(context.Background(), st, src, pack.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mount := filepath.Join(dir, "mnt")
	byID := filepath.Join(mount, "by-id", res.ID.String())
	os.MkdirAll(byID, 0o755)
	if err := os.WriteFile(filepath.Join(byID, "w.safetensors"), make([]byte, 64), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "w.sock")
	m := WeightsMeta{Socket: sock, Processes: 1, Bytes: 64, Refs: []WeightRef{{Name: "w", Image: res.ID, Path: "w.safetensors",
		Source: "/gpuwarm/by-id/" + res.ID.String() + "/w.safetensors", Length: 64}}}
	b, _ := json.Marshal(m)
	opt := &Options{AfterRestore: inner}
	WeightsRestoreHooks(opt, st, mount, nil, nil)
	return opt, map[string]string{AnnWeights: string(b)}, sock
}

// fakeLibrary speaks the library's side once: it connects as soon as the
// socket is there, says it released its weights, and answers a reload.
// It reports when it connected and when the request came.
func fakeLibrary(ctx context.Context, sock string, connected, asked chan<- time.Time) {
	for ctx.Err() == nil {
		c, err := net.Dial("unix", sock)
		if err != nil {
			time.Sleep(2 * time.Millisecond)
			continue
		}
		defer c.Close()
		c.Write([]byte(`{"version":1,"pid":1,"state":"released","files":["/gpuwarm/w.safetensors"],"bytes":64}` + "\n"))
		connected <- time.Now()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		asked <- time.Now()
		if strings.Contains(line, `"reload"`) {
			c.Write([]byte(`{"ok":true,"bytes":64,"seconds":0.001}` + "\n"))
		}
		return
	}
}

// TestWeightsReloadAfterTheCUDARestore: the library connects while the
// CUDA restore runs, and is asked to reload only once that is done.
func TestWeightsReloadAfterTheCUDARestore(t *testing.T) {
	var innerEnd time.Time
	opt, ann, sock := weightsRestoreRig(t, func(context.Context, int) error {
		time.Sleep(300 * time.Millisecond)
		innerEnd = time.Now()
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := opt.BeforeRestore(ctx, ann); err != nil {
		t.Fatal(err)
	}
	connected, asked := make(chan time.Time, 1), make(chan time.Time, 1)
	go fakeLibrary(ctx, sock, connected, asked)
	if err := opt.AfterRestore(ctx, os.Getpid()); err != nil {
		t.Fatal(err)
	}
	c, a := <-connected, <-asked
	if !c.Before(innerEnd) {
		t.Errorf("the library connected %v after the CUDA restore ended: it should connect while it runs", c.Sub(innerEnd))
	}
	if a.Before(innerEnd) {
		t.Errorf("the reload was asked %v before the CUDA restore ended", innerEnd.Sub(a))
	}
}

// TestWeightsCUDARestoreFailureEndsTheWait: a failed CUDA restore is the
// restore's error at once, not a wait for a library that will not come.
func TestWeightsCUDARestoreFailureEndsTheWait(t *testing.T) {
	cudaErr := errors.New("CUDA restore: no such GPU")
	opt, ann, _ := weightsRestoreRig(t, func(context.Context, int) error {
		time.Sleep(50 * time.Millisecond)
		return cudaErr
	})
	ctx := context.Background()
	if err := opt.BeforeRestore(ctx, ann); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := opt.AfterRestore(ctx, os.Getpid())
	if !errors.Is(err, cudaErr) {
		t.Fatalf("got %v, want the CUDA restore's error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v: waited for the library after the CUDA restore failed", d)
	}
}
