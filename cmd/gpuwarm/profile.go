package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/gpuwarm/gpuwarm/cache"
	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/pack"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/store"
)

// prefetchOnImage replays an image's profile when the mount first loads it.
// A missing profile is normal; a bad one is logged and ignored.
func prefetchOnImage(ctx context.Context, g *globals, st store.Store, bc *cache.Cache, memBytes int64) func(*manifest.Index) fusefs.Observer {
	return func(ix *manifest.Index) fusefs.Observer {
		p, err := prefetch.Load(ctx, st, ix.ID)
		if err != nil {
			g.log.Warn("ignoring the image's prefetch profile; booting without it", "image", ix.ID.Short(), "err", err)
			return nil
		}
		if p == nil {
			return nil
		}
		g.log.Info("replaying prefetch profile", "image", ix.ID.Short(), "chunks", len(p.Entries), "bytes", p.Bytes(), "runs", p.Runs)
		return prefetch.Replay(ctx, bc, p, prefetch.ReplayOptions{Ahead: min(memBytes/2, 1<<30), Logger: g.log})
	}
}

func init() {
	c := &command{name: "record", args: "--tag NAME [--mount DIR] -- CMD [ARG...]", help: "run CMD against a private mount and record the order it reads the image's chunks"}
	c.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		tag := fs.String("tag", "", "the image (tag) whose reads to record")
		mnt := fs.String("mount", envOr("GPUWARM_MOUNT", "/gpuwarm"), "mount point CMD expects the image under (must be free)")
		if err := g.parse(c, fs, args); err != nil {
			return err
		}
		if *tag == "" || fs.NArg() == 0 {
			fs.Usage()
			return errors.New("want --tag and a command")
		}
		st, err := g.openStore(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		id, err := store.ResolveTag(ctx, st, *tag)
		if err != nil {
			return err
		}
		// A private, empty cache: every read is a first touch.
		cdir, err := os.MkdirTemp("", "gpuwarm-record-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(cdir)
		bc, err := cache.Open(st, cache.Config{Dir: cdir, MemBytes: 4 << 30, DiskBytes: 1 << 40, Logger: g.log})
		if err != nil {
			return err
		}
		defer bc.Close()
		rec := prefetch.NewRecorder(id)
		os.MkdirAll(*mnt, 0o755)
		srv, err := fusefs.Mount(*mnt, fusefs.Options{Cache: bc, Logger: g.log, Observer: rec, Readahead: -1})
		if err != nil {
			return err
		}
		defer srv.Close()
		cmd := exec.CommandContext(ctx, fs.Arg(0), fs.Args()[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(), "GPUWARM_IMAGE="+filepath.Join(*mnt, *tag))
		start := time.Now()
		runErr := cmd.Run()
		srv.Close()
		if runErr != nil {
			return fmt.Errorf("recorded command failed (%v); profile not saved", runErr)
		}
		run := rec.Profile()
		old, err := prefetch.Load(ctx, st, id)
		if err != nil {
			g.log.Warn("replacing an unreadable profile", "err", err)
			old = nil
		}
		merged := prefetch.Merge(old, run)
		pid, err := prefetch.Save(ctx, st, merged)
		if err != nil {
			return err
		}
		fmt.Printf("recorded %d chunks (%s) in %.2fs; profile %s now covers %d runs, %d chunks\n",
			len(run.Entries), pack.HumanBytes(run.Bytes()), time.Since(start).Seconds(), pid.Short(), merged.Runs, len(merged.Entries))
		return nil
	}
	register(c)

	p := &command{name: "profile", args: "show TAG [--json]", help: "show an image's prefetch profile"}
	p.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(p.name, flag.ContinueOnError)
		jsonOut := fs.Bool("json", false, "print JSON")
		if err := g.parse(p, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 2 || fs.Arg(0) != "show" {
			fs.Usage()
			return errors.New("usage: gpuwarm profile show TAG")
		}
		st, err := g.openStore(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		id, err := store.ResolveTag(ctx, st, fs.Arg(1))
		if err != nil {
			return err
		}
		prof, err := prefetch.Load(ctx, st, id)
		if err != nil {
			return err
		}
		if prof == nil {
			return fmt.Errorf("image %s has no prefetch profile: record one with gpuwarm record --tag %s -- CMD", fs.Arg(1), fs.Arg(1))
		}
		var span uint64
		for _, e := range prof.Entries {
			span = max(span, e.TimeMS)
		}
		if *jsonOut {
			return json.NewEncoder(os.Stdout).Encode(map[string]any{"image": id.String(), "runs": prof.Runs,
				"chunks": len(prof.Entries), "bytes": prof.Bytes(), "span_ms": span})
		}
		fmt.Printf("image   %s\nruns    %d\nchunks  %d (%s)\nspan    %.2fs from first to last first-touch\n", id, prof.Runs, len(prof.Entries), pack.HumanBytes(prof.Bytes()), float64(span)/1000)
		fmt.Println("(the hit rate of a replay is in the mount's .stats file, under Prefetch)")
		return nil
	}
	register(p)
}
