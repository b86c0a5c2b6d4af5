package fusefs

import (
	"errors"
	"log/slog"
	"os"
	"syscall"
)

// cleanStale detaches a dead FUSE mount at dir (its daemon was killed, so
// every access fails with ENOTCONN), so that a new daemon can mount there.
func cleanStale(dir string, log *slog.Logger) {
	_, err := os.Stat(dir)
	if errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED) {
		log.Warn("detaching a stale mount left by a dead daemon", "dir", dir)
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			log.Warn("detach failed", "dir", dir, "err", err)
		}
	}
}

// Unmount unmounts dir; a running daemon sees it and exits.
func Unmount(dir string) error {
	if err := syscall.Unmount(dir, 0); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return errors.New("unmount " + dir + ": busy (a process still has files open there); close them or use --lazy")
		}
		if errors.Is(err, syscall.EINVAL) {
			return errors.New("unmount " + dir + ": not a mount point")
		}
		return &os.PathError{Op: "unmount", Path: dir, Err: err}
	}
	return nil
}
