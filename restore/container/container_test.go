package container

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	cdi "tags.cncf.io/container-device-interface/specs-go"
)

// fatalIf returns a function that fails the test on an error.
func fatalIf(t *testing.T) func(error) {
	return func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (whiteouts are device nodes, opaque directories trusted xattrs)")
	}
}

// An overlayfs upper directory (a file, a hard link pair, a symlink, a
// whiteout, an opaque directory, a user xattr, a set-gid directory) goes
// through WriteDiff and ApplyDiff unchanged.
func TestDiffRoundTrip(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	must := fatalIf(t)
	must(os.MkdirAll(filepath.Join(src, "etc/app"), 0o755))
	must(os.WriteFile(filepath.Join(src, "etc/app/conf"), []byte("changed"), 0o640))
	must(os.Chown(filepath.Join(src, "etc/app/conf"), 1000, 1001))
	must(unix.Lsetxattr(filepath.Join(src, "etc/app/conf"), "user.k", []byte("v"), 0))
	must(os.Link(filepath.Join(src, "etc/app/conf"), filepath.Join(src, "etc/app/conf2")))
	must(os.Symlink("../etc/app/conf", filepath.Join(src, "etc/link")))
	must(unix.Mknod(filepath.Join(src, "etc/gone"), unix.S_IFCHR, 0))
	must(os.Mkdir(filepath.Join(src, "opq"), 0o2775))
	must(os.Chmod(filepath.Join(src, "opq"), 0o2775|os.ModeSetgid))
	must(unix.Lsetxattr(filepath.Join(src, "opq"), opaqueXattr, []byte("y"), 0))
	must(unix.Lsetxattr(filepath.Join(src, "opq"), "trusted.overlay.origin", []byte("x"), 0))
	must(os.WriteFile(filepath.Join(src, "opq/new"), []byte("n"), 0o644))
	mtime := time.Unix(1700000000, 0)
	must(os.Chtimes(filepath.Join(src, "etc/app/conf"), mtime, mtime))

	var buf bytes.Buffer
	must(WriteDiff(src, &buf))
	// The tar is an OCI layer: whiteouts and opaque markers by name.
	names := tarNames(t, buf.Bytes())
	for _, want := range []string{"etc/.wh.gone", "opq/.wh..wh..opq", "etc/app/conf2"} {
		if !strings.Contains(names, want+"\n") {
			t.Fatalf("layer lacks %s:\n%s", want, names)
		}
	}
	dst := t.TempDir()
	must(ApplyDiff(bytes.NewReader(buf.Bytes()), dst))

	var st syscall.Stat_t
	must(syscall.Lstat(filepath.Join(dst, "etc/gone"), &st))
	if st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("etc/gone is not a whiteout: mode %o rdev %d", st.Mode, st.Rdev)
	}
	val := make([]byte, 8)
	n, err := unix.Lgetxattr(filepath.Join(dst, "opq"), opaqueXattr, val)
	if err != nil || string(val[:n]) != "y" {
		t.Fatalf("opq is not opaque: %q %v", val[:n], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(dst, "opq"), "trusted.overlay.origin", val); err == nil {
		t.Fatal("overlayfs's own origin xattr travelled with the layer")
	}
	if n, err := unix.Lgetxattr(filepath.Join(dst, "etc/app/conf"), "user.k", val); err != nil || string(val[:n]) != "v" {
		t.Fatalf("user xattr: %q %v", val[:n], err)
	}
	must(syscall.Lstat(filepath.Join(dst, "etc/app/conf"), &st))
	if st.Uid != 1000 || st.Gid != 1001 || st.Mode&0o7777 != 0o640 || st.Nlink != 2 || st.Mtim.Sec != mtime.Unix() {
		t.Fatalf("etc/app/conf: uid %d gid %d mode %o links %d mtime %d", st.Uid, st.Gid, st.Mode&0o7777, st.Nlink, st.Mtim.Sec)
	}
	must(syscall.Lstat(filepath.Join(dst, "opq"), &st))
	if st.Mode&0o7777 != 0o2775 {
		t.Fatalf("opq mode %o", st.Mode&0o7777)
	}
	if l, _ := os.Readlink(filepath.Join(dst, "etc/link")); l != "../etc/app/conf" {
		t.Fatalf("symlink %q", l)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "opq/new")); string(b) != "n" {
		t.Fatalf("opq/new %q", b)
	}
}

