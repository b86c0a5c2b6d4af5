package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gpuwarm/gpuwarm/gpu"
	"github.com/gpuwarm/gpuwarm/restore"
)

func gpuSnapshotHooks(ctx context.Context, g *globals, opt *restore.SnapshotOptions) error {
	restore.GPUSnapshotHooks(opt, 30*time.Second, g.log)
	return nil
}

func gpuRestoreHooks(ctx context.Context, g *globals, opt *restore.Options, gpus []string) {
	restore.GPURestoreHooksOn(opt, g.log, gpus)
}

// splitList splits "a, b,c" into its non-empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
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
