package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/gpuwarm/gpuwarm/manifest/gc"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/restore"
	"github.com/gpuwarm/gpuwarm/restore/container"
)

// bigLayer is the writable layer size from which a snapshot warns (every
// restore unpacks the layer: about 0.4 GB/s).
const bigLayer = 16 << 20

// snapshotContainer checkpoints container c through runc: its memory
// through gpuwarm's page server into the store (CUDA state first moved to
// host memory), its CRIU images, runtime config and writable layer packed
// beside it, and the image it runs on recorded.
func (o *snapshotOptions) snapshotContainer(ctx context.Context, c *container.Container) error {
	rc, cr, err := o.ctr.runc(ctx, true)
	if err != nil {
		return err
	}
	state, err := rc.State(ctx, c.Name)
	if err != nil {
		return err
	}
	if state.Status != "running" {
		return fmt.Errorf("container %s is %s, not running: nothing to snapshot", c.Name, state.Status)
	}
	st, done, err := o.store.createLocked(ctx)
	if err != nil {
		return err
	}
	defer done()
	opt := restore.SnapshotOptions{PID: state.PID, LeaveRunning: o.leave, Store: st, Logger: o.log,
		Annotations: map[string]string{
			container.AnnImage: c.Image, container.AnnImageID: c.ImageID, container.AnnName: c.Name,
			// The snapshot needs its image: gc keeps it while the snapshot is tagged.
			gc.DependsAnnotation: c.ImageID,
		}}
	restore.GPUSnapshotHooks(&opt, o.gpuLock, o.log)
	wrep := restore.WeightsSnapshotHooks(&opt, o.log)
	var layer int64
	opt.Dump = func(ctx context.Context, imgDir, workDir, pageServer string) error {
		if err := c.SaveSpec(imgDir); err != nil {
			return err
		}
		if err := c.Checkpoint(ctx, rc, state.PID, imgDir, workDir, pageServer, o.leave); err != nil {
			return err
		}
		if fi, err := os.Stat(filepath.Join(imgDir, container.DiffFile)); err == nil {
			layer = fi.Size()
		}
		if layer > bigLayer {
			o.log.Warn("the container's writable layer is large: every restore unpacks it before the container runs",
				"bytes", layer, "largest", container.LargestDirs(c.Upper(), 3))
		}
		return nil
	}
	bar := o.progress(&opt)
	res, err := restore.Snapshot(ctx, cr, opt)
	bar.done()
	if err != nil {
		return err
	}
	if err := store.SetTag(ctx, st, o.tag, res.Image); err != nil {
		return err
	}
	r := snapshotResult{Tag: o.tag, Image: res.Image.String(), PID: state.PID, Container: c.Name, PageBytes: res.PageBytes,
		NewBytes: res.NewBytes, DumpSeconds: res.DumpSeconds, Seconds: res.Total.Seconds(), LayerBytes: layer}
	if wrep.Meta != nil {
		r.WeightsBytes, r.WeightsTensors = wrep.Meta.Bytes, len(wrep.Meta.Refs)
	}
	if o.json {
		return printJSON(o.out, r)
	}
	fmt.Fprintf(o.out, "snapshot of container %s stored as %s (image %s)\n", c.Name, o.tag, res.Image)
	o.printSizes(r, wrep)
	if !o.leave {
		fmt.Fprintf(o.out, "  the container is stopped; gpuwarm rm %s removes it\n", c.Name)
	}
	return nil
}
