package gpu

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/gpuwarm/gpuwarm/restore"
)

// SnapshotHooks makes a snapshot lock and checkpoint the tree's CUDA
// processes before CRIU dumps it, and records what it checkpointed.
func SnapshotHooks(opt *restore.SnapshotOptions, lockTimeout time.Duration, log *slog.Logger) *Checkpointer {
	if log == nil {
		log = slog.Default()
	}
	cp := &Checkpointer{LockTimeout: lockTimeout}
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
			ann[MetaAnnotation] = m.Annotation()
			log.Info("GPU state checkpointed into host memory", "processes", m.Processes,
				"gpu_bytes", m.MemoryBytes, "lock", cp.LockTime, "checkpoint", cp.CheckpointTime)
		}
		return nil
	}
	opt.AfterDump = func(ctx context.Context, dumpErr error) error { return cp.After(ctx, dumpErr, leave) }
	return cp
}

// RestoreReport says what the GPU phase of a restore did.
type RestoreReport struct {
	Meta      *Meta
	Placement *Placement // where the state went; Placement.Pairs nil when nothing moved
	Processes []int
	Duration  time.Duration
}

// GBps is the GPU restore's throughput.
func (r *RestoreReport) GBps() float64 {
	if r.Meta == nil || r.Duration == 0 {
		return 0
	}
	return float64(r.Meta.MemoryBytes) / 1e9 / r.Duration.Seconds()
}

// RestoreHooks refuse an incompatible worker before anything starts and put
// the GPU state back after CRIU (a failure there kills the restored tree),
// onto the default GPUs (see Place).
func RestoreHooks(opt *restore.Options, log *slog.Logger) *RestoreReport {
	return RestoreHooksOn(opt, log, nil)
}

// RestoreHooksOn is RestoreHooks onto the GPUs named in want (indices or
// UUIDs, one per GPU the snapshot held state on); empty means the default.
func RestoreHooksOn(opt *restore.Options, log *slog.Logger, want []string) *RestoreReport {
	if log == nil {
		log = slog.Default()
	}
	rep := &RestoreReport{}
	opt.BeforeRestore = func(ctx context.Context, ann map[string]string) error {
		m, err := ParseMeta(ann[MetaAnnotation])
		if err != nil || m == nil {
			return err
		}
		inv, invErr := ReadInventory()
		p, err := Place(m, inv, invErr, want)
		if err != nil {
			return err
		}
		rep.Meta, rep.Placement = m, p
		// cuInit takes a few hundred milliseconds in a fresh process: let it
		// run while CRIU restores, not in front of the CUDA restore.
		go cudaInit()
		if len(p.Pairs) > 0 {
			log.Info("restoring the GPU state onto other GPUs", "placement", p.String())
		}
		return nil
	}
	opt.AfterRestore = func(ctx context.Context, pid int) error {
		if rep.Meta == nil {
			return nil
		}
		pids, d, err := RestoreTree(ctx, pid, rep.Placement.Candidates())
		rep.Processes, rep.Duration = pids, d
		if err != nil {
			return fmt.Errorf("CUDA restore: %w", err)
		}
		log.Info("GPU state restored", "processes", pids, "seconds", d.Seconds(), "GB/s", rep.GBps())
		return nil
	}
	return rep
}