func tarNames(t *testing.T, b []byte) string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	var s strings.Builder
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		s.WriteString(h.Name + "\n")
	}
	return s.String()
}

type ent struct {
	name, link, body string
	typ              byte
}

func tarOf(ents ...ent) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		tw.WriteHeader(h)
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return buf.Bytes()
}

// A hostile writable layer (from a crafted snapshot in the store) gets an
// error and writes nothing outside the upper directory.
func TestApplyDiffRefusesHostileLayers(t *testing.T) {
	requireRoot(t)
	cases := map[string][]ent{
		"dot-dot":                  {{name: "../escape", body: "x"}},
		"dot-dot inside":           {{name: "a/../../escape", body: "x"}},
		"absolute":                 {{name: "/escape", body: "x"}},
		"through a symlink":        {{name: "ln", link: "/tmp", typ: tar.TypeSymlink}, {name: "ln/escape", body: "x"}},
		"symlink to parent":        {{name: "ln", link: "..", typ: tar.TypeSymlink}, {name: "ln/escape", body: "x"}},
		"through a file":           {{name: "f", body: "x"}, {name: "f/escape", body: "x"}},
		"hard link outside":        {{name: "hl", link: "../../../etc/passwd", typ: tar.TypeLink}},
		"hard link to a host file": {{name: "hl", link: "etc/passwd", typ: tar.TypeLink}},
		"whiteout of root":         {{name: ".wh..", body: ""}},
		"named twice":              {{name: "f", body: "x"}, {name: "f", body: "y"}},
		"whiteout and entry":       {{name: "f", body: "x"}, {name: ".wh.f"}},
	}
	for name, ents := range cases {
		t.Run(name, func(t *testing.T) {
			parent := t.TempDir()
			upper := filepath.Join(parent, "upper")
			os.Mkdir(upper, 0o755)
			if err := ApplyDiff(bytes.NewReader(tarOf(ents...)), upper); err == nil {
				t.Fatal("applied")
			}
			left, _ := os.ReadDir(parent)
			if len(left) != 1 {
				t.Fatalf("wrote outside the upper directory: %v", left)
			}
			if _, err := os.Stat("/tmp/escape"); err == nil {
				t.Fatal("wrote /tmp/escape")
			}
		})
	}
}

func FuzzApplyDiff(f *testing.F) {
	f.Add(tarOf(ent{name: "a/b", body: "x"}, ent{name: "a/.wh.c"}, ent{name: "a/.wh..wh..opq"}))
	f.Add(tarOf(ent{name: "l", link: "/", typ: tar.TypeSymlink}, ent{name: "l/x", body: "x"}))
	f.Add(tarOf(ent{name: "h", link: "a/b", typ: tar.TypeLink}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if os.Geteuid() != 0 {
			t.Skip("needs root")
		}
		parent := t.TempDir()
		upper := filepath.Join(parent, "upper")
		os.Mkdir(upper, 0o755)
		ApplyDiff(bytes.NewReader(b), upper)
		if left, _ := os.ReadDir(parent); len(left) != 1 {
			t.Fatalf("wrote outside the upper directory: %v", left)
		}
	})
}

