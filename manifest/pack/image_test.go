package pack

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// tarEntry is one entry of a test layer.
type tarEntry struct {
	name, body, link string
	typ              byte
	mode             int64
	xattrs           map[string]string
}

func layerOf(t *testing.T, ents ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, ModTime: time.Unix(1700000000, 0), Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func imageOf(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Env: []string{"PATH=/usr/bin", "MODEL=tiny"}, Entrypoint: []string{"/bin/serve"}, Cmd: []string{"--port", "8080"},
		WorkingDir: "/srv", User: "1000:1000", ExposedPorts: map[string]struct{}{"8080/tcp": {}}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// flatten packs img into a fresh store and returns the manifest and a
// reader of a file's bytes.
func flatten(t *testing.T, img v1.Image) (*manifest.Manifest, func(p string) string, error) {
	t.Helper()
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := Image(ctx, st, img, "test", Options{ChunkSize: 64 << 10})
	if err != nil {
		return nil, nil, err
	}
	enc, err := store.ReadAll(ctx, st, store.H(store.Manifest, res.ID))
	if err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		for _, e := range m.Entries {
			if e.Path != p {
				continue
			}
			if e.Type == manifest.Hardlink {
				return "link:" + e.Target
			}
			var out []byte
			for _, c := range e.Chunks {
				blob, err := store.ReadAll(ctx, st, store.H(store.Chunk, c.ID))
				if err != nil {
					t.Fatal(err)
				}
				b, err := chunk.Decode(blob, c.ID)
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, b[c.Off:c.Off+c.Size]...)
			}
			return string(out)
		}
		return "<absent>"
	}
	return m, read, nil
}

func paths(m *manifest.Manifest) string {
	var ps []string
	for _, e := range m.Entries {
		ps = append(ps, fmt.Sprintf("%s:%s", e.Path, e.Type))
	}
	return strings.Join(ps, " ")
}

// The layers of an image applied in order: whiteouts and opaque
// directories take away what lower layers made, a directory can become a
// file, hard links across layers keep their file's bytes when its first
// name is replaced, modes and xattrs are kept, and the image config
// travels with the image.
func TestImageFlattensLayers(t *testing.T) {
	big := strings.Repeat("weights!", 20000) // 160 KB: three chunks
	l1 := layerOf(t,
		tarEntry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "bin/serve", body: "#!serve v1", mode: 0o755},
		tarEntry{name: "etc/conf", body: "old conf", xattrs: map[string]string{"user.k": "v"}},
		tarEntry{name: "etc/gone", body: "to be whited out"},
		tarEntry{name: "opq/a", body: "lower a"},
		tarEntry{name: "opq/sub/b", body: "lower b"},
		tarEntry{name: "was-dir/x", body: "x"},
		tarEntry{name: "model/w.bin", body: big},
		tarEntry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
		tarEntry{name: "dev/null", typ: tar.TypeChar},
	)
	l2 := layerOf(t,
		tarEntry{name: "etc/.wh.gone"},
		tarEntry{name: "opq/.wh..wh..opq"},
		tarEntry{name: "opq/c", body: "upper c"},
		tarEntry{name: "was-dir", body: "now a file"},
		tarEntry{name: "model/same.bin", typ: tar.TypeLink, link: "model/w.bin"},
		tarEntry{name: "bin/serve", body: "#!serve v2", mode: 0o750},
	)
	l3 := layerOf(t,
		tarEntry{name: "model/w.bin", body: "replaced"}, // the hard link keeps the old bytes
		tarEntry{name: "./etc/conf", body: "new conf", mode: 0o600},
	)
	m, read, err := flatten(t, imageOf(t, l1, l2, l3))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"bin/serve":      "#!serve v2",
		"etc/conf":       "new conf",
		"etc/gone":       "<absent>",
		"opq/a":          "<absent>",
		"opq/sub":        "<absent>",
		"opq/c":          "upper c",
		"was-dir":        "now a file",
		"was-dir/x":      "<absent>",
		"model/w.bin":    "replaced",
		"model/same.bin": big,
		"dev/null":       "<absent>",
	}
	for p, w := range want {
		if got := read(p); got != w {
			t.Errorf("%s: %.40q, want %.40q (entries: %s)", p, got, w, paths(m))
		}
	}
	for _, e := range m.Entries {
		switch e.Path {
		case "bin/serve":
			if e.Mode != 0o750 {
				t.Errorf("bin/serve mode %o", e.Mode)
			}
		case "etc/conf":
			if e.Mode != 0o600 || len(e.Xattrs) != 0 {
				t.Errorf("etc/conf: mode %o, xattrs %v (the upper layer's entry replaces it whole)", e.Mode, e.Xattrs)
			}
		case "lib":
			if e.Type != manifest.Symlink || e.Target != "usr/lib" {
				t.Errorf("lib: %+v", e)
			}
		}
	}
	cfg, ok, err := ImageConfig(m.Annotations)
	if !ok || err != nil || cfg.Entrypoint[0] != "/bin/serve" || cfg.WorkingDir != "/srv" || cfg.User != "1000:1000" || len(cfg.Env) != 2 {
		t.Fatalf("image config: %+v %v %v (annotations %v)", cfg, ok, err, m.Annotations)
	}
	if m.Annotations[AnnKind] != "oci-image" || !strings.HasPrefix(m.Annotations[AnnOCIDigest], "sha256:") {
		t.Fatalf("annotations: %v", m.Annotations)
	}
}

