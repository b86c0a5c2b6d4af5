package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/restore"
	"github.com/gpuwarm/gpuwarm/restore/container"
)

func init() {
	register(spec{name: "snapshot", args: "--pid PID|--name N --tag NAME [--leave-running]", help: "checkpoint a running workload or container into the store",
		new: func() command { return &snapshotOptions{} }})
}

type snapshotOptions struct {
	cli
	store       storeFlags
	pid         int
	name, tag   string
	leave, json bool
	quiet       bool
	gpuLock     time.Duration
	ctr         containerFlags
}

func (o *snapshotOptions) flags(fs *flagSet) {
	o.store.register(fs)
	fs.IntVar(&o.pid, "pid", 0, "`PID` of the tree's root (from gpuwarm run)")
	fs.StringVar(&o.name, "name", "", "container or workload `NAME` given to gpuwarm run")
	fs.StringVar(&o.tag, "tag", "", "tag `NAME` for the snapshot (required)")
	fs.BoolVar(&o.leave, "leave-running", false, "keep the workload running after the dump")
	fs.duration(&o.gpuLock, "gpu-lock-timeout", 30*time.Second, false, "how long the CUDA driver may take to lock a process")
	fs.BoolVar(&o.json, "json", false, "print the result as JSON")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress line on the terminal")
	o.ctr.register(fs)
}

// snapshotResult is what snapshot --json prints.
type snapshotResult struct {
	Tag         string  `json:"tag"`
	Image       string  `json:"image"`
	PID         int     `json:"pid"`
	Container   string  `json:"container,omitempty"`
	PageBytes   int64   `json:"page_bytes"`
	NewBytes    int64   `json:"new_bytes"`
	DumpSeconds float64 `json:"dump_seconds"`
	Seconds     float64 `json:"seconds"`
	// Weights the workload released: referenced, not stored.
	WeightsBytes   int64 `json:"weights_bytes,omitempty"`
	WeightsTensors int   `json:"weights_tensors,omitempty"`
	// A container's writable layer as the snapshot holds it (a tar).
	LayerBytes int64 `json:"writable_layer_bytes,omitempty"`
}

func (o *snapshotOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 0, 0, "no arguments (--pid or --name, and --tag)"); err != nil {
		return err
	}
	if err := manifest.ValidTag(o.tag); err != nil {
		return usagef("--tag: %w", err)
	}
	pid := o.pid
	if pid == 0 && o.name != "" {
		if c, err := container.Load(o.ctr.dir, o.name); err == nil {
			return o.snapshotContainer(ctx, c)
		}
		b, err := os.ReadFile(filepath.Join(runDir, o.name+".pid"))
		if err != nil {
			return fmt.Errorf("no workload named %q (started with gpuwarm run --name): %w", o.name, err)
		}
		if pid, err = strconv.Atoi(strings.TrimSpace(string(b))); err != nil {
			return fmt.Errorf("workload %q: bad PID file: %w", o.name, err)
		}
	}
	if pid <= 0 {
		return usagef("want --pid or --name")
	}
	if err := syscall.Kill(pid, 0); err != nil {
		return fmt.Errorf("no process %d to snapshot: %w", pid, err)
	}
	c, err := restore.FindCRIU(ctx)
	if err != nil {
		return err
	}
	st, done, err := o.store.createLocked(ctx)
	if err != nil {
		return err
	}
	defer done()
	opt := restore.SnapshotOptions{PID: pid, LeaveRunning: o.leave, Store: st, Logger: o.log}
	restore.GPUSnapshotHooks(&opt, o.gpuLock, o.log)
	wrep := restore.WeightsSnapshotHooks(&opt, o.log)
	bar := o.progress(&opt)
	res, err := restore.Snapshot(ctx, c, opt)
	bar.done()
	if err != nil {
		return err
	}
	if err := store.SetTag(ctx, st, o.tag, res.Image); err != nil {
		return err
	}
	r := snapshotResult{Tag: o.tag, Image: res.Image.String(), PID: pid, PageBytes: res.PageBytes,
		NewBytes: res.NewBytes, DumpSeconds: res.DumpSeconds, Seconds: res.Total.Seconds()}
	if wrep.Meta != nil {
		r.WeightsBytes, r.WeightsTensors = wrep.Meta.Bytes, len(wrep.Meta.Refs)
	}
	if o.json {
		return printJSON(o.out, r)
	}
	fmt.Fprintf(o.out, "snapshot of pid %d stored as %s (image %s)\n", pid, o.tag, res.Image)
	o.printSizes(r, wrep)
	return nil
}

// printSizes prints what a snapshot stored and released.
func (o *snapshotOptions) printSizes(r snapshotResult, wrep *restore.WeightsReport) {
	fmt.Fprintf(o.out, "  memory %s, %s new in the store\n", pack.HumanBytes(r.PageBytes), pack.HumanBytes(r.NewBytes))
	if wrep.Meta != nil {
		fmt.Fprintf(o.out, "  weights: %d tensors (%s) released by the workload, referenced in %d image(s), not stored again\n",
			r.WeightsTensors, pack.HumanBytes(r.WeightsBytes), len(wrep.Meta.Images()))
	}
	if r.Container != "" {
		fmt.Fprintf(o.out, "  writable layer %s (unpacked by every restore)\n", pack.HumanBytes(r.LayerBytes))
	}
	fmt.Fprintf(o.out, "  criu dump %.2fs, total %.2fs\n", r.DumpSeconds, r.Seconds)
}

// progress shows the bytes dumped so far and their rate on a terminal.
func (o *snapshotOptions) progress(opt *restore.SnapshotOptions) *progress {
	bar := newProgress(nil, o.quiet || o.json, "snapshot: memory dumped")
	opt.Progress = func(b int64) { bar.update(b, 0) }
	return bar
}
