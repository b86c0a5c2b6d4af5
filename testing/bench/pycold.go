package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

func init() { sections = append(sections, section{"python-cold", benchPythonCold}) }

// benchPythonCold: python3 importing much of its standard library, cold
// (page cache dropped; gpuwarm with an empty cache and a file store on this
// disk), natively, from squashfuse over a zstd squashfs image of the same
// tree, and from the mount. Passes alternate, best of three each.
func benchPythonCold(dir string) error {
	src, storeDir, err := packedPython(dir)
	if err != nil {
		return err
	}
	sqRoot, sqStop, err := squashfuseMount(dir, src)
	if err != nil {
		return err
	}
	defer sqStop()
	mnt := filepath.Join(dir, "mnt")
	best := map[string]time.Duration{}
	keep := func(name string, d time.Duration) {
		if b, ok := best[name]; !ok || d < b {
			best[name] = d
		}
	}
	for rep := range 3 {
		for _, side := range []string{"native", "squashfuse", "gpuwarm"} {
			root := src
			var m *mountProc
			switch side {
			case "squashfuse":
				root = sqRoot
			case "gpuwarm":
				cacheDir := filepath.Join(dir, fmt.Sprintf("cache%d", rep))
				if m, err = startMount(storeDir, mnt, cacheDir); err != nil {
					return err
				}
				root = filepath.Join(mnt, "py")
			}
			if err := bu.DropCaches(); err != nil {
				return err
			}
			d, err := runPython(root)
			if m != nil {
				m.stop()
				os.RemoveAll(filepath.Join(dir, fmt.Sprintf("cache%d", rep)))
			}
			if err != nil {
				return fmt.Errorf("%s: %w", side, err)
			}
			keep(side, d)
		}
	}
	const native, squash = "native, from disk", "squashfuse cold (zstd squashfs)"
	bu.Table(os.Stdout, "python-cold: python3 importing its standard library, page cache dropped (best of 3, alternating)", []bu.Row{
		{Name: native, Value: ms(best["native"]), Unit: "ms"},
		{Name: squash, Value: ms(best["squashfuse"]), Unit: "ms", Baseline: native},
		{Name: "gpuwarm cold (file store, empty cache)", Value: ms(best["gpuwarm"]), Unit: "ms", Baseline: native},
		{Name: "  the same, against squashfuse cold", Value: ms(best["gpuwarm"]), Unit: "ms", Baseline: squash, Goal: "<= 1.1x"},
	})
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