func TestSpecFromImageConfig(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\nserve:x:1000:1001::/srv:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("gpu:x:44:\n"), 0o644)
	cfg := &v1.Config{Entrypoint: []string{"/bin/serve"}, Cmd: []string{"--port", "8080"}, Env: []string{"PATH=/opt/bin", "MODEL=tiny"},
		WorkingDir: "/srv", User: "serve:gpu"}
	s, err := Spec(SpecOptions{Name: "c1", Rootfs: root, Image: cfg, Env: []string{"MODEL=big", "X=1"}, Memory: 1 << 30, CPUs: 2.5})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.Process.Args, " "); got != "/bin/serve --port 8080" {
		t.Fatalf("args %q", got)
	}
	if got := strings.Join(s.Process.Env, " "); got != "PATH=/opt/bin MODEL=big X=1" {
		t.Fatalf("env %q", got)
	}
	if s.Process.Cwd != "/srv" || s.Process.User.UID != 1000 || s.Process.User.GID != 44 {
		t.Fatalf("cwd %q user %+v", s.Process.Cwd, s.Process.User)
	}
	if *s.Linux.Resources.Memory.Limit != 1<<30 || *s.Linux.Resources.CPU.Quota != 250000 || *s.Linux.Resources.CPU.Period != 100000 {
		t.Fatalf("resources %+v %+v", s.Linux.Resources.Memory, s.Linux.Resources.CPU)
	}
	if s.Linux.CgroupsPath != "/gpuwarm/c1" {
		t.Fatalf("cgroup %q", s.Linux.CgroupsPath)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			t.Fatal("a network namespace without --net-own")
		}
	}
	// docker run IMAGE ARGS: with an entrypoint, ARGS replace the command.
	s, _ = Spec(SpecOptions{Name: "c1", Rootfs: root, Image: cfg, Args: []string{"--port", "9"}, OwnNet: "/run/gpuwarm/netns/c1"})
	if got := strings.Join(s.Process.Args, " "); got != "/bin/serve --port 9" {
		t.Fatalf("args %q", got)
	}
	if _, err := Spec(SpecOptions{Name: "c1", Rootfs: root}); err == nil {
		t.Fatal("no command accepted")
	}
	if _, err := Spec(SpecOptions{Name: "c1", Rootfs: root, Image: &v1.Config{Cmd: []string{"x"}, User: "nobody"}}); err == nil || !strings.Contains(err.Error(), "nobody") {
		t.Fatalf("unknown user: %v", err)
	}
	// A user database that is a symlink out of the image is not read.
	os.Remove(filepath.Join(root, "etc/passwd"))
	os.Symlink("/etc/passwd", filepath.Join(root, "etc/passwd"))
	if _, err := Spec(SpecOptions{Name: "c1", Rootfs: root, Image: &v1.Config{Cmd: []string{"x"}, User: "root"}}); err == nil {
		t.Fatal("followed the image's /etc/passwd symlink to the host's")
	}
}

func TestParseFlags(t *testing.T) {
	for in, want := range map[string]int64{"512M": 512 << 20, "8G": 8 << 30, "1.5g": 3 << 29, "64MB": 64 << 20} {
		if got, err := ParseMemory(in); err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"-1G", "x", "1K", "G"} {
		if _, err := ParseMemory(bad); err == nil {
			t.Errorf("ParseMemory(%q) accepted", bad)
		}
	}
	dir := t.TempDir()
	if b, err := ParseBind(dir + ":/data:ro"); err != nil || !b.ReadOnly || b.Container != "/data" {
		t.Fatalf("%+v %v", b, err)
	}
	for _, bad := range []string{"rel:/data", dir + ":rel", dir + ":/d:rx", "/no/such/dir:/d", dir} {
		if _, err := ParseBind(bad); err == nil {
			t.Errorf("ParseBind(%q) accepted", bad)
		}
	}
}

