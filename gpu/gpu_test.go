package gpu

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func haveDriver() bool {
	_, err := os.Stat("/dev/nvidiactl")
	return err == nil
}

func TestNoDriver(t *testing.T) {
	if haveDriver() {
		t.Skip("an NVIDIA driver is present (make test-gpu covers it)")
	}
	if _, err := ReadInventory(); !errors.Is(err, ErrNoDriver) {
		t.Fatalf("inventory without a driver: %v", err)
	}
	if _, err := State(os.Getpid()); !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), "NVIDIA driver") {
		t.Fatalf("checkpoint API without a driver: %v", err)
	}
	// A tree without GPU use needs no driver to be snapshotted.
	if pids, err := CUDAProcesses(os.Getpid()); err != nil || len(pids) != 0 {
		t.Fatalf("CPU-only tree: %v %v", pids, err)
	}
	var c Checkpointer
	if err := c.Before(nil, os.Getpid()); err != nil || c.Meta() != nil {
		t.Fatalf("Before on a CPU-only tree: %v", err)
	}
}

func TestCompatible(t *testing.T) {
	meta := &Meta{Model: "NVIDIA H100 80GB HBM3", Count: 1, Driver: "580.65.06", PerGPUMemory: []uint64{16e9}}
	good := &Inventory{Driver: "580.82.07", GPUs: []GPU{{Name: "NVIDIA H100 80GB HBM3", MemoryFree: 79e9}}}
	if err := Compatible(meta, good, nil); err != nil {
		t.Fatal(err)
	}
	if err := Compatible(nil, nil, errors.New("no driver")); err != nil {
		t.Fatalf("CPU snapshot refused on a CPU worker: %v", err)
	}
	cases := map[string]struct {
		inv  *Inventory
		err  error
		want string
	}{
		"no driver":   {nil, ErrNoDriver, "no usable GPU"},
		"other model": {&Inventory{Driver: "580.82.07", GPUs: []GPU{{Name: "NVIDIA A100-SXM4-80GB", MemoryFree: 79e9}}}, nil, "A100"},
		"no gpus":     {&Inventory{Driver: "580.82.07"}, nil, "has 0 GPUs"},
		"old driver":  {&Inventory{Driver: "570.1", GPUs: good.GPUs}, nil, "older 570.1"},
		"memory":      {&Inventory{Driver: "580.82.07", GPUs: []GPU{{Name: meta.Model, MemoryFree: 2e9}}}, nil, "needs 16.0 GB free"},
	}
	for name, c := range cases {
		err := Compatible(meta, c.inv, c.err)
		if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrIncompatible mentioning %q", name, err, c.want)
		}
	}
}

func TestMetaRoundTrip(t *testing.T) {
	m := &Meta{Model: "H100", Count: 2, UUIDs: []string{"GPU-a", "GPU-b"}, Compute: "9.0", Driver: "580.1", CUDA: 13000,
		Processes: []int{1, 7}, MemoryBytes: 17e9, PerGPUMemory: []uint64{9e9, 8e9}}
	back, err := ParseMeta(m.Annotation())
	if err != nil || back.Annotation() != m.Annotation() {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	if m, err := ParseMeta(""); m != nil || err != nil {
		t.Fatal("empty annotation must mean no GPU state")
	}
	for _, bad := range []string{"{", `{"count":-1}`, `[1,2]`} {
		if _, err := ParseMeta(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if !olderVersion("570.1", "580.2") || olderVersion("580.82.07", "580.65.06") || olderVersion("580.1", "580.1") {
		t.Fatal("version comparison")
	}
}

func TestTree(t *testing.T) {
	tree := Tree(os.Getppid())
	if len(tree) < 2 || tree[0] != os.Getppid() {
		t.Fatalf("tree of our parent %v lacks us", tree)
	}
	found := false
	for _, p := range tree {
		found = found || p == os.Getpid()
	}
	if !found {
		t.Fatal("Tree missed a child")
	}
}
