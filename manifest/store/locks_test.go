package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// A write lock left by a killed writer on this machine is taken over at
// once; one held by a live process blocks gc as before.
func TestLockOfDeadHolderTakenOver(t *testing.T) {
	ctx := context.Background()
	fst, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// A live holder: this process.
	w, err := store.AcquireLock(ctx, fst, store.WriteLock, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.AcquireLock(ctx, fst, store.GCLock, 0); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("gc beside a live writer: %v", err)
	}
	w.Release(ctx)

	// A dead holder: copy this process's lock body, with a PID that ran
	// and exited (a writer killed with -9 leaves exactly that).
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip(err)
	}
	w, _ = store.AcquireLock(ctx, fst, store.WriteLock, 0)
	var name string
	fst.List(ctx, store.Lock, func(in store.Info) error { name = in.Name; return nil })
	b, _ := store.ReadAll(ctx, fst, store.Handle{Kind: store.Lock, Name: name})
	var body map[string]any
	json.Unmarshal(b, &body)
	body["pid"] = cmd.Process.Pid
	b, _ = json.Marshal(body)
	dead := store.Handle{Kind: store.Lock, Name: strings.Replace(name, "write-", "write-dead-", 1)}
	fst.Put(ctx, dead, b)
	w.Release(ctx)
	start := time.Now()
	g, err := store.AcquireLock(ctx, fst, store.GCLock, 0)
	if err != nil {
		t.Fatalf("gc beside a dead writer's lock: %v", err)
	}
	g.Release(ctx)
	if time.Since(start) > 5*time.Second {
		t.Fatalf("taking over took %v", time.Since(start))
	}
	if _, err := fst.Stat(ctx, dead); err == nil {
		t.Fatal("the dead writer's lock is still there")
	}
}
