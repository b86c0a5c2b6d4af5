package main

import (
	"context"

	"github.com/gpuwarm/gpuwarm/restore"
)

// gpuSnapshotHooks and gpuRestoreHooks connect the GPU layer; filled in by
// the gpu package's integration.
func gpuSnapshotHooks(ctx context.Context, g *globals, opt *restore.SnapshotOptions) error {
	return nil
}

func gpuRestoreHooks(ctx context.Context, g *globals, opt *restore.Options) {}
