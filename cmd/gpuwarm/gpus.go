package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/gpuwarm/gpuwarm/gpu"
)

func init() {
	register(spec{name: "gpus", args: "[--json]", help: "list the worker's GPUs, driver and GPU processes",
		new: func() command { return &gpusOptions{} }})
}

type gpusOptions struct {
	cli
	json bool
}

func (o *gpusOptions) flags(fs *flagSet) { fs.BoolVar(&o.json, "json", false, "print JSON") }

func (o *gpusOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 0, 0, "no arguments"); err != nil {
		return err
	}
	inv, err := gpu.ReadInventory()
	if err != nil {
		if errors.Is(err, gpu.ErrNoDriver) && !o.json {
			fmt.Fprintln(o.out, "no NVIDIA GPU on this worker:", err)
			return nil
		}
		return err
	}
	if o.json {
		return printJSON(o.out, inv)
	}
	fmt.Fprintf(o.out, "driver %s, CUDA %s\n", inv.Driver, inv.CUDAString())
	w := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
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
