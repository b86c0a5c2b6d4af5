package container

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/gpuwarm/gpuwarm/internal/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// A container's tmpfs mounts (/dev, /dev/shm, and the empty read-only
// ones runc masks /proc and /sys directories with) are saved by gpuwarm,
// not by CRIU. CRIU archives a tmpfs with tar and gzip at the checkpoint
// and runs both again for every mount at every restore, before the
// container runs: four mounts cost a restore about 60 ms of process
// starts on a 2-CPU worker. Instead, while the container is paused,
// gpuwarm writes each tmpfs mount's files into the snapshot (a tar per
// mount, beside the writable layer) and names the mount external to
// CRIU; a restore fills a new tmpfs with the same options on the worker
// (a few files: well under a millisecond) and CRIU bind-mounts it where
// the old one was, with the container's mount flags.

// TmpfsFile lists, in a container snapshot, the tmpfs mounts saved by
// gpuwarm.
const TmpfsFile = "tmpfs.json"

// maxTmpfs bounds the tmpfs mounts a snapshot may list (runc's spec has
// five).
const maxTmpfs = 64

// TmpfsMount is one saved tmpfs mount.
type TmpfsMount struct {
	Mountpoint string `json:"mountpoint"` // in the container
	Options    string `json:"options"`    // the filesystem's: size=, mode=, ...
	ReadOnly   bool   `json:"read_only"`
	File       string `json:"file"` // its files: a tar in the snapshot's images
}

// tmpfsKey names saved mount i to CRIU (external mnt[...]).
func tmpfsKey(i int) string { return "gpuwarm-tmpfs-" + strconv.Itoa(i) }

// tmpfsOption is a tmpfs option a saved mount may carry (the snapshot
// comes from the store: nothing else is passed to mount).
var tmpfsOption = regexp.MustCompile(`^(size=[0-9]+[kmgKMG%]?|nr_blocks=[0-9]+[kmgKMG]?|nr_inodes=[0-9]+[kmgKMG]?|mode=[0-7]{1,4}|uid=[0-9]+|gid=[0-9]+|huge=(never|always|within_size|advise)|inode64|inode32|noswap)$`)

// runtimeTmpfs lists the places where runc mounts a tmpfs of the
// container's own by the runtime config s: its tmpfs mounts and masked
// directories. Anything else that is a tmpfs (a volume bound from the
// host's /dev/shm, say) is not the container's to copy.
func runtimeTmpfs(s *specs.Spec) map[string]bool {
	own := map[string]bool{}
	for _, m := range s.Mounts {
		if m.Type == "tmpfs" {
			own[filepath.Clean(m.Destination)] = true
		}
	}
	if s.Linux != nil {
		for _, p := range s.Linux.MaskedPaths {
			own[filepath.Clean(p)] = true
		}
	}
	return own
}

// SaveTmpfs writes the tmpfs mounts the runtime made for the container
// whose init is pid (paused: nothing changes them meanwhile) into imgDir,
// and returns the lines that make them external to CRIU's dump. own names
// the mount points runc made tmpfs mounts at (runtimeTmpfs). A mount
// gpuwarm cannot save exactly (a part of a tmpfs mounted alone, one
// mounted whole at two places, an odd path) is left to CRIU.
func SaveTmpfs(pid int, imgDir string, own map[string]bool) ([]string, error) {
	ents, err := mountinfo.Read(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil, err
	}
	// Mounts of a filesystem's root, by device: a tmpfs mounted whole at
	// two places is left to CRIU. Parts of a saved one bound elsewhere
	// (runc masks files with /dev/null) are binds CRIU makes from it.
	devs := map[string]int{}
	for _, e := range ents {
		if e.Root == "/" {
			devs[e.Dev]++
		}
	}
	var saved []TmpfsMount
	var lines []string
	for _, e := range ents {
		// own's paths are clean and absolute; CRIU's configuration file
		// takes a mount point without blanks, brackets or colons.
		if e.FSType != "tmpfs" || !own[e.Point] || e.Point == "/" || e.Root != "/" || devs[e.Dev] > 1 ||
			strings.ContainsAny(e.Point, " \t\n[]:") {
			continue
		}
		if len(saved) == maxTmpfs {
			break
		}
		var opts []string
		for _, o := range strings.Split(e.Super, ",") {
			if tmpfsOption.MatchString(o) {
				opts = append(opts, o)
			}
		}
		m := TmpfsMount{Mountpoint: e.Point, Options: strings.Join(opts, ","), ReadOnly: e.ReadOnly(),
			File: fmt.Sprintf("tmpfs-%d.tar", len(saved))}
		f, err := os.Create(filepath.Join(imgDir, m.File))
		if err != nil {
			return nil, err
		}
		err = writeTree(fmt.Sprintf("/proc/%d/root%s", pid, e.Point), f, false)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("tmpfs %s of the container: %w", e.Point, err)
		}
		lines = append(lines, fmt.Sprintf("external mnt[%s]:%s", m.Mountpoint, tmpfsKey(len(saved))))
		saved = append(saved, m)
	}
	b, err := json.Marshal(saved)
	if err != nil {
		return nil, err
	}
	return lines, os.WriteFile(filepath.Join(imgDir, TmpfsFile), b, 0o600)
}

