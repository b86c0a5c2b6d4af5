package registry

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Entry is one entry of a test layer. Body is the content of a regular
// file; File, instead, names a host file whose bytes it holds.
type Entry struct {
	Name, Body, File, Link string
	Type                   byte
	Mode                   int64
}

// Layer builds an uncompressed-then-gzipped layer of ents, in order.
func Layer(ents ...Entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.Name, Typeflag: e.Type, Mode: e.Mode, Linkname: e.Link,
			ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		body := []byte(e.Body)
		if e.File != "" {
			b, err := os.ReadFile(e.File)
			if err != nil {
				return nil, err
			}
			body = b
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(body); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// Image stacks layers into a linux image with run config cfg.
func Image(cfg v1.Config, layers ...v1.Layer) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// WorkloadImage is the CPU test workload as a container image: the static
// gpuwarm-workload binary at /bin/workload over three layers that exercise
// flattening (a whiteout, an opaque directory, a hard link across layers,
// a directory replaced by a file). Its entrypoint is the workload; its
// command builds 64 MB of state.
func WorkloadImage(workloadBin string) (v1.Image, error) {
	l1, err := Layer(
		Entry{Name: "bin/", Type: tar.TypeDir},
		Entry{Name: "bin/workload", File: workloadBin, Mode: 0o755},
		Entry{Name: "tmp/", Type: tar.TypeDir, Mode: 0o1777},
		Entry{Name: "srv/", Type: tar.TypeDir},
		Entry{Name: "etc/", Type: tar.TypeDir},
		Entry{Name: "etc/passwd", Body: "root:x:0:0:root:/root:/bin/sh\nserve:x:1000:1000::/srv:/bin/sh\n"},
		Entry{Name: "etc/group", Body: "root:x:0:\nserve:x:1000:\n"},
		Entry{Name: "etc/stale", Body: "removed by the next layer"},
		Entry{Name: "opt/old/a", Body: "hidden by the opaque directory"},
		Entry{Name: "was-dir/x", Body: "x"},
		Entry{Name: "data/model.bin", Body: "weights v1"},
	)
	if err != nil {
		return nil, err
	}
	l2, err := Layer(
		Entry{Name: "etc/.wh.stale"},
		Entry{Name: "opt/old/.wh..wh..opq"},
		Entry{Name: "opt/old/b", Body: "after the opaque directory"},
		Entry{Name: "was-dir", Body: "now a file"},
		Entry{Name: "data/model-link.bin", Type: tar.TypeLink, Link: "data/model.bin"},
		Entry{Name: "srv/hello", Body: "hello from the image\n"},
	)
	if err != nil {
		return nil, err
	}
	return Image(v1.Config{Entrypoint: []string{"/bin/workload"}, Cmd: []string{"--mb", "64"},
		Env: []string{"WORKLOAD=image"}, WorkingDir: "/srv"}, l1, l2)
}

// FileImage is a one-layer image of a root filesystem tar (as built by
// scripts/build-test-images.sh) with run config cfg.
func FileImage(rootfsTar string, cfg v1.Config) (v1.Image, error) {
	l, err := tarball.LayerFromFile(rootfsTar, tarball.WithCompressionLevel(gzip.BestSpeed))
	if err != nil {
		return nil, err
	}
	return Image(cfg, l)
}

// Push writes img to the registry as ref.
func Push(ctx context.Context, ref string, img v1.Image) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}
