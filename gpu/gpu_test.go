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

func TestRemapPairsDifferingGPUs(t *testing.T) {
	a, b, c := "GPU-0a1b2c3d-0000-1111-2222-333344445555", "GPU-ffffffff-0000-1111-2222-333344445555", "GPU-12345678-9abc-def0-1234-56789abcdef0"
	meta := &Meta{Model: "H100", Count: 2, UUIDs: []string{a, b}, PerGPUMemory: []uint64{8e9, 0}}
	same := &Inventory{GPUs: []GPU{{Name: "H100", UUID: a}, {Name: "H100", UUID: b}}}
	if p, err := Remap(meta, same); err != nil || p != nil {
		t.Fatalf("same GPUs: pairs %v, %v", p, err)
	}
	other := &Inventory{GPUs: []GPU{{Name: "H100", UUID: c}, {Name: "H100", UUID: a}}}
	p, err := Remap(meta, other)
	if err != nil || len(p) != 1 {
		t.Fatalf("pairs %v, %v: want one (GPU 1 held nothing)", p, err)
	}
	oa, _ := ParseUUID(a)
	nc, _ := ParseUUID(c)
	if p[0].Old != oa || p[0].New != nc || p[0].Old[0] != 0x0a || p[0].New[15] != 0xf0 {
		t.Fatalf("pair %x -> %x", p[0].Old, p[0].New)
	}
	if _, err := ParseUUID("GPU-xyz"); err == nil {
		t.Fatal("bad UUID accepted")
	}
	bad := &Meta{Model: "H100", Count: 1, UUIDs: []string{"nonsense"}}
	if _, err := Remap(bad, other); err == nil {
		t.Fatal("a snapshot with an unreadable UUID was remapped")
	}
}
