package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/gpuwarm/gpuwarm/gpu"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/restore"
	"github.com/gpuwarm/gpuwarm/restore/container"
)

// prepareContainer makes the new container a container snapshot restores
// into: its writable layer from the snapshot, over the image it ran on,
// with the snapshot's runtime config under a new name and cgroup; and
// points opt's CRIU restore at runc. The caller removes it if the restore
// fails.
func (o *restoreOptions) prepareContainer(ctx context.Context, cr *restore.CRIU, snap string, ix *manifest.Index, opt *restore.Options, inventory func() (*gpu.Inventory, error)) (*container.Container, *container.Runc, error) {
	steps := restore.NewSteps(o.log, "container preparation")
	imgDir := filepath.Join(o.mount, snap)
	s, err := container.SnapshotSpec(imgDir)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", snap, err)
	}
	imageID := ix.Annotations[container.AnnImageID]
	lower := filepath.Join(o.mount, manifest.RootfsDir, imageID) // as run made it (see imageOnMount)
	if fi, err := os.Stat(lower); err != nil || !fi.IsDir() {
		return nil, nil, fmt.Errorf("%s: the image it ran on (%s) is not on the mount: %v", snap, imageID, err)
	}
	// The GPUs: the ones the original container had (by index), or those
	// --gpus names; this worker's device nodes and driver libraries.
	gpus := o.gpus
	if gpus == "" {
		gpus = s.Annotations[annGPUs]
	} else if s.Annotations[annGPUs] == "" {
		return nil, nil, usagef("--gpus: container snapshot %s was taken without GPUs", snap)
	}
	steps.Done("spec")
	gpuEdit, gpuList, err := containerGPUs(gpus, inventory)
	if err != nil {
		return nil, nil, err
	}
	steps.Done("GPUs")
	rc, err := o.ctr.runcWith(ctx, cr)
	if err != nil {
		return nil, nil, err
	}
	steps.Done("runc")
	rec := container.Record{Image: ix.Annotations[container.AnnImage], ImageID: imageID, Snapshot: snap,
		SnapshotID: ix.ID.String(), Mount: o.mount, GPUs: gpuList, Created: time.Now().UTC()}
	var c *container.Container
	names := []string{o.name}
	if o.name == "" {
		// SNAPSHOT-1, SNAPSHOT-2, ...: the first free one (Prepare's
		// directory creation settles races between concurrent restores).
		names = nil
		for i := 1; i <= 1000; i++ {
			names = append(names, snap+"-"+strconv.Itoa(i))
		}
	}
	for _, n := range names {
		rec.Name = n
		rec.Log = filepath.Join("/var/log/gpuwarm", n+".log")
		c, err = container.Prepare(o.ctr.dir, rec, lower, container.LoadDiff(imgDir))
		if err == nil || !errors.Is(err, container.ErrExists) || o.name != "" {
			break
		}
	}
	if err != nil {
		return nil, nil, err
	}
	steps.Done("root filesystem")
	fail := func(err error) (*container.Container, *container.Runc, error) {
		c.Remove(context.WithoutCancel(ctx), rc)
		return nil, nil, err
	}
	if container.SetNetNS(s, container.NetNSPath(c.Name)) {
		// A network of its own, as the original had: a new namespace,
		// loopback up, which CRIU joins and fills with the sockets.
		c.OwnNet = true
		if err := c.Save(); err != nil {
			return fail(err)
		}
		if err := container.NewNetNS(container.NetNSPath(c.Name)); err != nil {
			return fail(err)
		}
	}
	steps.Done("network")
	external, err := c.MountTmpfs(imgDir)
	if err != nil {
		return fail(err)
	}
	steps.Done("tmpfs")
	// After OwnNet is known: it decides the network lock.
	conf, err := c.CRIUConfig(o.lazy || o.prefill, external...)
	if err != nil {
		return fail(err)
	}
	s.Root.Path = c.Rootfs()
	s.Linux.CgroupsPath = "/gpuwarm/" + c.Name
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations["org.criu.config"] = conf
	if gpuEdit != nil {
		if err := gpuEdit(s); err != nil {
			return fail(err)
		}
	}
	if err := c.WriteSpec(s); err != nil {
		return fail(err)
	}
	steps.Done("config")
	opt.CRIURestore = func(ctx context.Context, imgDir, workDir string, lazy, leaveStopped bool) (int, error) {
		stdout, stderr, err := logPipes(c.Log)
		if err != nil {
			return 0, err
		}
		steps.Done("log writer")
		defer stdout.Close()
		defer stderr.Close()
		return c.Restore(ctx, rc, imgDir, workDir, lazy, container.Stdio{Stdout: stdout, Stderr: stderr})
	}
	return c, rc, nil
}
