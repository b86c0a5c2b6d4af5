package gpu

import (
	"errors"
	"fmt"
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

func TestPlaceMovesStateOnlyWhereAsked(t *testing.T) {
	a, b, c := "GPU-0a1b2c3d-0000-1111-2222-333344445555", "GPU-ffffffff-0000-1111-2222-333344445555", "GPU-12345678-9abc-def0-1234-56789abcdef0"
	meta := &Meta{Model: "H100", Count: 2, UUIDs: []string{a, b}, Driver: "580.1", PerGPUMemory: []uint64{8e9, 0}}
	gpus := func(uuids ...string) *Inventory {
		inv := &Inventory{Driver: "580.1"}
		for i, u := range uuids {
			inv.GPUs = append(inv.GPUs, GPU{Index: i, Name: "H100", UUID: u, MemoryFree: 70e9})
		}
		return inv
	}
	// The machine that took it: nothing moves.
	if p, err := Place(meta, gpus(a, b), nil, nil); err != nil || p.Pairs != nil || p.Targets[0] != 0 {
		t.Fatalf("same GPUs: %+v, %v", p, err)
	}
	// Same GPUs enumerated in another order: follow the UUID.
	if p, err := Place(meta, gpus(b, a), nil, nil); err != nil || p.Pairs != nil || p.Targets[0] != 1 {
		t.Fatalf("reordered GPUs: %+v, %v", p, err)
	}
	// Another machine: same index, one pair (GPU 1 held nothing), and a
	// one-GPU worker is enough.
	oa, _ := ParseUUID(a)
	nc, _ := ParseUUID(c)
	for _, inv := range []*Inventory{gpus(c, b), gpus(c)} {
		p, err := Place(meta, inv, nil, nil)
		if err != nil || len(p.Pairs) != len(inv.GPUs) || len(p.Fallback) != 1 || p.Pairs[0] != p.Fallback[0] ||
			p.Pairs[0].Old != oa || p.Pairs[0].New != nc || p.Pairs[0].Old[0] != 0x0a || p.Pairs[0].New[15] != 0xf0 {
			t.Fatalf("other machine: %+v, %v", p, err)
		}
	}
	// Asked for GPU 1, by index or by UUID prefix: every GPU of the
	// snapshot's machine is paired (GPU 1's idle neighbour takes GPU 0),
	// and the fallback pairs only the GPU that held state.
	ob, _ := ParseUUID(b)
	for _, w := range []string{"1", "GPU-ffffffff", "gpu-FFFFFFFF-0000"} {
		p, err := Place(meta, gpus(a, b), nil, []string{w})
		if err != nil || p.Targets[0] != 1 || p.String() != "snapshot GPU 0 -> GPU 1" {
			t.Fatalf("--gpus %s: %+v, %v", w, p, err)
		}
		want := [][]GPUPair{{{oa, ob}, {ob, oa}}, {{oa, ob}}}
		if got := p.Candidates(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("--gpus %s: candidates %x, want %x", w, got, want)
		}
	}
	// A worker with fewer GPUs than the snapshot's machine: only the
	// GPUs that held state can be paired.
	if p, err := Place(meta, gpus(c), nil, nil); err != nil || len(p.Candidates()) != 1 || len(p.Pairs) != 1 {
		t.Fatalf("one-GPU worker: %+v, %v", p, err)
	}
	bad := map[string][]string{
		"2 GPUs asked for":         {"0", "1"},
		"this worker has GPUs 0-1": {"7"},
		"no GPU \"GPU-99999999\"":  {"GPU-99999999"},
	}
	for want, w := range bad {
		if _, err := Place(meta, gpus(a, b), nil, w); err == nil || !strings.Contains(err.Error(), want) || errors.Is(err, ErrIncompatible) {
			t.Errorf("--gpus %v: %v, want a usage error mentioning %q", w, err, want)
		}
	}
	full := gpus(a, b)
	full.GPUs[1].MemoryFree = 1e9
	if _, err := Place(meta, full, nil, []string{"1"}); !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "GPU 1 needs 8.0 GB free") {
		t.Fatalf("a full target GPU: %v", err)
	}
	if _, err := ParseUUID("GPU-xyz"); err == nil {
		t.Fatal("bad UUID accepted")
	}
	unreadable := &Meta{Model: "H100", Count: 1, UUIDs: []string{"nonsense"}}
	if _, err := Place(unreadable, gpus(c), nil, nil); !errors.Is(err, ErrIncompatible) {
		t.Fatalf("a snapshot with an unreadable UUID: %v", err)
	}
}

// A snapshot of a tensor-parallel workload holds state on two GPUs: it is
// placed onto two named GPUs of a four-GPU worker (GPUs 0-1 onto 2-3, the
// idle ones swapped so that every GPU of the snapshot's machine is paired),
// onto the first two of another machine, and refused where the worker has
// one GPU or one GPU is named.
func TestPlaceTwoGPUState(t *testing.T) {
	uuids := []string{"GPU-00000000-0000-0000-0000-000000000000", "GPU-11111111-0000-0000-0000-000000000000",
		"GPU-22222222-0000-0000-0000-000000000000", "GPU-33333333-0000-0000-0000-000000000000"}
	meta := &Meta{Model: "H100", Count: 4, UUIDs: uuids, Driver: "580.1", PerGPUMemory: []uint64{8e9, 8e9, 0, 0}}
	worker := func(uuids ...string) *Inventory {
		inv := &Inventory{Driver: "580.1"}
		for i, u := range uuids {
			inv.GPUs = append(inv.GPUs, GPU{Index: i, Name: "H100", UUID: u, MemoryFree: 70e9})
		}
		return inv
	}
	id := func(i int) [16]byte { u, _ := ParseUUID(uuids[i]); return u }
	p, err := Place(meta, worker(uuids...), nil, []string{"2", "3"})
	if err != nil || fmt.Sprint(p.Targets) != "[2 3]" || p.String() != "snapshot GPU 0 -> GPU 2, snapshot GPU 1 -> GPU 3" {
		t.Fatalf("--gpus 2,3: %+v, %v", p, err)
	}
	want := []GPUPair{{id(0), id(2)}, {id(1), id(3)}, {id(2), id(0)}, {id(3), id(1)}}
	if fmt.Sprint(p.Pairs) != fmt.Sprint(want) || fmt.Sprint(p.Fallback) != fmt.Sprint(want[:2]) {
		t.Fatalf("--gpus 2,3: pairs %x, fallback %x; want %x", p.Pairs, p.Fallback, want)
	}
	other := worker("GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000")
	if p, err := Place(meta, other, nil, nil); err != nil || fmt.Sprint(p.Targets) != "[0 1]" || len(p.Candidates()) != 1 || len(p.Pairs) != 2 {
		t.Fatalf("a two-GPU worker of another machine: %+v, %v", p, err)
	}
	if _, err := Place(meta, worker(uuids[3]), nil, nil); !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "state on 2 x H100, this worker has 1 GPUs") {
		t.Fatalf("a one-GPU worker: %v", err)
	}
	if _, err := Place(meta, worker(uuids...), nil, []string{"2"}); err == nil || errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "name one GPU per snapshot GPU [0 1]") {
		t.Fatalf("one GPU named for two: %v", err)
	}
}