func (c *Container) tmpfsDir() string { return filepath.Join(c.Dir, "tmpfs") }

// MountTmpfs makes the tmpfs mounts the snapshot at imgDir saved, filled
// with their files, under the container's directory, and returns the
// lines that give them to CRIU's restore. A snapshot without saved mounts
// (CRIU kept them) needs none.
func (c *Container) MountTmpfs(imgDir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(imgDir, TmpfsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var saved []TmpfsMount
	if err := json.Unmarshal(b, &saved); err != nil {
		return nil, fmt.Errorf("%s: %w", TmpfsFile, err)
	}
	if len(saved) > maxTmpfs {
		return nil, fmt.Errorf("%s: %d mounts, more than %d", TmpfsFile, len(saved), maxTmpfs)
	}
	var lines []string
	for i, m := range saved {
		if err := m.check(i); err != nil {
			return nil, fmt.Errorf("%s: %w", TmpfsFile, err)
		}
		dir := filepath.Join(c.tmpfsDir(), strconv.Itoa(i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		if err := fillTmpfs(dir, filepath.Join(imgDir, m.File), m); err != nil {
			return nil, fmt.Errorf("container %s: tmpfs %s: %w", c.Name, m.Mountpoint, err)
		}
		lines = append(lines, fmt.Sprintf("external mnt[%s]:%s", tmpfsKey(i), dir))
	}
	return lines, nil
}

// check refuses a saved mount gpuwarm would not have written.
func (m TmpfsMount) check(i int) error {
	if !filepath.IsAbs(m.Mountpoint) || filepath.Clean(m.Mountpoint) != m.Mountpoint || m.Mountpoint == "/" {
		return fmt.Errorf("mount %d: mountpoint %q is not a clean absolute path", i, m.Mountpoint)
	}
	if m.File != fmt.Sprintf("tmpfs-%d.tar", i) {
		return fmt.Errorf("mount %d: file %q is not tmpfs-%d.tar", i, m.File, i)
	}
	if m.Options != "" {
		for _, o := range strings.Split(m.Options, ",") {
			if !tmpfsOption.MatchString(o) {
				return fmt.Errorf("mount %d: option %q is not a tmpfs size, mode or owner", i, o)
			}
		}
	}
	return nil
}

// fillTmpfs mounts a tmpfs at dir (private: nothing propagates to or
// from the host's mounts) and unpacks the saved files into it; a
// read-only mount is made read-only after. The worker-side mount has
// nosuid, nodev and noexec; CRIU's bind of it gets the container's own
// flags.
func fillTmpfs(dir, tarPath string, m TmpfsMount) error {
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("tmpfs", dir, "tmpfs", flags, m.Options); err != nil {
		return fmt.Errorf("mount: %w", err)
	}
	if err := unix.Mount("", dir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make private: %w", err)
	}
	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	err = applyTree(bufio.NewReaderSize(f, 256<<10), dir, false)
	f.Close()
	if err != nil {
		return err
	}
	if m.ReadOnly {
		if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, ""); err != nil {
			return fmt.Errorf("remount read-only: %w", err)
		}
	}
	return nil
}

// unmountTmpfs detaches the container's worker-side tmpfs mounts.
func (c *Container) unmountTmpfs() error {
	ents, err := os.ReadDir(c.tmpfsDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		p := filepath.Join(c.tmpfsDir(), e.Name())
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