// Two names of one file in one layer stay one file (a hard link).
func TestImageHardLinksStayLinks(t *testing.T) {
	m, read, err := flatten(t, imageOf(t, layerOf(t,
		tarEntry{name: "a", body: "shared"},
		tarEntry{name: "b", typ: tar.TypeLink, link: "a"},
	)))
	if err != nil {
		t.Fatal(err)
	}
	if got := read("b"); got != "link:a" {
		t.Fatalf("b: %q (entries %s)", got, paths(m))
	}
}

// Hostile layers fail the pack with an error naming what was wrong.
func TestImageHostileLayersRefused(t *testing.T) {
	for _, c := range []struct {
		name string
		ents []tarEntry
		want string
	}{
		{"dotdot", []tarEntry{{name: "../../etc/passwd", body: "x"}}, "leaves the image's root"},
		{"dotdot inside", []tarEntry{{name: "a/../../b", body: "x"}}, "leaves the image's root"},
		{"whiteout of root", []tarEntry{{name: ".wh."}}, "names no entry"},
		{"through symlink", []tarEntry{{name: "l", typ: tar.TypeSymlink, link: "/etc"}, {name: "l/passwd", body: "x"}}, "goes through"},
		{"through file", []tarEntry{{name: "f", body: "x"}, {name: "f/g", body: "y"}}, "goes through"},
		{"dangling hard link", []tarEntry{{name: "h", typ: tar.TypeLink, link: "nothing"}}, "not a regular file"},
		{"hard link out", []tarEntry{{name: "h", typ: tar.TypeLink, link: "../etc/shadow"}}, "leaves the image's root"},
		{"root as file", []tarEntry{{name: ".", body: "x"}}, "replace the image's root"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := flatten(t, imageOf(t, layerOf(t, c.ents...)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error saying %q", err, c.want)
			}
		})
	}
}

// badLayer serves other bytes than its digest names, or a media type
// gpuwarm does not unpack.
type badLayer struct {
	v1.Layer
	swap []byte
	mt   types.MediaType
	// own: the layer's digest is its swapped bytes' (a layer that is what
	// the image names, and broken inside).
	own bool
}

func (b badLayer) Digest() (v1.Hash, error) {
	if b.own {
		h, _, err := v1.SHA256(bytes.NewReader(b.swap))
		return h, err
	}
	return b.Layer.Digest()
}

func (b badLayer) Compressed() (io.ReadCloser, error) {
	if b.swap != nil {
		return io.NopCloser(bytes.NewReader(b.swap)), nil
	}
	return b.Layer.Compressed()
}

func (b badLayer) MediaType() (types.MediaType, error) {
	if b.mt != "" {
		return b.mt, nil
	}
	return b.Layer.MediaType()
}

func TestImageLayerDigestAndMediaTypeChecked(t *testing.T) {
	good := layerOf(t, tarEntry{name: "a", body: "the right bytes"})
	other := layerOf(t, tarEntry{name: "a", body: "other bytes!!!!"})
	rc, _ := other.Compressed()
	swapped, _ := io.ReadAll(rc)
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, err = Image(context.Background(), st, imageOf(t, badLayer{Layer: good, swap: swapped}), "test", Options{})
	if err == nil || !strings.Contains(err.Error(), "hash to") {
		t.Fatalf("a layer whose bytes do not match its digest: %v", err)
	}
	if tags, _, _ := store.ListTags(context.Background(), st); len(tags) != 0 {
		t.Fatalf("tags after a failed pack: %v", tags)
	}
	_, err = Image(context.Background(), st, imageOf(t, badLayer{Layer: good, mt: types.DockerForeignLayer}), "test", Options{})
	if err == nil || !strings.Contains(err.Error(), "does not unpack") {
		t.Fatalf("a foreign layer: %v", err)
	}
	// Layers that are what the image names but no gzip stream: a plain
	// tar said to be gzip, and a gzip stream cut short.
	un, _ := good.Uncompressed()
	plain, _ := io.ReadAll(un)
	rc, _ = good.Compressed()
	gz, _ := io.ReadAll(rc)
	for name, b := range map[string][]byte{"a plain tar": plain, "a cut gzip stream": gz[:len(gz)-6]} {
		_, err = Image(context.Background(), st, imageOf(t, badLayer{Layer: good, swap: b, own: true}), "test", Options{})
		if err == nil || !strings.Contains(err.Error(), "gzip") && !strings.Contains(err.Error(), "unexpected EOF") {
			t.Fatalf("%s as a gzip layer: %v", name, err)
		}
	}
	if tags, _, _ := store.ListTags(context.Background(), st); len(tags) != 0 {
		t.Fatalf("tags after a failed pack: %v", tags)
	}
}

