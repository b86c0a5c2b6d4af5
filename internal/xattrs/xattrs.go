// Package xattrs reads a file's extended attributes without following a
// symlink.
package xattrs

import (
	"errors"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// List returns path's extended attributes by name (nil on a filesystem
// without them). An attribute removed while it is read is left out.
func List(path string) (map[string][]byte, error) {
	size, err := unix.Llistxattr(path, nil)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, &os.PathError{Op: "listxattr", Path: path, Err: err}
	}
	if size == 0 {
		return nil, nil
	}
	buf := make([]byte, size)
	if size, err = unix.Llistxattr(path, buf); err != nil {
		return nil, &os.PathError{Op: "listxattr", Path: path, Err: err}
	}
	out := map[string][]byte{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:size]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		vsize, err := unix.Lgetxattr(path, name, nil)
		if err != nil {
			if errors.Is(err, syscall.ENODATA) {
				continue
			}
			return nil, &os.PathError{Op: "getxattr " + name, Path: path, Err: err}
		}
		val := make([]byte, vsize)
		if vsize > 0 {
			if vsize, err = unix.Lgetxattr(path, name, val); err != nil {
				if errors.Is(err, syscall.ENODATA) {
					continue
				}
				return nil, &os.PathError{Op: "getxattr " + name, Path: path, Err: err}
			}
		}
		out[name] = val[:vsize]
	}
	return out, nil
}
