package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/gpuwarm/gpuwarm/gpu"
	"github.com/gpuwarm/gpuwarm/restore"
)

// gpuSnapshotHooks locks and checkpoints the CUDA processes of the tree
// before CRIU dumps it, and records the GPU metadata.
func gpuSnapshotHooks(ctx context.Context, g *globals, opt *restore.SnapshotOptions) error {
	cp := &gpu.Checkpointer{LockTimeout: 30 * time.Second}
	pid := opt.PID
	opt.BeforeDump = func(ctx context.Context) error {
		if err := cp.Before(ctx, pid); err != nil {
			return err
		}
		if m := cp.Meta(); m != nil {
			if opt.Annotations == nil {
				opt.Annotations = map[string]string{}
			}
			opt.Annotations[gpu.MetaAnnotation] = m.Annotation()
			g.log.Info("GPU state checkpointed into host memory", "processes", m.Processes,
				"gpu_bytes", m.MemoryBytes, "lock", cp.LockTime, "checkpoint", cp.CheckpointTime)
		}
		return nil
	}
	leave := opt.LeaveRunning
	opt.AfterDump = func(ctx context.Context, dumpErr error) error {
		return cp.After(ctx, dumpErr, leave)
	}
	return nil
}

// gpuRestoreHooks refuse an incompatible worker before anything starts and
// put GPU state back after CRIU.
func gpuRestoreHooks(ctx context.Context, g *globals, opt *restore.Options) {
	var meta *gpu.Meta
	opt.BeforeRestore = func(ctx context.Context, ann map[string]string) error {
		m, err := gpu.ParseMeta(ann[gpu.MetaAnnotation])
		if err != nil || m == nil {
			return err
		}
		inv, invErr := gpu.ReadInventory()
		if err := gpu.Compatible(m, inv, invErr); err != nil {
			return err
		}
		meta = m
		return nil
	}
	opt.AfterRestore = func(ctx context.Context, pid int) error {
		if meta == nil {
			return nil
		}
		pids, d, err := gpu.RestoreTree(ctx, pid)
		if err != nil {
			return fmt.Errorf("CUDA restore: %w", err)
		}
		g.log.Info("GPU state restored", "processes", pids, "seconds", d.Seconds(),
			"GB/s", float64(meta.MemoryBytes)/1e9/d.Seconds())
		return nil
	}
}

func init() {
	c := &command{name: "gpus", args: "[--json]", help: "list the worker's GPUs, driver and GPU processes"}
	c.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		jsonOut := fs.Bool("json", false, "print JSON")
		if err := g.parse(c, fs, args); err != nil {
			return err
		}
		inv, err := gpu.ReadInventory()
		if err != nil {
			if errors.Is(err, gpu.ErrNoDriver) && !*jsonOut {
				fmt.Println("no NVIDIA GPU on this worker:", err)
				return nil
			}
			return err
		}
		if *jsonOut {
			return json.NewEncoder(os.Stdout).Encode(inv)
		}
		fmt.Printf("driver %s, CUDA %s\n", inv.Driver, inv.CUDAString())
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "GPU\tNAME\tUUID\tCC\tMEMORY USED/TOTAL\tPROCESSES")
		for _, d := range inv.GPUs {
			procs := ""
			for _, p := range d.Processes {
				procs += fmt.Sprintf("%d(%.1fGB) ", p.PID, float64(p.Memory)/1e9)
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%.1f/%.1f GB\t%s\n", d.Index, d.Name, d.UUID, d.Compute,
				float64(d.MemoryUsed)/1e9, float64(d.MemoryTotal)/1e9, procs)
		}
		return w.Flush()
	}
	register(c)
}