// GPU edits as a CDI spec describes them go in, and StripGPUs takes them
// out again (a restore on another worker applies that worker's).
func TestApplyAndStripCDI(t *testing.T) {
	mode := os.FileMode(0o666)
	cs := &cdi.Spec{Version: cdi.CurrentVersion, Kind: "gpuwarm.dev/gpu",
		Devices: []cdi.Device{{Name: "0", ContainerEdits: cdi.ContainerEdits{DeviceNodes: []*cdi.DeviceNode{{Path: "/dev/nvidia0", Type: "c", Major: 195, Minor: 0, FileMode: &mode}}}},
			{Name: "1", ContainerEdits: cdi.ContainerEdits{DeviceNodes: []*cdi.DeviceNode{{Path: "/dev/nvidia1", Type: "c", Major: 195, Minor: 1}}}}},
		ContainerEdits: cdi.ContainerEdits{
			DeviceNodes: []*cdi.DeviceNode{{Path: "/dev/nvidiactl", Type: "c", Major: 195, Minor: 255}, {Path: "/dev/nvidia-uvm", Type: "c", Major: 508, Minor: 0}},
			Mounts:      []*cdi.Mount{{HostPath: "/usr/lib/libcuda.so.580", ContainerPath: "/usr/local/nvidia/lib64/libcuda.so.1", Options: []string{"ro", "rbind"}}},
			Env:         []string{"NVIDIA_DRIVER_VERSION=580"},
		}}
	s, err := Spec(SpecOptions{Name: "g", Rootfs: t.TempDir(), Args: []string{"x"}, Env: []string{"LD_LIBRARY_PATH=/opt/lib"}})
	if err != nil {
		t.Fatal(err)
	}
	base := len(s.Linux.Resources.Devices)
	baseMounts := len(s.Mounts)
	if err := ApplyCDI(s, cs, []string{"1"}, "/usr/local/nvidia/lib64"); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, d := range s.Linux.Devices {
		paths = append(paths, d.Path)
	}
	if strings.Join(paths, ",") != "/dev/nvidiactl,/dev/nvidia-uvm,/dev/nvidia1" {
		t.Fatalf("devices %v", paths)
	}
	env := strings.Join(s.Process.Env, " ")
	if !strings.Contains(env, "LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/opt/lib") || !strings.Contains(env, "NVIDIA_DRIVER_VERSION=580") {
		t.Fatalf("env %s", env)
	}
	if len(s.Linux.Resources.Devices) != base+3 || len(s.Mounts) != baseMounts+1 {
		t.Fatalf("cgroup rules %d (base %d), mounts %d", len(s.Linux.Resources.Devices), base, len(s.Mounts))
	}
	if err := ApplyCDI(s, cs, []string{"7"}, ""); err == nil {
		t.Fatal("unknown GPU accepted")
	}
	StripGPUs(s, "/usr/local/nvidia/lib64")
	if len(s.Linux.Devices) != 0 || len(s.Linux.Resources.Devices) != base || len(s.Mounts) != baseMounts {
		t.Fatalf("after StripGPUs: %d devices, %d rules (base %d), %d mounts", len(s.Linux.Devices), len(s.Linux.Resources.Devices), base, len(s.Mounts))
	}
}

func TestRuncVersion(t *testing.T) {
	v, ok := runcVersion([]byte("runc version 1.1.5+ds1\ncommit: x\n"))
	if !ok || v != "1.1.5" || !atLeast(v, MinRunc) || atLeast("1.0.3", MinRunc) || !atLeast("2.0", MinRunc) {
		t.Fatalf("%q %v", v, ok)
	}
}

// List parses runc list's JSON (an array, or null when runc has no
// containers) into states by ID, and FindRunc refuses a runc too old,
// saying which it tried.
func TestRuncListAndFind(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	r := &Runc{Path: script("runc-two", `echo '[{"id":"a","pid":12,"status":"running","bundle":"/b/a"},{"id":"b","pid":0,"status":"stopped","bundle":"/b/b"}]'`), Root: dir}
	m, err := r.List(context.Background())
	if err != nil || len(m) != 2 || m["a"].PID != 12 || m["a"].Status != "running" || m["b"].Status != "stopped" {
		t.Fatalf("list: %+v %v", m, err)
	}
	r.Path = script("runc-none", `echo null`)
	if m, err := r.List(context.Background()); err != nil || m == nil || len(m) != 0 {
		t.Fatalf("empty list: %+v %v", m, err)
	}
	r.Path = script("runc-bad", `echo '{not json'`)
	if _, err := r.List(context.Background()); err == nil {
		t.Fatal("bad JSON accepted")
	}
	// An old runc named by GPUWARM_RUNC is passed over (for the system's,
	// where there is one), and named in the error where there is none.
	old := script("runc-old", `echo "runc version 1.0.2"`)
	t.Setenv("GPUWARM_RUNC", old)
	t.Setenv("PATH", dir)
	found, err := FindRunc(context.Background(), dir, "")
	switch {
	case err == nil && found.Path == old:
		t.Fatal("FindRunc took a runc older than 1.1")
	case err != nil && !strings.Contains(err.Error(), old+" is runc 1.0.2, older than 1.1"):
		t.Fatalf("the error does not say why %s was passed over: %v", old, err)
	}
}

