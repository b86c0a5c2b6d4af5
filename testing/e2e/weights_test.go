package e2e

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// writeSafetensors writes tensors (name → bytes, as U8 vectors) in the
// safetensors format, in name order, and returns each one's file offset.
func writeSafetensors(t *testing.T, path string, names []string, data map[string][]byte) map[string]int64 {
	t.Helper()
	hdr := map[string]any{}
	var pos int64
	for _, n := range names {
		hdr[n] = map[string]any{"dtype": "U8", "shape": []int{len(data[n])}, "data_offsets": []int64{pos, pos + int64(len(data[n]))}}
		pos += int64(len(data[n]))
	}
	h, _ := json.Marshal(hdr)
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	b = append(b, h...)
	offs := map[string]int64{}
	for _, n := range names {
		offs[n] = int64(len(b))
		b = append(b, data[n]...)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return offs
}

// workloadProcs lists live processes running the weights workload.
func workloadProcs() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		st, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		if strings.Contains(string(b), "weights_workload.py") && !strings.Contains(string(st), ") Z") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestWeightsProtocol: a workload speaking the weights protocol (the
// library's protocol part, gpuwarm_weights.Hooks, over the real socket,
// with a CPU stand-in for GPU tensors) releases the tensors whose bytes are
// in an image on the mount; the snapshot references them instead; a lazy
// restore on another mount has the library read them back through the
// mount and answers with the same checksum; a tensor that differs from its
// file stays in the snapshot. A referenced chunk corrupt in the store, or
// the weights image gone from it, makes the restore fail with nothing left
// running.
func TestWeightsProtocol(t *testing.T) {
	requireCRIU(t)
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 missing")
	}
	tmp := t.TempDir()
	storeDir, mnt := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	names := []string{"a.weight", "b.weight", "modified.c"}
	data := map[string][]byte{"a.weight": make([]byte, 3<<20), "b.weight": make([]byte, 2<<20+12345), "modified.c": make([]byte, 64<<10)}
	for _, d := range data {
		rand.Read(d)
	}
	src := filepath.Join(tmp, "model")
	offs := writeSafetensors(t, filepath.Join(src, "model.safetensors"), names, data)
	gw(t, "pack", src, "--tag", "w", "--store", storeDir)
	startMount(t, storeDir, mnt, filepath.Join(tmp, "cache"))

	abs, _ := filepath.Abs("../../restore/weights")
	script, _ := filepath.Abs("../../testing/workload/weights/weights_workload.py")
	t.Setenv("PYTHONPATH", abs)
	sock := filepath.Join(tmp, "w.sock")
	t.Setenv("GPUWARM_WEIGHTS", sock)
	logA := filepath.Join(tmp, "a.log")
	pidS := strings.TrimSpace(gw(t, "run", "--log", logA, "--", "python3", script, filepath.Join(mnt, "w/model.safetensors")))
	t.Cleanup(func() {
		for _, p := range workloadProcs() {
			syscall.Kill(p, syscall.SIGKILL)
		}
	})
	want := strings.Fields(waitLine(t, logA, "ready"))[1]
	out := gw(t, "snapshot", "--pid", pidS, "--tag", "ws", "--store", storeDir, "--json")
	var snap struct {
		Image          string `json:"image"`
		WeightsBytes   int64  `json:"weights_bytes"`
		WeightsTensors int    `json:"weights_tensors"`
	}
	if err := json.Unmarshal([]byte(out), &snap); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if snap.WeightsTensors != 2 || snap.WeightsBytes != int64(len(data["a.weight"])+len(data["b.weight"])) {
		t.Fatalf("snapshot released %d tensors, %d bytes; want a.weight and b.weight (modified.c differs from its file)", snap.WeightsTensors, snap.WeightsBytes)
	}
	insp := gw(t, "inspect", "ws", "--store", storeDir, "--json")
	for _, n := range []string{"a.weight", "b.weight", fmt.Sprintf(`\"offset\":%d`, offs["a.weight"])} {
		if !strings.Contains(insp, n) {
			t.Fatalf("the snapshot's weight references lack %s: %s", n, insp)
		}
	}
	if strings.Contains(insp, `\"name\":\"modified.c\"`) {
		t.Fatalf("a tensor that differs from its file is referenced: %s", insp)
	}
	if txt := gw(t, "inspect", "ws", "--store", storeDir); !strings.Contains(txt, "weights   2 tensors (5.3 MB) referenced in image") {
		t.Fatalf("inspect does not summarize the weight references: %s", txt)
	}

	// Another worker (its own mount and cache) restores it lazily.
	mntB, cacheB, spool := filepath.Join(tmp, "mntB"), filepath.Join(tmp, "cacheB"), filepath.Join(tmp, "spool")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	startMount(t, storeDir, mntB, cacheB, "--metrics-addr", addr, "--restore-reports", spool)
	outFile := filepath.Join(tmp, "restored.log")
	res := gw(t, "restore", "ws", "--lazy", "--mount", mntB, "--store", storeDir, "--cache-dir", cacheB, "--stdout", outFile, "--restore-reports", spool)
	if !strings.Contains(res, "weights: 5.3 MB uploaded by the workload from the mount") {
		t.Fatalf("restore output: %s", res)
	}
	rpid, _ := strconv.Atoi(strings.Fields(strings.SplitN(res, "pid ", 2)[1])[0])
	syscall.Kill(rpid, syscall.SIGUSR1)
	if got := strings.Fields(waitLine(t, outFile, "checksum"))[1]; got != want {
		t.Fatalf("restored checksum %s, want %s", got, want)
	}
	syscall.Kill(rpid, syscall.SIGKILL)
	waitNoWorkload(t)
	// The worker's metrics count the upload.
	m, _ := scrape(t, addr)
	if got := m[`gpuwarm_restore_weights_bytes_total{kind="bare",mode="lazy"}`]; got != float64(snap.WeightsBytes) {
		t.Fatalf("gpuwarm_restore_weights_bytes_total %v, want %d", got, snap.WeightsBytes)
	}
	if got := m[`gpuwarm_restore_weights_seconds_count{kind="bare",mode="lazy"}`]; got != 1 {
		t.Fatalf("gpuwarm_restore_weights_seconds_count %v, want 1", got)
	}

	// gc keeps the weights image while the snapshot needs it, tagged or not.
	gw(t, "rm", "--tag", "w", "--store", storeDir)
	gw(t, "gc", "--grace", "0", "--store", storeDir)
	if out := gw(t, "inspect", "ws", "--store", storeDir); !strings.Contains(out, "weights   2 tensors") {
		t.Fatalf("after gc: %s", out)
	}

	// A corrupt chunk of b.weight in the store: a worker with an empty
	// cache cannot serve it, and the restore fails with nothing running.
	fs, err := filestore.Open(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	file, _ := os.ReadFile(filepath.Join(src, "model.safetensors"))
	bad := digest.Of(file[4<<20 : 5<<20]) // inside b.weight
	badPath := filepath.Join(storeDir, "chunks", bad.String()[:2], bad.String())
	orig, err := os.ReadFile(badPath)
	if err != nil {
		t.Fatal(err)
	}
	blob := append([]byte(nil), orig...)
	blob[len(blob)/2] ^= 0xff
	os.WriteFile(badPath, blob, 0o644)
	mntC, cacheC := filepath.Join(tmp, "mntC"), filepath.Join(tmp, "cacheC")
	dC := startMount(t, storeDir, mntC, cacheC)
	cmd := exec.Command(gpuwarmBin, "restore", "ws", "--lazy", "--mount", mntC, "--store", storeDir, "--cache-dir", cacheC, "--stdout", filepath.Join(tmp, "c.log"))
	b, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "could not reload its weights") {
		t.Fatalf("restore with a corrupt weights chunk: %v\n%s", err, b)
	}
	waitNoWorkload(t)
	os.WriteFile(badPath, orig, 0o644)

	// The weights image gone from the store: refused before anything runs.
	var ann struct {
		Refs []struct {
			Image string `json:"image"`
		} `json:"refs"`
	}
	var ix struct {
		Image struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"image"`
	}
	json.Unmarshal([]byte(insp), &ix)
	if err := json.Unmarshal([]byte(ix.Image.Annotations["gpuwarm.weights"]), &ann); err != nil || len(ann.Refs) == 0 {
		t.Fatalf("no weight references in %s: %v", insp, err)
	}
	id, err := digest.Parse(ann.Refs[0].Image)
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.Delete(ctxT(t), store.H(store.Manifest, id)); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(gpuwarmBin, "restore", "ws", "--lazy", "--mount", mntC, "--store", storeDir, "--cache-dir", cacheC)
	b, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "references weights in image") {
		t.Fatalf("restore with the weights image gone: %v\n%s\nmount log:\n%s", err, b, dC.logs.String())
	}
	if p := workloadProcs(); len(p) > 0 {
		t.Fatalf("a refused restore left processes %v", p)
	}
}

func waitNoWorkload(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(workloadProcs()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("workload processes %v still run", workloadProcs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
