package fusefs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/internal/mountinfo"
)

// prepareMountpoint detaches dead gpuwarm mounts at dir (their daemon was
// killed, so every request fails with ENOTCONN) and refuses to stack on a
// live one.
func prepareMountpoint(dir string, nonEmpty bool, log *slog.Logger) error {
	if dir == "" {
		return errors.New("the mount point is empty: name a directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := detachStale(abs, log); err != nil {
		return err
	}
	fi, err := os.Lstat(abs)
	if err != nil {
		return fmt.Errorf("mount point %s: %w (create the directory first)", abs, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mount point %s is not a directory (it is a %s): mount on an empty directory", abs, fi.Mode().Type())
	}
	if !nonEmpty {
		f, err := os.Open(abs)
		if err != nil {
			return fmt.Errorf("mount point %s: %w", abs, err)
		}
		names, _ := f.Readdirnames(1)
		f.Close()
		if len(names) > 0 {
			return fmt.Errorf("mount point %s is not empty (it holds %s): a mount would hide its contents; use an empty directory, or --nonempty to mount over them", abs, names[0])
		}
	}
	return nil
}

// statfsAnswer bounds how long a mount that is already there may take to
// answer: a stopped or hung daemon never does.
const statfsAnswer = 5 * time.Second

// detachStale detaches a gpuwarm mount at abs whose daemon is gone, and
// refuses one that is alive or does not answer.
func detachStale(abs string, log *slog.Logger) error {
	for i := 0; i < 16; i++ {
		if !mountedAt(abs) {
			return nil
		}
		errc := make(chan error, 1)
		go func() {
			var st syscall.Statfs_t
			errc <- syscall.Statfs(abs, &st)
		}()
		var err error
		select {
		case err = <-errc:
		case <-time.After(statfsAnswer):
			return fmt.Errorf("the gpuwarm mount at %s does not answer (its daemon is stopped or hung): send it SIGCONT, or detach it with gpuwarm umount --lazy %s", abs, abs)
		}
		if err == nil {
			return fmt.Errorf("a gpuwarm mount is already serving %s; run gpuwarm umount %s first", abs, abs)
		}
		if !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
			return fmt.Errorf("mount point %s: %w", abs, err)
		}
		log.Warn("detaching a stale mount left by a dead daemon", "dir", abs)
		if err := syscall.Unmount(abs, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("detach stale mount at %s: %w", abs, err)
		}
	}
	return fmt.Errorf("mount point %s: too many stale mounts", abs)
}

// mountedAt reports whether a gpuwarm FUSE filesystem is mounted at dir.
func mountedAt(dir string) bool {
	_, ok := gpuwarmMount(dir)
	return ok
}

// gpuwarmMount returns the gpuwarm FUSE filesystem mounted at dir, read
// from mountinfo without a request to the mount.
func gpuwarmMount(dir string) (mountinfo.Mount, bool) {
	ms, err := mountinfo.Read("/proc/self/mountinfo")
	if err != nil {
		return mountinfo.Mount{}, false
	}
	for _, m := range ms {
		if m.Point == dir && m.FSType == "fuse.gpuwarm" {
			return m, true
		}
	}
	return mountinfo.Mount{}, false
}

// Unmount unmounts dir; a running daemon sees it and exits. A mount busy
// for a moment (a file being closed; go-fuse opens and closes a file of its
// own just after mounting) is tried again for about 0.6 s before it is
// reported busy.
func Unmount(dir string) error {
	err := syscall.Unmount(dir, 0)
	for wait := 10 * time.Millisecond; errors.Is(err, syscall.EBUSY) && wait <= 320*time.Millisecond; wait *= 2 {
		time.Sleep(wait)
		err = syscall.Unmount(dir, 0)
	}
	if err != nil {
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

// raiseReadahead sets read_ahead_kb of the mount's backing device info. The
// kernel caps a FUSE mount's readahead at 128 KiB at mount time; the sysfs
// knob is the only way to raise it, and requests still stay within max_pages
// (1 MiB).
func raiseReadahead(dir string, bytes int) error {
	if bytes <= 0 {
		bytes = 4 << 20
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return err
	}
	major, minor := (st.Dev>>8)&0xfff|(st.Dev>>32)&^0xfff, st.Dev&0xff|(st.Dev>>12)&^0xff
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", major, minor)
	return os.WriteFile(p, []byte(fmt.Sprint(bytes>>10)), 0)
}
