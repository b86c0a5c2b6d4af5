package pack

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// srcFile is a regular file the walk found: where it is and what it was.
// Files are opened relative to the packed tree's root without following
// any symlink, and checked against what the walk saw, so that a file
// swapped for a symlink (to a file the packing user may read and the
// tree's owner may not) or rewritten after the walk is never packed: the
// walk lstat()ed one thing, and an open by path could read another.
type srcFile struct {
	rel  string // slash-separated, relative to the root
	full string // for messages
	st   unix.Stat_t
}

// changed says how f's open descriptor differs from what the walk saw, or
// "" if it does not (same file, type, size, modification and change times).
func (f *srcFile) changed(fd int) (string, error) {
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil {
		return "", &os.PathError{Op: "fstat", Path: f.full, Err: err}
	}
	switch {
	case now.Dev != f.st.Dev || now.Ino != f.st.Ino:
		return "replaced by another file", nil
	case now.Mode&unix.S_IFMT != unix.S_IFREG:
		return "no longer a regular file", nil
	case now.Size != f.st.Size:
		return fmt.Sprintf("size %d, was %d", now.Size, f.st.Size), nil
	case now.Mtim != f.st.Mtim || now.Ctim != f.st.Ctim:
		return "modified", nil
	}
	return "", nil
}

// errChanged is returned (wrapped) for a file that changed while packed.
var errChanged = errors.New("changed while being packed")

// openBeneath opens rel below the directory root refers to, following no
// symlink at any component (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS;
// on kernels before 5.6, one openat(O_NOFOLLOW) per component).
func openBeneath(root int, rel string, flags int) (int, error) {
	how := unix.OpenHow{
		Flags:   uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	}
	for {
		fd, err := unix.Openat2(root, rel, &how)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue // EAGAIN: a rename raced the lookup
		}
		if err != unix.ENOSYS {
			return fd, err
		}
		break
	}
	dir := root
	parts := strings.Split(rel, "/")
	for i, p := range parts {
		if p == "" || p == "." || p == ".." {
			if dir != root {
				unix.Close(dir)
			}
			return -1, unix.EXDEV
		}
		fl := unix.O_NOFOLLOW | unix.O_CLOEXEC
		if i < len(parts)-1 {
			fl |= unix.O_DIRECTORY | unix.O_RDONLY
		} else {
			fl |= flags
		}
		fd, err := unix.Openat(dir, p, fl, 0)
		if dir != root {
			unix.Close(dir)
		}
		if err != nil {
			return -1, err
		}
		dir = fd
	}
	return dir, nil
}

// openSource opens f for reading (with O_DIRECT if direct) and checks it is
// the file the walk saw.
func openSource(root int, f *srcFile, direct bool) (int, error) {
	flags := unix.O_RDONLY
	if direct {
		flags |= unix.O_DIRECT
	}
	fd, err := openBeneath(root, f.rel, flags)
	if err == unix.ELOOP || err == unix.EXDEV {
		return -1, fmt.Errorf("%s: %w (a symlink was swapped into the tree: not followed)", f.full, errChanged)
	}
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: f.full, Err: err}
	}
	if how, err := f.changed(fd); err != nil || how != "" {
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		return -1, fmt.Errorf("%s: %w (%s)", f.full, errChanged, how)
	}
	return fd, nil
}

// openRoot opens the tree's root directory.
func openRoot(root string) (int, error) {
	fd, err := unix.Open(filepath.Clean(root), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: root, Err: err}
	}
	return fd, nil
}
