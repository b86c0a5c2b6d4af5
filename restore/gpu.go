package restore

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/gpuwarm/gpuwarm/gpu"
)

// GPUSnapshotHooks makes a snapshot lock and checkpoint the tree's CUDA
// processes before CRIU dumps it, and records what it checkpointed.
func GPUSnapshotHooks(opt *SnapshotOptions, lockTimeout time.Duration, log *slog.Logger) *gpu.Checkpointer {
	if log == nil {
		log = slog.Default()
	}
	cp := &gpu.Checkpointer{LockTimeout: lockTimeout}
	pid, leave := opt.PID, opt.LeaveRunning
	// Snapshot takes its options by value: share the map, not the field.
	if opt.Annotations == nil {
		opt.Annotations = map[string]string{}
	}
	ann := opt.Annotations
	opt.BeforeDump = func(ctx context.Context) error {
		if err := cp.Before(ctx, pid); err != nil {
			return err
		}
		if m := cp.Meta(); m != nil {
			ann[gpu.MetaAnnotation] = m.Annotation()
			log.Info("GPU state checkpointed into host memory", "processes", m.Processes,
				"gpu_bytes", m.MemoryBytes, "lock", cp.LockTime, "checkpoint", cp.CheckpointTime)
		}
		return nil
	}
	opt.AfterDump = func(ctx context.Context, dumpErr error) error { return cp.After(ctx, dumpErr, leave) }
	return cp
}

// GPURestoreReport says what the GPU phase of a restore did.
type GPURestoreReport struct {
	Meta      *gpu.Meta
	Placement *gpu.Placement // where the state went; Placement.Pairs nil when nothing moved
	Processes []int
	Duration  time.Duration
}

// GBps is the GPU restore's throughput.
func (r *GPURestoreReport) GBps() float64 {
	if r.Meta == nil || r.Duration == 0 {
		return 0
	}
	return float64(r.Meta.MemoryBytes) / 1e9 / r.Duration.Seconds()
}

// GPURestoreHooks refuse an incompatible worker before anything starts and put
// the GPU state back after CRIU (a failure there kills the restored tree),
// onto the default GPUs (see gpu.Place).
func GPURestoreHooks(opt *Options, log *slog.Logger) *GPURestoreReport {
	return GPURestoreHooksOn(opt, log, nil, nil)
}

// GPURestoreHooksOn is GPURestoreHooks onto the GPUs named in want (indices or
// UUIDs, one per GPU the snapshot held state on); empty means the default.
// inventory reads the worker's GPUs (nil: gpu.ReadInventory).
func GPURestoreHooksOn(opt *Options, log *slog.Logger, want []string, inventory func() (*gpu.Inventory, error)) *GPURestoreReport {
	if log == nil {
		log = slog.Default()
	}
	if inventory == nil {
		inventory = gpu.ReadInventory
	}
	rep := &GPURestoreReport{}
	opt.BeforeRestore = func(ctx context.Context, ann map[string]string) error {
		m, err := gpu.ParseMeta(ann[gpu.MetaAnnotation])
		if err != nil || m == nil {
			return err
		}
		inv, invErr := inventory()
		p, err := gpu.Place(m, inv, invErr, want)
		if err != nil {
			return err
		}
		rep.Meta, rep.Placement = m, p
		// cuInit takes a few hundred milliseconds in a fresh process: let it
		// run while CRIU restores, not in front of the CUDA restore.
		go gpu.InitCUDA()
		if len(p.Pairs) > 0 {
			log.Info("restoring the GPU state onto other GPUs", "placement", p.String())
		}
		return nil
	}
	opt.AfterRestore = func(ctx context.Context, pid int) error {
		if rep.Meta == nil {
			return nil
		}
		pids, d, err := gpu.RestoreTree(ctx, pid, rep.Placement.Candidates())
		rep.Processes, rep.Duration = pids, d
		if err != nil {
			return fmt.Errorf("CUDA restore: %w", err)
		}
		log.Info("GPU state restored", "processes", pids, "seconds", d.Seconds(), "GB/s", rep.GBps())
		return nil
	}
	return rep
}
