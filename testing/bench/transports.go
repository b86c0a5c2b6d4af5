package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

func init() { sections = append(sections, section{"transports", benchTransports}) }

var spins = flag.String("transport-spins", "200us", "transports: a /dev/fuse mount polling for each of these windows (--fuse-spin) beside the others")

// benchTransports reads the mount section's files through one mount per
// FUSE transport (/dev/fuse, io_uring queues), all up at once, by turns:
// hot (the kernel's page cache; each pass right after a native one) and
// from the memory tier (page cache dropped before each round). Passes of
// one round run back to back, so that a noisy moment of the machine hits
// every transport alike; it prints the best and the median of each.
func benchTransports(dir string) error {
	src := filepath.Join(dir, "src")
	files, sizes, total, err := mountFiles(src)
	if err != nil {
		return err
	}
	storeDir := filepath.Join(dir, "store")
	if _, err := packJSON(storeDir, src, "bench"); err != nil {
		return err
	}
	type variant struct {
		name  string
		flags []string
		m     *mountProc
		root  string
		hot   []time.Duration
		mem   []time.Duration
		rand  []time.Duration
	}
	vs := []*variant{{name: "/dev/fuse"}}
	for _, spin := range strings.Fields(*spins) {
		vs = append(vs, &variant{name: "/dev/fuse, polling " + spin + " (--fuse-spin)", flags: []string{"--fuse-spin", spin}})
	}
	if restore, err := bu.SetFUSEURing(true); err != nil {
		fmt.Printf("(no io_uring mounts: %v)\n", err)
	} else {
		defer restore()
		vs = append(vs, &variant{name: "io_uring (--fuse-uring)", flags: []string{"--fuse-uring"}})
	}
	for i, v := range vs {
		mnt := filepath.Join(dir, fmt.Sprintf("mnt%d", i))
		m, err := startMount(storeDir, mnt, filepath.Join(dir, fmt.Sprintf("cache%d", i)), v.flags...)
		if err != nil {
			return fmt.Errorf("%s: %w", v.name, err)
		}
		defer m.stop()
		v.m, v.root = m, filepath.Join(mnt, "bench")
		if _, err := bu.SeqRead(under(v.root, files)); err != nil { // cold: the memory tier fills
			return fmt.Errorf("%s: %w\n%s", v.name, err, m.logs.String())
		}
		m.waitIdle(2 * time.Minute)
	}
	seq := func(root string) (time.Duration, error) {
		return bu.Time(func() error { _, err := bu.SeqRead(under(root, files)); return err })
	}
	const nRand = 20000
	rnd := func(root string) (time.Duration, error) {
		return bu.Time(func() error { return bu.RandRead(under(root, files), sizes, nRand) })
	}
	const rounds = 7
	var native []time.Duration
	seq(src) // the native page cache, filled by reads
	for _, v := range vs {
		seq(v.root)
	}
	for r := 0; r < rounds; r++ {
		for _, v := range vs {
			dn, err := seq(src)
			if err != nil {
				return err
			}
			d, err := seq(v.root)
			if err != nil {
				return fmt.Errorf("%s, hot: %w\n%s", v.name, err, v.m.logs.String())
			}
			native, v.hot = append(native, dn), append(v.hot, d)
		}
	}
	for r := 0; r < rounds; r++ {
		for _, v := range vs {
			bu.DropCaches()
			d, err := seq(v.root)
			if err != nil {
				return fmt.Errorf("%s, memory tier: %w\n%s", v.name, err, v.m.logs.String())
			}
			v.mem = append(v.mem, d)
		}
	}
	for r := 0; r < 3; r++ {
		for _, v := range vs {
			bu.DropCaches()
			d, err := rnd(v.root)
			if err != nil {
				return fmt.Errorf("%s, memory tier, random: %w\n%s", v.name, err, v.m.logs.String())
			}
			v.rand = append(v.rand, d)
		}
	}
	mb := float64(total) / 1e6
	rate := func(d time.Duration) float64 { return mb / d.Seconds() }
	best := func(ds []time.Duration) time.Duration { return slices.Min(ds) }
	median := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	const nat = "native, page cache (read back), best"
	rows := []bu.Row{{Name: nat, Value: rate(best(native)), Unit: "MB/s"},
		{Name: "native, median", Value: rate(median(native)), Unit: "MB/s"}}
	for _, v := range vs {
		rows = append(rows,
			bu.Row{Name: v.name + ": hot, best", Value: rate(best(v.hot)), Unit: "MB/s", Baseline: nat},
			bu.Row{Name: v.name + ": hot, median", Value: rate(median(v.hot)), Unit: "MB/s", Baseline: "native, median"})
	}
	for _, v := range vs {
		rows = append(rows,
			bu.Row{Name: v.name + ": memory tier, best", Value: rate(best(v.mem)), Unit: "MB/s", Baseline: vs[0].name + ": memory tier, best"},
			bu.Row{Name: v.name + ": memory tier, median", Value: rate(median(v.mem)), Unit: "MB/s", Baseline: vs[0].name + ": memory tier, median"})
	}
	for _, v := range vs {
		rows = append(rows, bu.Row{Name: v.name + ": memory tier, random 4 KiB, best", Value: nRand / best(v.rand).Seconds(), Unit: "reads/s",
			Baseline: vs[0].name + ": memory tier, random 4 KiB, best"})
	}
	bu.Table(os.Stdout, fmt.Sprintf("FUSE transports: %.0f MB in %d files, every mount up at once, passes by turns (%d rounds)", mb, len(files), rounds), rows)
	for _, v := range vs {
		v.m.printStats(v.name)
	}
	return nil
}
