package container

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// A tmpfs (a device node, a symlink, a file named like a whiteout, a
// directory another tmpfs is mounted on) goes through writeTree and
// fillTmpfs as it was, the nested mount's files left out, the new mount
// read-only where the saved one was.
func TestTmpfsRoundTrip(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	must := fatalIf(t)
	must(unix.Mount("tmpfs", src, "tmpfs", 0, "size=1m,mode=755"))
	defer unix.Unmount(src, unix.MNT_DETACH)
	must(unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR, int(unix.Mkdev(1, 3))))
	must(os.Chmod(filepath.Join(src, "null"), 0o666))
	must(os.Symlink("/proc/self/fd", filepath.Join(src, "fd")))
	must(os.WriteFile(filepath.Join(src, ".wh.kept"), []byte("not a whiteout"), 0o600))
	must(os.Mkdir(filepath.Join(src, "shm"), 0o1777))
	must(unix.Mount("tmpfs", filepath.Join(src, "shm"), "tmpfs", 0, "size=1m"))
	defer unix.Unmount(filepath.Join(src, "shm"), unix.MNT_DETACH)
	must(os.WriteFile(filepath.Join(src, "shm", "segment"), []byte("another mount's"), 0o600))

	tarPath := filepath.Join(t.TempDir(), "tmpfs-0.tar")
	var buf bytes.Buffer
	must(writeTree(src, &buf, false))
	must(os.WriteFile(tarPath, buf.Bytes(), 0o600))
	dst := t.TempDir()
	must(fillTmpfs(dst, tarPath, TmpfsMount{Mountpoint: "/dev", Options: "size=1m,mode=711", ReadOnly: true}))
	defer unix.Unmount(dst, unix.MNT_DETACH)

	var st unix.Stat_t
	must(unix.Lstat(filepath.Join(dst, "null"), &st))
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) || st.Mode&0o777 != 0o666 {
		t.Fatalf("null: mode %o rdev %d", st.Mode, st.Rdev)
	}
	if l, _ := os.Readlink(filepath.Join(dst, "fd")); l != "/proc/self/fd" {
		t.Fatalf("fd -> %q", l)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, ".wh.kept")); string(b) != "not a whiteout" {
		t.Fatalf(".wh.kept = %q", b)
	}
	if ents, err := os.ReadDir(filepath.Join(dst, "shm")); err != nil || len(ents) != 0 {
		t.Fatalf("the nested mount point: %v %v, want an empty directory", ents, err)
	}
	must(unix.Stat(dst, &st))
	if st.Mode&0o7777 != 0o711 {
		t.Fatalf("the mount's root has mode %o, want its mode= option", st.Mode&0o7777)
	}
	if err := os.WriteFile(filepath.Join(dst, "x"), nil, 0o600); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("writing into a read-only saved mount: %v", err)
	}
	var sfs unix.Statfs_t
	must(unix.Statfs(dst, &sfs))
	if sfs.Type != unix.TMPFS_MAGIC {
		t.Fatalf("filesystem type %x, want tmpfs", sfs.Type)
	}
}

// A snapshot's list of tmpfs mounts is outside bytes: anything gpuwarm
// would not have written is refused before a mount is made.
func TestMountTmpfsRefusesHostileLists(t *testing.T) {
	requireRoot(t)
	for _, m := range []TmpfsMount{
		{Mountpoint: "/dev", Options: "size=1m,exec", File: "tmpfs-0.tar"},
		{Mountpoint: "/dev", Options: "mode=755,uid=0;x", File: "tmpfs-0.tar"},
		{Mountpoint: "dev", File: "tmpfs-0.tar"},
		{Mountpoint: "/dev/../etc", File: "tmpfs-0.tar"},
		{Mountpoint: "/", File: "tmpfs-0.tar"},
		{Mountpoint: "/dev", File: "../tmpfs-0.tar"},
	} {
		imgDir := t.TempDir()
		b, _ := json.Marshal([]TmpfsMount{m})
		os.WriteFile(filepath.Join(imgDir, TmpfsFile), b, 0o600)
		os.WriteFile(filepath.Join(imgDir, "tmpfs-0.tar"), nil, 0o600)
		c := &Container{Record: Record{Name: "c"}, Dir: t.TempDir()}
		lines, err := c.MountTmpfs(imgDir)
		if err == nil || !strings.Contains(err.Error(), TmpfsFile) {
			t.Fatalf("%+v: lines %v, err %v", m, lines, err)
		}
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(mi), c.Dir) {
			t.Fatalf("%+v: a mount was made", m)
		}
	}
	// No list: the snapshot's tmpfs mounts are CRIU's.
	c := &Container{Record: Record{Name: "c"}, Dir: t.TempDir()}
	if lines, err := c.MountTmpfs(t.TempDir()); lines != nil || err != nil {
		t.Fatalf("without %s: %v %v", TmpfsFile, lines, err)
	}
}

// MountTmpfs gives CRIU one external per saved mount, and the
// container's removal unmounts them.
func TestMountTmpfsAndRemove(t *testing.T) {
	requireRoot(t)
	imgDir := t.TempDir()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	var buf bytes.Buffer
	if err := writeTree(src, &buf, false); err != nil {
		t.Fatal(err)
	}
	saved := []TmpfsMount{{Mountpoint: "/dev/shm", Options: "size=65536k", File: "tmpfs-0.tar"},
		{Mountpoint: "/proc/acpi", ReadOnly: true, File: "tmpfs-1.tar"}}
	for _, m := range saved {
		os.WriteFile(filepath.Join(imgDir, m.File), buf.Bytes(), 0o600)
	}
	b, _ := json.Marshal(saved)
	os.WriteFile(filepath.Join(imgDir, TmpfsFile), b, 0o600)
	c := &Container{Record: Record{Name: "c"}, Dir: t.TempDir()}
	lines, err := c.MountTmpfs(imgDir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"external mnt[gpuwarm-tmpfs-0]:" + filepath.Join(c.Dir, "tmpfs/0"), "external mnt[gpuwarm-tmpfs-1]:" + filepath.Join(c.Dir, "tmpfs/1")}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("lines %q, want %q", lines, want)
	}
	if b, _ := os.ReadFile(filepath.Join(c.Dir, "tmpfs/1/f")); string(b) != "x" {
		t.Fatalf("tmpfs/1/f = %q", b)
	}
	if err := c.unmountTmpfs(); err != nil {
		t.Fatal(err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), c.Dir) {
		t.Fatalf("mounts left:\n%s", mi)
	}
}

// Only the tmpfs mounts runc makes for the container (its spec's tmpfs
// mounts and masked directories) are the container's to save; a tmpfs
// bound in as a volume stays the host's.
func TestRuntimeTmpfs(t *testing.T) {
	s, err := Spec(SpecOptions{Name: "c", Rootfs: t.TempDir(), Args: []string{"/bin/true"},
		Mounts: []Bind{{Host: "/dev/shm", Container: "/shared"}}})
	if err != nil {
		t.Fatal(err)
	}
	own := runtimeTmpfs(s)
	for _, p := range []string{"/dev", "/dev/shm", "/proc/acpi", "/sys/firmware"} {
		if !own[p] {
			t.Errorf("%s is a tmpfs runc makes, not listed", p)
		}
	}
	for _, p := range []string{"/shared", "/proc", "/dev/pts", "/"} {
		if own[p] {
			t.Errorf("%s listed as the container's own tmpfs", p)
		}
	}
}
