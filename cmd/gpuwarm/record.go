package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/prefetch"
)

func init() {
	register(spec{name: "record", args: "--tag NAME [--mount DIR] -- CMD [ARG...]", help: "run CMD against a private mount and record the order it reads the image's chunks",
		new: func() command { return &recordOptions{} }})
}

type recordOptions struct {
	cli
	store storeFlags
	tag   string
	mount string
	json  bool
}

func (o *recordOptions) flags(fs *flagSet) {
	o.store.register(fs)
	fs.StringVar(&o.tag, "tag", "", "the image (tag) whose reads to record (required)")
	mountFlag(fs, &o.mount, "mount point `DIR` CMD expects the image under (must be free)")
	fs.BoolVar(&o.json, "json", false, "print the result as JSON")
}

// recordResult is what record --json prints.
type recordResult struct {
	Image   string  `json:"image"`
	Profile string  `json:"profile"`
	Chunks  int     `json:"chunks"` // touched by this run
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	Runs    uint32  `json:"runs"`         // merged into the stored profile
	Total   int     `json:"total_chunks"` // in the stored profile
}

func (o *recordOptions) run(ctx context.Context, args []string) error {
	if o.tag == "" {
		return usagef("want --tag")
	}
	if len(args) == 0 {
		return usagef("want a command after --")
	}
	st, err := o.store.create(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	id, err := store.ResolveTag(ctx, st, o.tag)
	if err != nil {
		return err
	}
	// A private, empty cache: every read is a first touch.
	cdir, err := os.MkdirTemp("", "gpuwarm-record-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cdir)
	bc, err := cache.Open(st, cache.Config{Dir: cdir, MemBytes: 4 << 30, DiskBytes: 1 << 40, Logger: o.log})
	if err != nil {
		return err
	}
	defer bc.Close()
	rec := prefetch.NewRecorder(id)
	if err := os.MkdirAll(o.mount, 0o755); err != nil {
		return err
	}
	srv, err := fusefs.Mount(o.mount, fusefs.Options{Cache: bc, Logger: o.log, Observer: rec, Readahead: -1})
	if err != nil {
		return err
	}
	defer srv.Close()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if o.json {
		cmd.Stdout = os.Stderr // stdout carries the JSON result
	}
	cmd.Env = append(os.Environ(), "GPUWARM_IMAGE="+filepath.Join(o.mount, o.tag))
	start := time.Now()
	runErr := cmd.Run()
	srv.Close()
	if runErr != nil {
		return fmt.Errorf("recorded command failed (%v); profile not saved", runErr)
	}
	run := rec.Profile()
	merged, pid, replaced, err := prefetch.AddRun(ctx, st, run)
	if replaced != nil {
		o.log.Warn("replacing an unreadable profile", "err", replaced)
	}
	if err != nil {
		return err
	}
	r := recordResult{Image: id.String(), Profile: pid.String(), Chunks: len(run.Entries), Bytes: run.Bytes(),
		Seconds: time.Since(start).Seconds(), Runs: merged.Runs, Total: len(merged.Entries)}
	if o.json {
		return printJSON(o.out, r)
	}
	fmt.Fprintf(o.out, "recorded %d chunks (%s) in %.2fs; profile %s now covers %d runs, %d chunks\n",
		r.Chunks, pack.HumanBytes(r.Bytes), r.Seconds, pid.Short(), r.Runs, r.Total)
	return nil
}