// Thousands of small files (written by the pool), a large one (streamed in
// order) and a hard link to a pooled file that comes right after it all
// arrive with their bytes, modes and times.
func TestApplyDiffManyFiles(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	mtime := time.Unix(1700000000, 0)
	var want []string
	for i := range 3000 {
		dir := filepath.Join(src, "lib", fmt.Sprintf("pkg%02d", i%40), "__pycache__")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		name := filepath.Join(dir, fmt.Sprintf("m%04d.pyc", i))
		if err := os.WriteFile(name, bytes.Repeat([]byte{byte(i)}, 100+i*7), 0o600+os.FileMode(i%2)*0o44); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(name, mtime, mtime)
		want = append(want, name)
	}
	big := filepath.Join(src, "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("b"), 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	last := want[len(want)-1]
	if err := os.Link(last, filepath.Join(src, "zz-link")); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteDiff(src, &buf); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if err := ApplyDiff(bytes.NewReader(buf.Bytes()), dst); err != nil {
		t.Fatal(err)
	}
	for i, name := range append(want, big) {
		rel, _ := filepath.Rel(src, name)
		a, _ := os.ReadFile(name)
		b, err := os.ReadFile(filepath.Join(dst, rel))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("%s: %d bytes, want %d (%v)", rel, len(b), len(a), err)
		}
		fa, _ := os.Lstat(name)
		fb, _ := os.Lstat(filepath.Join(dst, rel))
		if fa.Mode() != fb.Mode() || i < len(want) && !fb.ModTime().Equal(mtime) {
			t.Fatalf("%s: mode %v time %v, want %v %v", rel, fb.Mode(), fb.ModTime(), fa.Mode(), mtime)
		}
	}
	var st syscall.Stat_t
	rel, _ := filepath.Rel(src, last)
	if err := syscall.Stat(filepath.Join(dst, rel), &st); err != nil || st.Nlink != 2 {
		t.Fatalf("%s: %d links (%v), want 2", rel, st.Nlink, err)
	}
}

// A file the pool cannot write (its name is taken) fails the apply.
func TestApplyDiffPoolFailure(t *testing.T) {
	requireRoot(t)
	dst := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dst, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := ApplyDiff(bytes.NewReader(tarOf(ent{name: "a", body: "x"}, ent{name: "a2", body: "y"})), filepath.Join(dst, "d"))
	if err != nil {
		t.Fatal(err)
	}
	err = ApplyDiff(bytes.NewReader(tarOf(ent{name: "a", body: "x"})), filepath.Join(dst, "d"))
	if err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("writing over an existing file: %v", err)
	}
}

// BenchmarkApplyDiff: a Python program's writable layer (3,000 bytecode
// files of 1-30 KB in 40 directories).
func BenchmarkApplyDiff(b *testing.B) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := range 3000 {
		body := bytes.Repeat([]byte{byte(i)}, 1000+(i*9973)%29000)
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("lib/pkg%02d/__pycache__/m%04d.pyc", i%40, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write(body)
	}
	tw.Close()
	b.SetBytes(int64(buf.Len()))
	for b.Loop() {
		dst := b.TempDir()
		if err := ApplyDiff(bytes.NewReader(buf.Bytes()), dst); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLargestDirs(t *testing.T) {
	up := t.TempDir()
	for p, n := range map[string]int{"root/.nv/ComputeCache/a": 300, "root/.nv/x": 50, "tmp/b": 200, "c": 10} {
		os.MkdirAll(filepath.Join(up, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(up, p), make([]byte, n), 0o644)
	}
	got := strings.Join(LargestDirs(up, 2), ", ")
	if got != "/root/.nv (350 bytes), /tmp (200 bytes)" {
		t.Fatalf("LargestDirs: %s", got)
	}
}