// OpenImage finds images in an OCI layout directory, a docker save archive
// and a registry (here go-containerregistry's in-process one on
// 127.0.0.1; the e2e tests use a real registry), and all three pack to the
// same image.
func TestOpenImageSources(t *testing.T) {
	img := imageOf(t, layerOf(t, tarEntry{name: "hello", body: "world"}))
	dir := t.TempDir()
	lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("example.com/x:1")
	archive := filepath.Join(dir, "image.tar")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/ns/img:v1"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, src := range []string{filepath.Join(dir, "layout"), archive, ref} {
		im, err := OpenImage(context.Background(), src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		st, _ := filestore.Open(t.TempDir())
		res, err := Image(context.Background(), st, im, "same", Options{})
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		ids = append(ids, res.ID.String())
	}
	if ids[0] != ids[1] || ids[1] != ids[2] {
		t.Fatalf("the three sources packed to different images: %v", ids)
	}
	if _, err := OpenImage(context.Background(), t.TempDir()); err == nil || !strings.Contains(err.Error(), "no OCI image layout") {
		t.Fatalf("a plain directory: %v", err)
	}
}

// A registry's layers are checked by go-containerregistry as they are read
// (Image does not hash them again): a registry that serves other bytes under
// a layer's digest fails the pack and tags nothing. The bytes served differ
// only in the gzip header's timestamp, so they unpack to the same tar and
// only the digest can tell.
func TestImageFromRegistryServingOtherBytesRefused(t *testing.T) {
	good := layerOf(t, tarEntry{name: "a", body: "the right bytes"})
	dig, _ := good.Digest()
	rc, _ := good.Compressed()
	swapped, _ := io.ReadAll(rc)
	swapped[4] ^= 1 // MTIME, which no gzip check covers
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+dig.String()) {
			w.Header().Set("Content-Length", fmt.Sprint(len(swapped)))
			w.Write(swapped)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/ns/img:v1"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, imageOf(t, good)); err != nil {
		t.Fatal(err)
	}
	img, err := OpenImage(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := filestore.Open(t.TempDir())
	_, err = Image(context.Background(), st, img, "test", Options{})
	if err == nil || !strings.Contains(err.Error(), "corrupt or not the one the image names") {
		t.Fatalf("a registry serving other bytes for a layer: %v", err)
	}
	if tags, _, _ := store.ListTags(context.Background(), st); len(tags) != 0 {
		t.Fatalf("tags after a failed pack: %v", tags)
	}
}

// FuzzImageLayer: no layer, however made, panics the flattening or puts an
// invalid manifest in the store.
func FuzzImageLayer(f *testing.F) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "a/b", Size: 1, Mode: 0o644, Typeflag: tar.TypeReg})
	tw.Write([]byte("x"))
	tw.WriteHeader(&tar.Header{Name: "a/.wh.b", Typeflag: tar.TypeReg})
	tw.Close()
	f.Add(buf.Bytes())
	st, err := filestore.Open(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
		if err != nil {
			return
		}
		img, err := mutate.AppendLayers(empty.Image, l)
		if err != nil {
			return
		}
		Image(context.Background(), st, img, "fuzz", Options{ChunkSize: 64 << 10, Workers: 2})
	})
}

// An image's small files are packed as pack.Dir packs the same tree: per
// directory, in name order whatever the layer's order, into the same shared
// chunks (so they deduplicate with directory packs), each read back whole.
func TestImagePacksSmallFilesAsDirDoes(t *testing.T) {
	files := map[string]string{"py/z.py": "zz", "py/sub/c.py": "c", "py/a.py": "a", "py/b.py": "bbb", "py/alone/x": "x"}
	order := []string{"py/z.py", "py/sub/c.py", "py/a.py", "py/alone/x", "py/b.py"}
	var ents []tarEntry
	dir := t.TempDir()
	for _, p := range order {
		ents = append(ents, tarEntry{name: p, body: files[p]})
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(files[p]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, read, err := flatten(t, imageOf(t, layerOf(t, ents...)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := filestore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	res, err := Dir(context.Background(), st, dir, Options{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ix, err := manifest.Load(context.Background(), st, res.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range m.Entries {
		if e.Type != manifest.Regular {
			continue
		}
		if got := read(e.Path); got != files[e.Path] {
			t.Errorf("%s: read %q, want %q", e.Path, got, files[e.Path])
		}
		i, ok := ix.Lookup(e.Path)
		if !ok || len(e.Chunks) != 1 || ix.Entries[i].Chunks[0] != e.Chunks[0] {
			t.Errorf("%s: image chunk %+v, directory pack's %+v", e.Path, e.Chunks, ix.Entries[i].Chunks)
		}
		if shared := e.Path != "py/alone/x" && e.Path != "py/sub/c.py"; e.Chunks[0].Shared() != shared {
			t.Errorf("%s: shared %v, want %v", e.Path, e.Chunks[0].Shared(), shared)
		}
	}
}
