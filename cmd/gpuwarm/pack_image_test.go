package main

import (
	"archive/tar"
	"bytes"
	"io"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// pack --image packs an OCI layout's image; inspect shows how to run it.
func TestPackImageAndInspect(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "bin/serve", Mode: 0o755, Size: 5, Typeflag: tar.TypeReg})
	tw.Write([]byte("serve"))
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, _ := mutate.AppendLayers(empty.Image, l)
	img, _ = mutate.Config(img, v1.Config{Entrypoint: []string{"/bin/serve"}, Env: []string{"A=1"}, WorkingDir: "/w"})
	dir := filepath.Join(t.TempDir(), "layout")
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	storeDir := filepath.Join(t.TempDir(), "store")
	if code, out, errOut := gw(t, "pack", "--image", dir, "--tag", "app", "--store", storeDir); code != 0 || !strings.Contains(out, "packed") {
		t.Fatalf("pack --image: %d %s %s", code, out, errOut)
	}
	code, out, errOut := gw(t, "inspect", "app", "--store", storeDir)
	if code != 0 || !strings.Contains(out, `entrypoint ["/bin/serve"]`) || !strings.Contains(out, "env A=1") || !strings.Contains(out, "oci-image") {
		t.Fatalf("inspect: %d\n%s%s", code, out, errOut)
	}
	if code, _, errOut := gw(t, "pack", "--image", dir, "--tag", "x", "--store", storeDir, "extra-dir"); code != 2 || !strings.Contains(errOut, "no directory with --image") {
		t.Fatalf("pack --image with a directory too: %d %s", code, errOut)
	}
	if code, _, errOut := gw(t, "pack", "--image", t.TempDir(), "--tag", "x", "--store", storeDir); code != 1 || !strings.Contains(errOut, "no OCI image layout") {
		t.Fatalf("pack --image of a plain directory: %d %s", code, errOut)
	}
}
