package main

import (
	"context"
	"fmt"

	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/prefetch"
)

func init() {
	register(spec{name: "profile", args: "show TAG [--json]", help: "show an image's prefetch profile",
		new: func() command { return &profileOptions{} }})
}

type profileOptions struct {
	cli
	store storeFlags
	cache cacheFlags // only its directory: where the last replay is recorded
	json  bool
}

func (o *profileOptions) flags(fs *flagSet) {
	o.store.register(fs)
	o.cache.registerDir(fs)
	fs.BoolVar(&o.json, "json", false, "print JSON")
}

// profileResult is what profile show --json prints.
type profileResult struct {
	Image      string               `json:"image"`
	Runs       uint32               `json:"runs"`
	Chunks     int                  `json:"chunks"`
	Bytes      int64                `json:"bytes"`
	SpanMS     uint64               `json:"span_ms"`
	LastReplay *prefetch.LastReplay `json:"last_replay,omitempty"`
}

func (o *profileOptions) run(ctx context.Context, args []string) error {
	if len(args) != 2 || args[0] != "show" {
		return usagef("usage: gpuwarm profile show TAG")
	}
	tag := args[1]
	st, err := o.store.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	id, err := store.ResolveTag(ctx, st, tag)
	if err != nil {
		return err
	}
	prof, err := prefetch.Load(ctx, st, id)
	if err != nil {
		return err
	}
	if prof == nil {
		return fmt.Errorf("image %s has no prefetch profile: record one with gpuwarm record --tag %s -- CMD", tag, tag)
	}
	r := profileResult{Image: id.String(), Runs: prof.Runs, Chunks: len(prof.Entries), Bytes: prof.Bytes()}
	for _, e := range prof.Entries {
		r.SpanMS = max(r.SpanMS, e.TimeMS)
	}
	last, err := prefetch.LoadLastReplay(o.cache.dir, id)
	if err != nil {
		o.log.Warn("ignoring the last replay's record", "err", err)
	}
	r.LastReplay = last
	if o.json {
		return printJSON(o.out, r)
	}
	w := o.out
	fmt.Fprintf(w, "image   %s\nruns    %d\nchunks  %d (%s)\nspan    %.2fs from first to last first-touch\n", id, r.Runs, r.Chunks, pack.HumanBytes(r.Bytes), float64(r.SpanMS)/1000)
	if last != nil {
		fmt.Fprintf(w, "last replay on this worker: %s at %s: hit rate %.0f%% (%d of %d touched were in ahead), %d fetched ahead, %d put into the page cache (reads of those are not seen)\n",
			last.Kind, last.When.Local().Format("2006-01-02 15:04:05"), 100*last.HitRate, last.Hits, last.Touched, last.Fetched, last.Warmed)
	} else {
		fmt.Fprintf(w, "last replay on this worker: none recorded under %s (a mount replaying it, or gpuwarm restore --lazy, records one)\n", o.cache.dir)
	}
	return nil
}
