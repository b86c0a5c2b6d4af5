package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

func init() { sections = append(sections, section{"fuse-floor", benchFuseFloor}) }

// benchFuseFloor puts a number on what no FUSE daemon can go below: the
// kernel's round trip for an open and close of a cached file, answered by
// a single-threaded C server that replies at once (fusefloor/rawfuse.c),
// next to the same through a gpuwarm mount and natively. Every file a
// program opens through the mount pays it, so it bounds the hot-read
// ratios of the mount section. Skipped where there is no C compiler.
func benchFuseFloor(dir string) error {
	script := "testing/bench/fusefloor/floor.sh"
	if _, err := os.Stat(script); err != nil {
		fmt.Printf("\n== fuse-floor: skipped (%s not found; run from the repository root)\n", script)
		return nil
	}
	if _, err := exec.LookPath("gcc"); err != nil && (os.Getenv("RAWFUSE") == "" || os.Getenv("OCC") == "") {
		fmt.Println("\n== fuse-floor: skipped (no gcc to build the C FUSE server)")
		return nil
	}
	out, err := exec.Command("bash", script, bu.Gpuwarm()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", script, err, out)
	}
	// Lines "name: X us per open+close", three passes: the fastest counts.
	best := map[string]float64{}
	for _, l := range strings.Split(string(out), "\n") {
		name, rest, ok := strings.Cut(l, ":")
		f := strings.Fields(rest)
		if !ok || len(f) < 2 || f[1] != "us" {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		if b, seen := best[name]; !seen || v < b {
			best[name] = v
		}
	}
	if len(best) != 4 {
		return fmt.Errorf("%s said:\n%s", script, out)
	}
	const floor = "FUSE floor (C server answering at once)"
	bu.Table(os.Stdout, "fuse-floor: open+close of one cached 4 KiB file (best of 3 x 3000)", []bu.Row{
		{Name: "native", Value: best["native"], Unit: "µs"},
		{Name: floor, Value: best["rawfuse"], Unit: "µs", Baseline: "native"},
		{Name: "gpuwarm mount", Value: best["gpuwarm"], Unit: "µs", Baseline: floor},
		{Name: "gpuwarm mount, sleeping readers (--fuse-spin=0)", Value: best["gpuwarm-sleeping"], Unit: "µs", Baseline: floor},
	})
	return nil
}
