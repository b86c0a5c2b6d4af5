package e2e

import (
	"bytes"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// makeTree builds a source tree with every entry kind the manifest has and
// the awkward cases: odd names, empty files, sparse zeros, a large file,
// special modes, owners, xattrs, hard links and dangling symlinks.
func makeTree(t *testing.T, root string, bigMB int) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	write := func(rel string, size int, mode os.FileMode) {
		p := filepath.Join(root, rel)
		must(os.MkdirAll(filepath.Dir(p), 0o755))
		b := make([]byte, size)
		for i := 0; i+8 <= size; i += 8 {
			v := rnd.Uint64()
			for k := 0; k < 8; k++ {
				b[i+k] = byte(v >> (8 * k))
			}
		}
		must(os.WriteFile(p, b, mode))
		must(os.Chmod(p, mode))
	}
	must(os.MkdirAll(root, 0o755))
	write("small.txt", 100, 0o644)
	write("exact-chunk.bin", 1<<20, 0o644)
	write("chunk-plus-one.bin", 1<<20+1, 0o600)
	write("dir/sub/deep/file", 12345, 0o640)
	write("bin/tool", 300_000, 0o755)
	write("setuid", 10, 0o4755)
	write("no-perms", 10, 0o000)
	must(os.WriteFile(filepath.Join(root, "empty"), nil, 0o644))
	must(os.MkdirAll(filepath.Join(root, "empty-dir"), 0o700))
	for _, name := range []string{"sp ace", "ünïcødé", "new\nline", "-dash", "a-b", "a", strings.Repeat("L", 255), "x\xffy", "tab\t"} {
		write(filepath.Join("names", name), len(name)*7, 0o644)
	}
	// A directory and a sibling sharing its prefix, to test ordering.
	write("a/b", 5, 0o644)
	write("a-b/c", 5, 0o644)
	// Mostly zeros: sparse with a little data.
	p := filepath.Join(root, "zeros.img")
	f, err := os.Create(p)
	must(err)
	must(f.Truncate(20 << 20))
	f.WriteAt([]byte("data in the middle"), 10<<20)
	f.Close()
	// Large random file.
	if bigMB > 0 {
		f, err := os.Create(filepath.Join(root, "big/weights.bin"))
		if os.IsNotExist(err) {
			os.MkdirAll(filepath.Join(root, "big"), 0o755)
			f, err = os.Create(filepath.Join(root, "big/weights.bin"))
		}
		must(err)
		buf := make([]byte, 1<<20)
		for i := 0; i < bigMB; i++ {
			for k := 0; k+8 <= len(buf); k += 8 {
				v := rnd.Uint64()
				buf[k], buf[k+1], buf[k+2], buf[k+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
				buf[k+4], buf[k+5], buf[k+6], buf[k+7] = byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
			}
			_, err := f.Write(buf)
			must(err)
		}
		must(f.Close())
	}
	// Links.
	must(os.Symlink("small.txt", filepath.Join(root, "link-rel")))
	must(os.Symlink("/etc/hostname", filepath.Join(root, "link-abs")))
	must(os.Symlink("does/not/exist", filepath.Join(root, "link-dangling")))
	must(os.Symlink("dir/sub", filepath.Join(root, "link-dir")))
	must(os.Link(filepath.Join(root, "bin/tool"), filepath.Join(root, "a-hardlink")))
	must(os.Link(filepath.Join(root, "bin/tool"), filepath.Join(root, "dir/another-hardlink")))
	// Owners, xattrs, times.
	must(os.Lchown(filepath.Join(root, "dir/sub/deep/file"), 1234, 5678))
	must(os.Lchown(filepath.Join(root, "link-rel"), 42, 43))
	if err := unix.Setxattr(filepath.Join(root, "small.txt"), "user.gpuwarm.test", []byte("value\x00with nul"), 0); err != nil {
		t.Logf("xattrs not supported on the test filesystem: %v", err)
	}
	unix.Setxattr(filepath.Join(root, "dir"), "user.empty", nil, 0)
	old := time.Date(2001, 2, 3, 4, 5, 6, 789, time.UTC)
	must(os.Chtimes(filepath.Join(root, "small.txt"), old, old))
	must(unix.Lutimes(filepath.Join(root, "link-abs"), []unix.Timeval{{Sec: 1000}, {Sec: 1000}}))
	must(os.Chtimes(filepath.Join(root, "empty-dir"), old, old))
}

// compareTrees checks that the mount shows exactly the source: names,
// types, modes, owners, sizes, mtimes, link targets, hard links, xattrs and
// contents.
func compareTrees(t *testing.T, src, mnt string) {
	t.Helper()
	list := func(root string) []string {
		var out []string
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Fatalf("walk %s: %v", p, err)
			}
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
			return nil
		})
		sort.Strings(out)
		return out
	}
	a, b := list(src), list(mnt)
	if strings.Join(a, "\x00") != strings.Join(b, "\x00") {
		t.Fatalf("trees differ:\nsource %q\nmount  %q", a, b)
	}
	inodes := map[uint64]uint64{}
	for _, rel := range a {
		sp, mp := filepath.Join(src, rel), filepath.Join(mnt, rel)
		var ss, ms unix.Stat_t
		if err := unix.Lstat(sp, &ss); err != nil {
			t.Fatal(err)
		}
		if err := unix.Lstat(mp, &ms); err != nil {
			t.Fatal(err)
		}
		what := fmt.Sprintf("%q", rel)
		if ss.Mode != ms.Mode || ss.Uid != ms.Uid || ss.Gid != ms.Gid {
			t.Errorf("%s: mode/uid/gid %o %d:%d, mount %o %d:%d", what, ss.Mode, ss.Uid, ss.Gid, ms.Mode, ms.Uid, ms.Gid)
		}
		if ss.Mode&unix.S_IFMT != unix.S_IFDIR {
			if ss.Size != ms.Size || ss.Mtim != ms.Mtim {
				t.Errorf("%s: size/mtime %d %v, mount %d %v", what, ss.Size, ss.Mtim, ms.Size, ms.Mtim)
			}
		}
		if ss.Mode&unix.S_IFMT == unix.S_IFREG {
			if ss.Nlink != ms.Nlink {
				t.Errorf("%s: nlink %d, mount %d", what, ss.Nlink, ms.Nlink)
			}
			// Hard links share an inode on the mount as in the source.
			if prev, ok := inodes[ss.Ino]; ok && prev != ms.Ino {
				t.Errorf("%s: hard link has inode %d, its other name %d", what, ms.Ino, prev)
			}
			inodes[ss.Ino] = ms.Ino
			if fileSum(t, sp) != fileSum(t, mp) {
				t.Errorf("%s: contents differ", what)
			}
		}
		if ss.Mode&unix.S_IFMT == unix.S_IFLNK {
			st, _ := os.Readlink(sp)
			mt, err := os.Readlink(mp)
			if err != nil || st != mt {
				t.Errorf("%s: link target %q, mount %q (%v)", what, st, mt, err)
			}
		}
		sx, mx := xattrsOf(sp), xattrsOf(mp)
		if sx != mx {
			t.Errorf("%s: xattrs %q, mount %q", what, sx, mx)
		}
	}
}

func xattrsOf(p string) string {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return ""
	}
	names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
	sort.Strings(names)
	var out bytes.Buffer
	for _, name := range names {
		if name == "" {
			continue
		}
		v := make([]byte, 4096)
		n, _ := unix.Lgetxattr(p, name, v)
		fmt.Fprintf(&out, "%s=%q;", name, v[:max(n, 0)])
	}
	return out.String()
}
