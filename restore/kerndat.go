package restore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// CRIU probes the kernel at every start ("kerndat": about 40 ms of a restore
// here) unless it finds its cache, /run/criu.kdat. It only writes that cache
// when /run is a tmpfs (so that a reboot into another kernel drops it), and
// a leftover criu.kdat.tmp stops it writing at all. On workers where /run is
// a disk, WarmKerndat has CRIU compute the cache on a private tmpfs and
// installs it, tagged with the boot it belongs to; a later boot finds the
// tag stale and computes it again.
const (
	kdatFile   = "/run/criu.kdat"
	kdatBoot   = "/run/gpuwarm-criu.kdat.boot"
	kdatFailed = "/run/gpuwarm-criu.kdat.failed" // this boot could not warm it: do not retry
)

const tmpfsMagic = 0x01021994

// WarmKerndat makes sure CRIU's kernel-feature cache exists for this boot.
// It is cheap when it does; errors only cost speed, so callers may log them.
func WarmKerndat(ctx context.Context, c *CRIU) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs("/run", &st); err != nil {
		return nil
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return nil
	}
	if st.Type == tmpfsMagic {
		// CRIU keeps the cache itself, unless a crashed run left its
		// temporary file behind.
		if _, err := os.Stat(kdatFile); err != nil {
			os.Remove(kdatFile + ".tmp")
		}
		return nil
	}
	if tag, err := os.ReadFile(kdatBoot); err == nil && bytes.Equal(tag, boot) {
		if _, err := os.Stat(kdatFile); err == nil {
			return nil
		}
	}
	if tag, err := os.ReadFile(kdatFailed); err == nil && bytes.Equal(tag, boot) {
		return nil // tried and failed this boot (said so then): CRIU probes the kernel itself
	}
	os.Remove(kdatFile)
	os.Remove(kdatFile + ".tmp")
	// In a private mount namespace, /run is a fresh tmpfs: criu check fills
	// it with the cache, which we read back out.
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c",
		`mount --make-rprivate / && mount -t tmpfs gpuwarm-kdat /run && "$0" check >/dev/null 2>&1; cat /run/criu.kdat`, c.Path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.Env = append(os.Environ(), "CRIU_FAULT=130")
	out, err := cmd.Output()
	if err != nil || len(out) < 64 {
		os.WriteFile(kdatFailed, boot, 0o644)
		return fmt.Errorf("warming CRIU's kernel-feature cache failed (%v, %d bytes); CRIU will probe the kernel at every start (~40 ms), not retrying until reboot", err, len(out))
	}
	tmp := kdatFile + ".gpuwarm"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, kdatFile); err != nil {
		return err
	}
	return os.WriteFile(kdatBoot, boot, 0o644)
}
