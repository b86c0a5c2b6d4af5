package e2e

import (
	"archive/tar"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/gpuwarm/gpuwarm/testing/registry"
)

// TestContainerWeights: the weights protocol in a container (its own mount
// and PID namespaces). The workload reads one weights file from its image
// (the root filesystem: an overlay over the mount) and one from a volume
// bound from the mount; gpuwarm resolves both through the mount's file
// xattr, binds the socket in the container's root filesystem, and the
// snapshot references both files' tensors. A lazy restore into a new
// container has the library read them back at its own paths, checked to
// present the same image bytes, and answers the same checksum.
func TestContainerWeights(t *testing.T) {
	requireContainers(t)
	e := newCtrEnv(t)
	debian := "/var/lib/gpuwarm/test-images/debian12-python3-stdlib.tar"
	if _, err := os.Stat(debian); err != nil {
		t.Fatalf("the Debian test image is missing (make setup builds it): %v", err)
	}
	data := map[string][]byte{"a.weight": make([]byte, 3<<20), "modified.c": make([]byte, 64<<10), "b.weight": make([]byte, 2<<20+777)}
	for _, d := range data {
		rand.Read(d)
	}
	inImage := filepath.Join(e.tmp, "img", "a.safetensors")
	writeSafetensors(t, inImage, []string{"a.weight", "modified.c"}, map[string][]byte{"a.weight": data["a.weight"], "modified.c": data["modified.c"]})
	onVolume := filepath.Join(e.tmp, "vol")
	writeSafetensors(t, filepath.Join(onVolume, "b.safetensors"), []string{"b.weight"}, map[string][]byte{"b.weight": data["b.weight"]})
	lib, _ := filepath.Abs("../../restore/weights/gpuwarm_weights.py")
	script, _ := filepath.Abs("../../testing/workload/weights/weights_workload.py")

	sockDir := fmt.Sprintf("gpuwarm-e2e-sock-%d", os.Getpid())
	os.RemoveAll("/tmp/" + sockDir)
	base, err := registry.FileImage(debian, v1.Config{Env: []string{"LANG=C.UTF-8", "PYTHONPATH=/opt/gw"}})
	if err != nil {
		t.Fatal(err)
	}
	extra, err := registry.Layer(
		registry.Entry{Name: "opt/gw/", Type: tar.TypeDir},
		registry.Entry{Name: "opt/gw/gpuwarm_weights.py", File: lib},
		registry.Entry{Name: "opt/gw/weights_workload.py", File: script},
		registry.Entry{Name: "models/", Type: tar.TypeDir},
		registry.Entry{Name: "models/a.safetensors", File: inImage},
		// The socket's directory is a link to an absolute path: gpuwarm
		// must follow it inside the container's root, never the host's.
		registry.Entry{Name: "tmp/" + sockDir + "/", Type: tar.TypeDir},
		registry.Entry{Name: "run/gpuwarm", Type: tar.TypeSymlink, Link: "/tmp/" + sockDir},
	)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, extra)
	if err != nil {
		t.Fatal(err)
	}
	writeLayout(t, filepath.Join(e.tmp, "layout"), img)
	e.gw(t, "pack", "--image", filepath.Join(e.tmp, "layout"), "--tag", "pyw")
	e.gw(t, "pack", onVolume, "--tag", "vol")
	e.mount(t)

	e.gw(t, "run", "--image", "pyw", "--name", "wo", "--log", filepath.Join(e.tmp, "wo.log"), "-v", filepath.Join(e.mnt, "vol")+":/weights:ro", "-e", "PYTHONUNBUFFERED=1", "--",
		"python3", "/opt/gw/weights_workload.py", "/models/a.safetensors", "/weights/b.safetensors")
	orig := e.ps(t)["wo"]
	want := strings.Fields(waitLine(t, orig.Log, "ready"))[1]
	c := e.cmd("snapshot", "--name", "wo", "--tag", "ws", "--json", "--log-level", "debug")
	var stderr strings.Builder
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("snapshot: %v\n%s", err, stderr.String())
	}
	var snap struct {
		WeightsBytes   int64 `json:"weights_bytes"`
		WeightsTensors int   `json:"weights_tensors"`
	}
	if err := json.Unmarshal([]byte(out), &snap); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if snap.WeightsTensors != 2 || snap.WeightsBytes != int64(len(data["a.weight"])+len(data["b.weight"])) {
		t.Fatalf("the container's snapshot released %d tensors, %d bytes; want a.weight (image) and b.weight (volume)\n%s", snap.WeightsTensors, snap.WeightsBytes, stderr.String())
	}
	insp := e.gw(t, "inspect", "ws", "--json")
	for _, s := range []string{`\"source\":\"/models/a.safetensors\"`, `\"source\":\"/weights/b.safetensors\"`, `\"local\":true`} {
		if !strings.Contains(insp, s) {
			t.Fatalf("the snapshot's references lack %s: %s", s, insp)
		}
	}
	// The socket was made inside the container (through its link), not
	// on the host, and is gone again.
	if _, err := os.Lstat("/tmp/" + sockDir); err == nil {
		t.Fatalf("gpuwarm followed the container's link /run/gpuwarm -> /tmp/%s on the host", sockDir)
	}
	if _, err := os.Lstat(fmt.Sprintf("/proc/%d/root/tmp/%s/weights.sock", orig.PID, sockDir)); err == nil {
		t.Fatal("the weights socket was left in the container's root filesystem")
	}
	e.gw(t, "rm", "wo")

	res := e.gw(t, "restore", "ws", "--lazy", "--name", "wr")
	if !strings.Contains(res, "weights: 5.2 MB uploaded by the workload from the mount") {
		t.Fatalf("restore output: %s", res)
	}
	r := e.ps(t)["wr"]
	from := sizeOf(r.Log)
	syscall.Kill(r.PID, syscall.SIGUSR1)
	if got := strings.Fields(waitNewLine(t, r.Log, from, "checksum"))[1]; got != want {
		t.Fatalf("the restored container's checksum %s, want %s", got, want)
	}
}
