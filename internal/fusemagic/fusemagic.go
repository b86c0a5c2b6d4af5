// Package fusemagic tells whether a path is on a FUSE filesystem, by the
// filesystem's magic number, for the callers that must not import the
// mount's own package (restore checks a mount before using it; the tests
// and benchmarks wait for a daemon's mount to appear).
package fusemagic

import "syscall"

// Super is the f_type statfs(2) reports for FUSE filesystems
// (FUSE_SUPER_MAGIC in linux/magic.h).
const Super = 0x65735546

// IsFUSE reports whether path is on a FUSE filesystem.
func IsFUSE(path string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(path, &st) == nil && st.Type == Super
}
