package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/restore"
	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

func init() { sections = append(sections, section{"prefetch-restore", benchPrefetchRestore}) }

// benchPrefetchRestore: cold lazy restore of a snapshot over a simulated
// remote store (2 ms a request, 1 GB/s), until the workload answers its
// first request: without a profile, with the profile a recording restore
// made, and with a warm cache. Two requests, each with its own profile: one
// that reads a sixteenth of the memory, scattered over all of it (a
// server's first request), and one that reads all of it (checksum).
func benchPrefetchRestore(dir string) error {
	ctx := context.Background()
	const sample = "sample 16"
	c, st, storeDir, answers, _, snap, err := taggedSnapshot(ctx, dir, int(512**scale), "snap", sample)
	if err != nil {
		return err
	}
	url := simStore(storeDir)
	mnt := filepath.Join(dir, "mnt")
	run := 0 // numbers the cache directories, one per daemon
	for _, sc := range []struct{ req, what string }{
		{sample, "its first request reads 1/16 of its memory, scattered"},
		{"checksum", "it has read all its memory"},
	} {
		rows, prof, err := prefetchRestoreScenario(ctx, c, st, url, mnt, dir, &run, sc.req, answers[sc.req])
		if err != nil {
			return fmt.Errorf("%s: %w", sc.req, err)
		}
		bu.Table(os.Stdout, fmt.Sprintf("prefetch: lazy restore of a %d MiB snapshot until %s, over a simulated store (%v/request, %.0f GB/s; profile %d chunks, %.0f MB)",
			snap.PageBytes>>20, sc.what, latency, bandwidth/1e9, len(prof.Entries), float64(prof.Bytes())/1e6), rows)
	}
	return nil
}

