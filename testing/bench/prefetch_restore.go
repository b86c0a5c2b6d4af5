package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/restore"
	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

func init() { sections = append(sections, section{"prefetch-restore", benchPrefetchRestore}) }

// benchPrefetchRestore: cold lazy restore of a snapshot over a simulated
// remote store (2 ms a request, 1 GB/s), until the workload answers a
// request that reads all of its memory: without a profile, with the profile
// a recording restore made, and with a warm cache.
func benchPrefetchRestore(dir string) error {
	ctx := context.Background()
	c, st, storeDir, want, _, snap, err := taggedSnapshot(ctx, dir, int(512**scale), "snap")
	if err != nil {
		return err
	}
	const latency, bandwidth = 2 * time.Millisecond, 1e9
	url := fmt.Sprintf("%s?sim-latency=%s&sim-bandwidth=%.0f", storeDir, latency, bandwidth)
	mnt := filepath.Join(dir, "mnt")
	// One restore: from its start until the workload has read all of its
	// memory (checksum), as a cold worker serving its first request.
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
		got, err := pp.Ask("checksum", 5*time.Minute)
		d := time.Since(start)
		if err != nil || got != want {
			return 0, fmt.Errorf("restored checksum %q (%v), want %s", got, err, want)
		}
		_, err = proc.WaitResident(ctx)
		return d, err
	}
	cold := func(i int, opt restore.Options, mountArgs ...string) (time.Duration, *mountProc, error) {
		m, err := startMount(url, mnt, filepath.Join(dir, fmt.Sprintf("cache-%d", i)), mountArgs...)
		if err != nil {
			return 0, nil, err
		}
		bu.DropCaches()
		d, err := restoreOnce(opt)
		if err != nil {
			m.stop()
			return 0, nil, fmt.Errorf("%v\n%s", err, m.logs.String())
		}
		return d, m, nil
	}
	// Record: a cold restore whose faults alone bring memory in at first.
	m, err := startMount(url, mnt, filepath.Join(dir, "cache-rec"), "--no-prefetch")
	if err != nil {
		return err
	}
	man, err := restore.ManifestOf(ctx, st, mnt, "snap")
	if err != nil {
		m.stop()
		return err
	}
	rec := prefetch.NewRecorder(man.ID)
	if _, err := restoreOnce(restore.Options{Record: rec, RecordFor: 5 * time.Second}); err != nil {
		m.stop()
		return fmt.Errorf("recording restore: %w", err)
	}
	m.stop()
	prof := rec.Profile()
	if _, err := prefetch.Save(ctx, st, prof); err != nil {
		return err
	}

	without, m, err := cold(1, restore.Options{}, "--no-prefetch")
	if err != nil {
		return fmt.Errorf("no profile: %w", err)
	}
	m.stop()
	with, m, err := cold(2, restore.Options{Profile: prof})
	if err != nil {
		return fmt.Errorf("with profile: %w", err)
	}
	warm, err := restoreOnce(restore.Options{Profile: prof})
	m.stop()
	if err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	need := float64(snap.PageBytes)
	floor := max(warm.Seconds(), need/bandwidth)
	rows := []bu.Row{
		{Name: "cold, no profile", Value: without.Seconds() * 1000, Unit: "ms", Baseline: "floor max(warm, bytes/bandwidth)"},
		{Name: "cold, with profile", Value: with.Seconds() * 1000, Unit: "ms", Baseline: "floor max(warm, bytes/bandwidth)", Goal: "<= 1.3x floor, >= 3x faster than no profile"},
		{Name: "warm cache", Value: warm.Seconds() * 1000, Unit: "ms", Baseline: "floor max(warm, bytes/bandwidth)"},
		{Name: "floor max(warm, bytes/bandwidth)", Value: floor * 1000, Unit: "ms"},
		{Name: "speed-up of the profile (no profile / with)", Value: without.Seconds() / with.Seconds(), Unit: "x"},
	}
	bu.Table(os.Stdout, fmt.Sprintf("prefetch: lazy restore of a %d MiB snapshot until it has read all its memory, over a simulated store (%v/request, %.0f GB/s; profile %d chunks, %.0f MB)",
		snap.PageBytes>>20, latency, bandwidth/1e9, len(prof.Entries), float64(prof.Bytes())/1e6), rows)
	return nil
}
