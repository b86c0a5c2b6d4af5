package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/restore"
	"github.com/gpuwarm/gpuwarm/restore/container"
)

// containerFlags locate this worker's containers (run --image, snapshot
// --name, restore of a container snapshot, ps, stop, rm).
type containerFlags struct {
	dir, runcRoot string
}

func (c *containerFlags) register(fs *flagSet) {
	fs.StringVar(&c.dir, "containers", container.DefaultDir, "`DIR` holding this worker's containers")
	fs.env("containers", "GPUWARM_CONTAINERS")
	fs.StringVar(&c.runcRoot, "runc-root", container.DefaultRuncRoot, "runc's state `DIR` for gpuwarm's containers")
	fs.env("runc-root", "GPUWARM_RUNC_ROOT")
}

// runc finds runc, and CRIU when the command checkpoints or restores.
func (c *containerFlags) runc(ctx context.Context, withCRIU bool) (*container.Runc, *restore.CRIU, error) {
	var cr *restore.CRIU
	if withCRIU {
		var err error
		if cr, err = restore.FindCRIU(ctx); err != nil {
			return nil, nil, err
		}
	}
	rc, err := c.runcWith(ctx, cr)
	return rc, cr, err
}

// runcWith finds runc for a command that found CRIU already (or needs none).
func (c *containerFlags) runcWith(ctx context.Context, cr *restore.CRIU) (*container.Runc, error) {
	criuPath := ""
	if cr != nil {
		criuPath = cr.Path
	}
	return container.FindRunc(ctx, c.runcRoot, criuPath)
}

// imageOnMount resolves a tag (or image ID) on the mount to its image ID
// and the stable path of its root there (MOUNT/.rootfs/ID), which a
// container's overlay uses so that moving the tag later changes nothing.
func imageOnMount(mnt, name string) (digest.ID, string, error) {
	if err := restore.CheckMount(mnt); err != nil {
		return digest.Zero, "", err
	}
	buf := make([]byte, 128)
	n, err := syscall.Getxattr(filepath.Join(mnt, name), manifest.ImageXattr, buf)
	if err != nil {
		return digest.Zero, "", fmt.Errorf("%s is not an image on the mount at %s (gpuwarm ls lists tags): %w", name, mnt, err)
	}
	id, err := digest.Parse(string(buf[:n]))
	if err != nil {
		return digest.Zero, "", fmt.Errorf("%s: image ID: %w", name, err)
	}
	// The lower layer: the image under the mount's RootfsDir, never served
	// by passthrough, which CRIU could not follow through the overlay.
	return id, filepath.Join(mnt, manifest.RootfsDir, id.String()), nil
}

// The log writer: a container's stdout and stderr are pipes (runc hands
// pipes, not files, to a restored container, and a file path on the host
// would not exist inside it), drained into the container's log by two
// cat processes that live as long as the container writes, each
// appending (O_APPEND: a write lands whole). They ignore the terminal's
// and a service stop's signals (ignored dispositions survive exec). Not
// this program: it would hold about 20 MB of memory per container for the
// container's life (two cats: 3.5 MB), and its start costs about 20 ms of
// CPU beside the restore's runc and CRIU.
// (An asynchronous command's standard input is /dev/null unless
// redirected: the background cat reads descriptor 3, stderr.)
const logScript = `trap '' INT TERM HUP; cat >>"$1" <&3 & exec cat >>"$1" 3<&-`

// logPipes makes the stdout and stderr pipes of a container whose output
// goes to path, with their writer running; the caller hands the returned
// files to runc and closes them after.
func logPipes(path string) (stdout, stderr *os.File, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, nil, err
	}
	or, ow, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	er, ew, err := os.Pipe()
	if err != nil {
		or.Close()
		ow.Close()
		return nil, nil, err
	}
	cmd := exec.Command("/bin/sh", "-c", logScript, "gpuwarm-log", path)
	cmd.Stdin = or
	cmd.ExtraFiles = []*os.File{er}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	or.Close()
	er.Close()
	if err != nil {
		ow.Close()
		ew.Close()
		return nil, nil, fmt.Errorf("start the log writer: %w", err)
	}
	cmd.Process.Release()
	return ow, ew, nil
}