// prefetchRestoreScenario records a profile of restores answering req, then
// times cold restores without and with it, and warm ones.
func prefetchRestoreScenario(ctx context.Context, c *restore.CRIU, st store.Store, url, mnt, dir string, run *int, req, want string) ([]bu.Row, *prefetch.Profile, error) {
	// One restore: from its start until the workload has answered req, as
	// a cold worker serving its first request.
	restoreOnce := func(opt restore.Options) (time.Duration, error) {
		pp := bu.NewPipes()
		opt.Mount, opt.Name, opt.Store, opt.Lazy, opt.Stdin, opt.Stdout = mnt, "snap", st, true, pp.CIn, pp.COut
		start := time.Now()
		proc, err := restore.Restore(ctx, c, opt)
		pp.Child()
		if err != nil {
			return 0, err
		}
		defer func() { proc.Kill(); proc.Wait(); time.Sleep(200 * time.Millisecond) }()
		got, err := pp.Ask(req, time.Minute)
		d := time.Since(start)
		if err != nil || got != want {
			// Say why the lazy daemon gave up, if it did.
			wctx, cancel := context.WithTimeout(ctx, time.Second)
			_, lerr := proc.WaitResident(wctx)
			cancel()
			return 0, fmt.Errorf("restored workload answered %q (%v), want %s; lazy pages: %v", got, err, want, lerr)
		}
		_, err = proc.WaitResident(ctx)
		if *verbose {
			fmt.Printf("lazy daemon: %+v; restore timing: %+v\n", proc.LazyStats(), proc.Timing)
		}
		return d, err
	}
	// A cold worker: page cache dropped, a fresh daemon on an empty cache
	// that preloads the snapshot's image (as a worker told what it will
	// restore would), the restore starting wait after the mount is up.
	cold := func(opt restore.Options, wait time.Duration, mountArgs ...string) (time.Duration, *mountProc, error) {
		bu.DropCaches()
		*run++
		m, err := startMount(url, mnt, filepath.Join(dir, fmt.Sprintf("cache-%d", *run)), append(mountArgs, "--preload", "snap")...)
		if err != nil {
			return 0, nil, err
		}
		time.Sleep(wait)
		d, err := restoreOnce(opt)
		if err != nil {
			m.stop()
			return 0, nil, fmt.Errorf("%v\n%s", err, m.logs.String())
		}
		return d, m, nil
	}
	// Record: a cold restore whose faults alone bring memory in at first.
	*run++
	m, err := startMount(url, mnt, filepath.Join(dir, fmt.Sprintf("cache-%d", *run)), "--no-prefetch")
	if err != nil {
		return nil, nil, err
	}
	man, err := restore.ManifestOf(ctx, st, mnt, "snap")
	if err != nil {
		m.stop()
		return nil, nil, err
	}
	rec := prefetch.NewRecorder(man.ID)
	if _, err := restoreOnce(restore.Options{Record: rec, RecordFor: 5 * time.Second}); err != nil {
		m.stop()
		return nil, nil, fmt.Errorf("recording restore: %w\nmount log:\n%s", err, m.logs.String())
	}
	m.stop()
	prof := rec.Profile()
	if _, err := prefetch.Save(ctx, st, prof); err != nil {
		return nil, nil, err
	}

	var times [4]time.Duration
	for k, v := range []struct {
		prefetch bool
		wait     time.Duration
	}{{false, 0}, {true, 0}, {false, headStart}, {true, headStart}} {
		opt, args := restore.Options{}, []string{"--no-prefetch"}
		if v.prefetch {
			opt, args = restore.Options{Profile: prof}, nil
		}
		d, m, err := cold(opt, v.wait, args...)
		if err != nil {
			return nil, nil, fmt.Errorf("cold restore %d: %w", k, err)
		}
		m.printStats(fmt.Sprintf("cold restore %d (profile %v, +%v)", k, v.prefetch, v.wait))
		times[k] = d
		m.stop()
	}
	// Warm: every chunk in the memory tier of a daemon that restored once.
	_, m, err = cold(restore.Options{Profile: prof}, 0)
	if err != nil {
		return nil, nil, err
	}
	// The faster of two warm restores, so noise (or the disk-tier writes
	// the cold restore left queued) cannot flatter the ratios.
	var warm time.Duration
	for r := 0; r < 2; r++ {
		w, err := restoreOnce(restore.Options{Profile: prof})
		if err != nil {
			m.stop()
			return nil, nil, fmt.Errorf("warm: %w", err)
		}
		if r == 0 || w < warm {
			warm = w
		}
	}
	m.stop()
	// What the answer needs: the chunks the recording restore touched
	// before it (the profile), whole, at the link's bandwidth.
	need := float64(prof.Bytes())
	floor := max(warm.Seconds(), need/bandwidth)
	fl := "floor max(warm, bytes/bandwidth)"
	ms := func(d time.Duration) float64 { return d.Seconds() * 1000 }
	hs := fmt.Sprintf("+%.0f ms", ms(headStart))
	rows := []bu.Row{
		{Name: "cold, no profile, restore at mount", Value: ms(times[0]), Unit: "ms", Baseline: fl},
		{Name: "cold, profile, restore at mount", Value: ms(times[1]), Unit: "ms", Baseline: fl},
		{Name: "cold, no profile, mounted at boot (" + hs + ")", Value: ms(times[2]), Unit: "ms", Baseline: fl},
		{Name: "cold, profile, mounted at boot (" + hs + ")", Value: ms(times[3]), Unit: "ms", Baseline: fl, Goal: "<= 1.3x floor"},
		{Name: "warm cache", Value: ms(warm), Unit: "ms", Baseline: fl},
		{Name: fl, Value: floor * 1000, Unit: "ms"},
		{Name: "speed-up of the profile, restore at mount", Value: times[0].Seconds() / times[1].Seconds(), Unit: "x", Goal: ">= 3x"},
		{Name: "speed-up of the profile, mounted at boot", Value: times[2].Seconds() / times[3].Seconds(), Unit: "x", Goal: ">= 3x"},
	}
	return rows, prof, nil
}
