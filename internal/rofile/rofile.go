// Package rofile opens regular files for reading with as few system calls
// as the kernel allows.
//
// os.Open on Linux asks Go's network poller to watch every file it opens:
// for a regular file that is an openat, an epoll_ctl the kernel refuses
// and four fcntl calls to set and clear O_NONBLOCK, six system calls where
// one does. On a worker that is a paravirtualized guest each system call
// is a trip through the hypervisor, and the mount daemon opens a disk-tier
// file on every passthrough open and every disk-tier read: measured on the
// benchmark VM, six of a passthrough FUSE open's eighteen daemon system
// calls were these. Regular files never block in a way the poller could
// help with, so nothing is lost.
package rofile

import (
	"os"

	"golang.org/x/sys/unix"
)

// Open opens path read-only (close-on-exec). The file's reads and writes
// block their thread, as for any regular file; its deadlines are not
// supported.
func Open(path string) (*os.File, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		return os.NewFile(uintptr(fd), path), nil
	}
}
