package container

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/internal/xattrs"

	"golang.org/x/sys/unix"
)

// The writable layer travels as an OCI layer (a tar with .wh. whiteouts),
// the form podman's checkpoint export keeps a root filesystem's changes
// in; overlayfs keeps them as 0:0 character devices and an xattr, which
// WriteDiff and ApplyDiff translate.
const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	opaqueXattr    = "trusted.overlay.opaque"
	paxXattr       = "SCHILY.xattr."
)

// WriteDiff writes overlayfs upper directory upper as an OCI layer tar.
// Sockets are left out (CRIU recreates bound ones); overlayfs's own
// trusted.overlay.* attributes are translated or dropped.
func WriteDiff(upper string, w io.Writer) error {
	if err := writeTree(upper, w, true); err != nil {
		return fmt.Errorf("writable layer %s: %w", upper, err)
	}
	return nil
}

// writeTree writes the tree at root as a tar: with overlay, an overlayfs
// upper directory in OCI layer form; without, one filesystem as it is
// (a directory another filesystem is mounted on is written empty, the
// mount's own files left out).
func writeTree(root string, w io.Writer, overlay bool) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{}
	rfi, err := os.Lstat(root)
	if err != nil {
		return err
	}
	rootDev := uint64(rfi.Sys().(*syscall.Stat_t).Dev)
	err = filepath.WalkDir(root, func(full string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, full)
		if err != nil || rel == "." {
			return err
		}
		fi, err := os.Lstat(full)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if !overlay && uint64(st.Dev) != rootDev {
			// A mount point: the directory (or file) it covers, empty,
			// as runc made it; the mount is restored on it.
			hdr := &tar.Header{Name: rel, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: fi.ModTime(), Format: tar.FormatPAX}
			if fi.IsDir() {
				hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, rel+"/", 0o755
				if err := tw.WriteHeader(hdr); err != nil {
					return err
				}
				return fs.SkipDir
			}
			return tw.WriteHeader(hdr)
		}
		hdr := &tar.Header{Name: rel, Mode: int64(fi.Mode().Perm()) | int64(st.Mode&(unix.S_ISUID|unix.S_ISGID|unix.S_ISVTX)),
			Uid: int(st.Uid), Gid: int(st.Gid), ModTime: fi.ModTime(), Format: tar.FormatPAX}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			hdr.Typeflag, hdr.Name = tar.TypeDir, rel+"/"
		case unix.S_IFREG:
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := links[key]; ok && st.Nlink > 1 {
				hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
				return tw.WriteHeader(hdr)
			}
			links[key] = rel
			hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
		case unix.S_IFLNK:
			t, err := os.Readlink(full)
			if err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, t
		case unix.S_IFCHR:
			if st.Rdev == 0 && overlay { // an overlayfs whiteout
				dir, base := filepath.Split(rel)
				return tw.WriteHeader(&tar.Header{Name: dir + whiteoutPrefix + base, Typeflag: tar.TypeReg, Mode: 0o600, ModTime: fi.ModTime(), Format: tar.FormatPAX})
			}
			hdr.Typeflag = tar.TypeChar
			hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		case unix.S_IFBLK:
			hdr.Typeflag = tar.TypeBlock
			hdr.Devmajor, hdr.Devminor = int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))
		case unix.S_IFIFO:
			hdr.Typeflag = tar.TypeFifo
		default:
			return nil
		}
		opaque := false
		xs, err := xattrs.List(full)
		if err != nil {
			return err
		}
		for name, val := range xs {
			if overlay && name == opaqueXattr {
				opaque = string(val) == "y"
				continue
			}
			if overlay && strings.HasPrefix(name, "trusted.overlay.") {
				continue
			}
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords[paxXattr+name] = string(val)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			f, err := os.Open(full)
			if err != nil {
				return err
			}
			n, err := io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", full, err)
			}
			if n != hdr.Size {
				return fmt.Errorf("%s changed size while saved (%d of %d bytes)", full, n, hdr.Size)
			}
		}
		if opaque {
			return tw.WriteHeader(&tar.Header{Name: rel + "/" + opaqueMarker, Typeflag: tar.TypeReg, Mode: 0o600, ModTime: fi.ModTime(), Format: tar.FormatPAX})
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// MaxDiffEntries bounds the entries of a writable layer ApplyDiff accepts.
const MaxDiffEntries = 1 << 20

// ApplyDiff unpacks an OCI layer tar written by WriteDiff into an empty
// overlayfs upper directory: whiteouts become 0:0 character devices,
// opaque markers the opaque xattr. The tar comes from a snapshot in the
// store, so it is checked as outside bytes: every name must be a clean
// relative path whose parents are directories this call made (never a
// symlink), a hard link must name a regular file it wrote, and nothing is
// written outside upper.
func ApplyDiff(r io.Reader, upper string) error {
	if err := applyTree(r, upper, true); err != nil {
		return fmt.Errorf("writable layer: %w", err)
	}
	return nil
}

// applyTree unpacks a tar written by writeTree into empty directory upper,
// with ApplyDiff's checks; with overlay, whiteouts and opaque markers
// become overlayfs's.
func applyTree(r io.Reader, upper string, overlay bool) (err error) {
	tr := tar.NewReader(r)
	pool := newFilePool()
	defer func() {
		if werr := pool.close(); err == nil {
			err = werr
		}
	}()
	made := map[string]byte{"": tar.TypeDir} // what this call created, by clean name
	type dirTime struct {
		path string
		t    time.Time
	}
	var dirs []dirTime
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if n >= MaxDiffEntries {
			return fmt.Errorf("more than %d entries", MaxDiffEntries)
		}
		name, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "" {
			continue // the root itself
		}
		parent, base := path.Split(name)
		parent = strings.TrimSuffix(parent, "/")
		if err := ensureDirs(upper, parent, made); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		dst := filepath.Join(upper, name)
		if overlay && strings.HasPrefix(base, whiteoutPrefix) {
			if base == opaqueMarker {
				if err := unix.Lsetxattr(filepath.Join(upper, parent), opaqueXattr, []byte("y"), 0); err != nil {
					return fmt.Errorf("opaque %s: %w", parent, err)
				}
				continue
			}
			victim := strings.TrimPrefix(base, whiteoutPrefix)
			if victim == "" || victim == "." || victim == ".." || strings.HasPrefix(victim, whiteoutPrefix) {
				return fmt.Errorf("whiteout %q names no entry", hdr.Name)
			}
			vname := path.Join(parent, victim)
			if _, ok := made[vname]; ok {
				return fmt.Errorf("whiteout %q of an entry the layer also holds", hdr.Name)
			}
			if err := unix.Mknod(filepath.Join(upper, vname), unix.S_IFCHR, 0); err != nil {
				return fmt.Errorf("whiteout %s: %w", vname, err)
			}
			made[vname] = tar.TypeChar
			continue
		}
		if prev, ok := made[name]; ok {
			// Only a directory may be named again (its attributes).
			if prev != tar.TypeDir || hdr.Typeflag != tar.TypeDir {
				return fmt.Errorf("%q appears twice", hdr.Name)
			}
		}
		mode := uint32(hdr.Mode) & 0o7777
		switch hdr.Typeflag {
		case tar.TypeDir:
			if _, ok := made[name]; !ok {
				if err := unix.Mkdir(dst, 0o700); err != nil {
					return &os.PathError{Op: "mkdir", Path: dst, Err: err}
				}
			}
			dirs = append(dirs, dirTime{dst, hdr.ModTime})
		case tar.TypeReg:
			if hdr.Size < 0 {
				return fmt.Errorf("%s: negative size", name)
			}
			// WriteDiff writes no sparse entries; a crafted one would make
			// its holes' zeros (any amount) from a few bytes of tar.
			for k := range hdr.PAXRecords {
				if strings.HasPrefix(k, "GNU.sparse.") {
					return fmt.Errorf("%s: sparse entries are not accepted", name)
				}
			}
			if hdr.Size <= pooledFileMax {
				// Small files (a Python program's bytecode caches are
				// thousands) are written by the pool, attributes and all.
				data := make([]byte, hdr.Size)
				if _, err := io.ReadFull(tr, data); err != nil {
					return fmt.Errorf("%s: %w", name, err)
				}
				made[name] = tar.TypeReg
				if err := pool.add(fileJob{dst: dst, name: name, data: data, hdr: hdr, mode: mode}); err != nil {
					return err
				}
				continue
			}
			if err := writeFile(dst, tr, hdr.Size); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		case tar.TypeLink:
			target, err := cleanName(hdr.Linkname)
			if err != nil || made[target] != tar.TypeReg {
				return fmt.Errorf("hard link %q to %q, which is not a file of the layer", hdr.Name, hdr.Linkname)
			}
			if err := pool.wait(); err != nil { // the target may still be on its way
				return err
			}
			if err := unix.Linkat(unix.AT_FDCWD, filepath.Join(upper, target), unix.AT_FDCWD, dst, 0); err != nil {
				return fmt.Errorf("link %s: %w", name, err)
			}
			made[name] = tar.TypeLink
			continue // a second name: the first carries the attributes
		case tar.TypeSymlink:
			if err := unix.Symlink(hdr.Linkname, dst); err != nil {
				return fmt.Errorf("symlink %s: %w", name, err)
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			kind := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
			if err := unix.Mknod(dst, kind|0o600, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))); err != nil {
				return fmt.Errorf("mknod %s: %w", name, err)
			}
		default: // tar.TypeGNUSparse among them
			return fmt.Errorf("%q has unsupported type %q", hdr.Name, hdr.Typeflag)
		}
		made[name] = hdr.Typeflag
		if err := setAttrs(dst, name, hdr, mode); err != nil {
			return err
		}
	}
	if err := pool.wait(); err != nil {
		return err
	}
	// Directories last, deepest first: their children changed them.
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i].path) > len(dirs[j].path) })
	for _, d := range dirs {
		ts := []unix.Timespec{unix.NsecToTimespec(d.t.UnixNano()), unix.NsecToTimespec(d.t.UnixNano())}
		unix.UtimesNanoAt(unix.AT_FDCWD, d.path, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}

// setAttrs gives an entry the owner, extended attributes, mode and
// modification time its header names.
func setAttrs(dst, name string, hdr *tar.Header, mode uint32) error {
	if err := unix.Lchown(dst, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown %s: %w", name, err)
	}
	for k, v := range hdr.PAXRecords {
		if x, ok := strings.CutPrefix(k, paxXattr); ok && !strings.HasPrefix(x, "trusted.overlay.") {
			if err := unix.Lsetxattr(dst, x, []byte(v), 0); err != nil {
				return fmt.Errorf("xattr %s on %s: %w", x, name, err)
			}
		}
	}
	if hdr.Typeflag != tar.TypeSymlink {
		// After chown, which clears set-ID bits.
		if err := unix.Fchmodat(unix.AT_FDCWD, dst, mode, 0); err != nil {
			return fmt.Errorf("chmod %s: %w", name, err)
		}
	}
	if hdr.Typeflag != tar.TypeDir {
		ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
		unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}

// writeFile creates dst (never through a link, never over an entry) with
// n bytes from r.
func writeFile(dst string, r io.Reader, n int64) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = io.CopyN(f, r, n)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// cleanName turns a tar name into a clean relative path, refusing
// absolute paths and any ".." component.
func cleanName(name string) (string, error) {
	n := strings.TrimSuffix(strings.TrimPrefix(name, "./"), "/")
	if n == "" || n == "." {
		return "", nil
	}
	if strings.HasPrefix(n, "/") || strings.ContainsRune(n, 0) {
		return "", fmt.Errorf("entry %q: not a relative path", name)
	}
	for _, part := range strings.Split(n, "/") {
		if part == ".." || part == "" || part == "." {
			return "", fmt.Errorf("entry %q: not a clean path", name)
		}
	}
	return n, nil
}

// ensureDirs makes sure every directory of dir exists as a directory this
// call made (creating missing ones), so nothing is written through a
// symlink or a file.
func ensureDirs(upper, dir string, made map[string]byte) error {
	if dir == "" {
		return nil
	}
	cur := ""
	for _, part := range strings.Split(dir, "/") {
		cur = path.Join(cur, part)
		t, ok := made[cur]
		if ok && t != tar.TypeDir {
			return fmt.Errorf("%s is not a directory of the layer", cur)
		}
		if !ok {
			if err := unix.Mkdir(filepath.Join(upper, cur), 0o755); err != nil {
				return &os.PathError{Op: "mkdir", Path: cur, Err: err}
			}
			made[cur] = tar.TypeDir
		}
	}
	return nil
}

// LargestDirs names the n directories of upper (two levels deep) holding
// the most bytes, with their sizes, for a warning about a large layer.
func LargestDirs(upper string, n int) []string {
	sizes := map[string]int64{}
	filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(upper, filepath.Dir(p))
		parts := strings.SplitN(rel, string(filepath.Separator), 3)
		if len(parts) > 2 {
			parts = parts[:2]
		}
		sizes["/"+strings.TrimPrefix(strings.Join(parts, "/"), ".")] += fi.Size()
		return nil
	})
	dirs := make([]string, 0, len(sizes))
	for d := range sizes {
		dirs = append(dirs, d)
	}
	sort.Slice(dirs, func(i, j int) bool { return sizes[dirs[i]] > sizes[dirs[j]] })
	if len(dirs) > n {
		dirs = dirs[:n]
	}
	out := make([]string, len(dirs))
	for i, d := range dirs {
		out[i] = fmt.Sprintf("%s (%d bytes)", d, sizes[d])
	}
	return out
}
