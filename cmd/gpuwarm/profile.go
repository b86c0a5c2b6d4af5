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
	"sync"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/prefetch"
)

// profiles fetches images' prefetch profiles as soon as their IDs are
// known (fusefs.Options.Loading), alongside their manifests: a round trip
// to the store less before a replay starts.
type profiles struct {
	ctx context.Context
	st  store.Store
	m   sync.Map // digest.ID -> *profileLoad
}

type profileLoad struct {
	done chan struct{}
	p    *prefetch.Profile
	err  error
}

func (ps *profiles) start(id digest.ID) *profileLoad {
	l := &profileLoad{done: make(chan struct{})}
	for {
		v, loaded := ps.m.LoadOrStore(id, l)
		if !loaded {
			break
		}
		old := v.(*profileLoad)
		select {
		case <-old.done:
			if old.err == nil {
				return old
			}
			// A failed fetch (the manifest's load failed too, say, and
			// is being retried) is not reused: fetch again.
			ps.m.CompareAndDelete(id, old)
			continue
		default:
			return old
		}
	}
	go func() {
		l.p, l.err = prefetch.Load(ps.ctx, ps.st, id)
		close(l.done)
	}()
	return l
}

// take waits for the profile of id (starting its fetch if need be) and
// forgets it: an image loads once per mount.
func (ps *profiles) take(id digest.ID) (*prefetch.Profile, error) {
	l := ps.start(id)
	<-l.done
	ps.m.Delete(id)
	return l.p, l.err
}

// prefetchOnImage replays an image's profile when the mount first loads it.
// A missing profile is normal; a bad one is logged and ignored.
//
// With warm set, the replay also puts the chunks it brings in into the
// kernel's page cache of their files (fusefs.Warmer), up to the same bound
// as the replay runs ahead of the reader.
func prefetchOnImage(ctx context.Context, g *globals, ps *profiles, bc *cache.Cache, memBytes int64, cacheDir string, warm bool) func(*fusefs.FS, *manifest.Index) manifest.Observer {
	return func(fsys *fusefs.FS, ix *manifest.Index) manifest.Observer {
		p, err := ps.take(ix.ID)
		if err != nil {
			g.log.Warn("ignoring the image's prefetch profile; booting without it", "image", ix.ID.Short(), "err", err)
			return nil
		}
		if p == nil {
			return nil
		}
		g.log.Info("replaying prefetch profile", "image", ix.ID.Short(), "chunks", len(p.Entries), "bytes", p.Bytes(), "runs", p.Runs)
		ahead := min(memBytes/2, 1<<30)
		ro := prefetch.ReplayOptions{Ahead: ahead, Logger: g.log}
		var w *fusefs.Warmer
		if warm {
			ids := make([]digest.ID, len(p.Entries))
			for i, e := range p.Entries {
				ids[i] = e.ID
			}
			w = fsys.NewWarmer(ix, ids, ahead)
			ro.OnReady = w.Ready
		}
		r := prefetch.Replay(ctx, bc, p, ro)
		if w != nil {
			w.Start(ctx, r.WarmedChunk)
		}
		go func() {
			// Record how it went once the profile is done (and again at
			// unmount, when the program has read more).
			r.Wait()
			if err := prefetch.SaveLastReplay(cacheDir, ix.ID, r.Last()); err != nil {
				g.log.Warn("cannot record the replay's hit rate", "err", err)
			}
		}()
		return r
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
		cacheDir := fs.String("cache-dir", envOr("GPUWARM_CACHE_DIR", "/var/cache/gpuwarm"), "this worker's block cache `DIR`, where the last replay's hit rate is kept (env GPUWARM_CACHE_DIR)")
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
		last, err := prefetch.LoadLastReplay(*cacheDir, id)
		if err != nil {
			g.log.Warn("ignoring the last replay's record", "err", err)
		}
		if *jsonOut {
			out := map[string]any{"image": id.String(), "runs": prof.Runs,
				"chunks": len(prof.Entries), "bytes": prof.Bytes(), "span_ms": span}
			if last != nil {
				out["last_replay"] = last
			}
			return json.NewEncoder(os.Stdout).Encode(out)
		}
		fmt.Printf("image   %s\nruns    %d\nchunks  %d (%s)\nspan    %.2fs from first to last first-touch\n", id, prof.Runs, len(prof.Entries), pack.HumanBytes(prof.Bytes()), float64(span)/1000)
		if last != nil {
			fmt.Printf("last replay on this worker: %s at %s: hit rate %.0f%% (%d of %d touched were in ahead), %d fetched ahead, %d put into the page cache (reads of those are not seen)\n",
				last.Kind, last.When.Local().Format("2006-01-02 15:04:05"), 100*last.HitRate, last.Hits, last.Touched, last.Fetched, last.Warmed)
		} else {
			fmt.Printf("last replay on this worker: none recorded under %s (a mount replaying it, or gpuwarm restore --lazy, records one)\n", *cacheDir)
		}
		return nil
	}
	register(p)
}
