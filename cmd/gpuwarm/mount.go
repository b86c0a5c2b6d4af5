package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/internal/sdnotify"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/restore/report"
)

func init() {
	register(spec{name: "mount", args: "[MOUNTPOINT]", help: "serve every tagged image read-only at MOUNTPOINT/<tag>/ (the worker's boot daemon)",
		new: func() command { return &mountOptions{} }})
}

type mountOptions struct {
	cli
	store        storeFlags
	cache        cacheFlags
	tagTTL       time.Duration
	noPass       bool
	readahead    int
	posixACL     bool
	readers      int
	uring        bool
	uringEntries int
	spin         time.Duration
	debug        bool
	noPrefetch   bool
	warmPages    bool
	assemble     bool
	preload      string
	cpuProfile   string
	nonEmpty     bool
	group        string
	publicStats  bool
	metricsAddr  string
	reports      string
}

func (o *mountOptions) flags(fs *flagSet) {
	o.store.register(fs)
	o.cache.register(fs)
	fs.duration(&o.tagTTL, "tag-ttl", 2*time.Second, false, "how long a tag's image is trusted before it is looked up again")
	fs.BoolVar(&o.noPass, "no-passthrough", false, "never serve files by FUSE passthrough")
	fs.intRange(&o.readahead, "readahead", 2, -1, 64, "chunks fetched ahead of sequential reads (-1: none)")
	fs.BoolVar(&o.posixACL, "posix-acl", false, "have the kernel enforce the POSIX ACLs packed with the files")
	fs.intRange(&o.readers, "fuse-readers", 0, 0, 1024, "goroutines reading /dev/fuse (0: a quarter of GOMAXPROCS, at least 2)")
	fs.BoolVar(&o.uring, "fuse-uring", false, "take FUSE requests through io_uring queues where the kernel offers them (Linux 6.14+)")
	fs.intRange(&o.uringEntries, "fuse-uring-entries", 0, 0, 1<<17, "with --fuse-uring: requests each CPU's ring holds (0: automatic; too many: /dev/fuse)")
	fs.duration(&o.spin, "fuse-spin", fusefs.DefaultSpin(), true, "one thread polls /dev/fuse for up to this long after each request (0: sleeping readers)")
	fs.BoolVar(&o.debug, "debug", false, "log every FUSE request")
	fs.BoolVar(&o.noPrefetch, "no-prefetch", false, "do not replay images' prefetch profiles")
	fs.BoolVar(&o.warmPages, "warm-page-cache", true, "replays also fill the kernel's page cache of the files they bring in")
	fs.BoolVar(&o.assemble, "assemble-files", true, "copy cached multi-chunk files whole into the disk tier for passthrough")
	fs.StringVar(&o.preload, "preload", "", "comma-separated `TAGS` (image IDs, * for all) loaded and replayed at start")
	fs.env("preload", "GPUWARM_PRELOAD")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the daemon to `FILE`")
	fs.StringVar(&o.group, "group", "", "only root and this `GROUP` (name or GID) may list and enter the mount")
	fs.env("group", "GPUWARM_MOUNT_GROUP")
	fs.BoolVar(&o.publicStats, "public-stats", false, "let every user read MOUNTPOINT/.stats (default: root only)")
	fs.BoolVar(&o.nonEmpty, "nonempty", false, "mount over a directory that holds files (they are hidden while mounted)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics and /healthz on `ADDR` (e.g. 127.0.0.1:9469; default off)")
	fs.env("metrics-addr", "GPUWARM_METRICS_ADDR")
	reportsFlag(fs, &o.reports)
}

// reportsFlag is the spool restores report to and the mount collects from.
func reportsFlag(fs *flagSet, p *string) {
	fs.StringVar(p, "restore-reports", report.DefaultDir, "`DIR` where restores leave their figures for the mount's metrics")
	fs.env("restore-reports", "GPUWARM_RESTORE_REPORTS")
}

func (o *mountOptions) run(ctx context.Context, args []string) error {
	dir, err := mountPoint(args)
	if err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" {
		// The cache's chunks live outside the Go heap (mapped arenas): what
		// the heap gains between collections is per-request garbage, and
		// every collection also empties go-fuse's pools of reply buffers,
		// whose refills are zeroed. Collecting at 5x the live heap (tens of
		// MB) instead of 2x made a cold sequential pass 14% faster on the
		// 2-CPU VM (690 against 605 MB/s).
		debug.SetGCPercent(400)
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	// A stat of a mount point where a stopped daemon's mount still is never
	// returns (the kernel asks that daemon): look with a bound, and leave
	// such a mount point to the mount, which says what it found there.
	if missing, known := mountPointMissing(dir, 5*time.Second); known && missing {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cannot create the mount point: %w", err)
		}
	}
	gid, err := lookupGroup(o.group)
	if err != nil {
		return err
	}
	st, err := o.store.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	// Every line of the daemon names its store and mount.
	o.log = o.log.With("store", st.Location(), "mount", dir)
	bc, err := cache.Open(st, cache.Config{Dir: o.cache.dir, MemBytes: o.cache.mem, DiskBytes: o.cache.disk, Fetches: o.cache.fetches, Logger: o.log})
	if err != nil {
		return err
	}
	defer bc.Close()
	mopt := fusefs.Options{Cache: bc, Logger: o.log, TagTTL: o.tagTTL, NoPassthrough: o.noPass, Readahead: o.readahead,
		Debug: o.debug, AssembleFiles: o.assemble, Readers: o.readers, POSIXACL: o.posixACL, URing: o.uring,
		URingEntries: o.uringEntries, Spin: o.spin, NonEmpty: o.nonEmpty,
		Group: gid, PublicStats: o.publicStats}
	if !o.noPrefetch {
		fetch := prefetch.NewFetcher(ctx, st)
		mopt.Loading = func(id digest.ID) { fetch.Start(id) }
		mopt.OnImage = o.replayOnLoad(ctx, fetch, bc)
	}
	fsys := fusefs.New(mopt)
	if names := splitList(o.preload); len(names) > 0 {
		// While the kernel sets the mount up: the replays get going before
		// the first program can even start.
		go func() {
			start := time.Now()
			if err := fsys.Preload(ctx, names); err != nil {
				o.log.Warn("preloading images failed; they load on first access instead", "err", err)
				return
			}
			o.log.Info("images preloaded", "images", names, "seconds", time.Since(start).Seconds())
		}()
	}
	// The control socket and the metrics listener are up before the mount
	// appears: whoever sees the mount can reach them (/healthz says 503
	// until the mount serves).
	stopControl, err := serveControl(ctx, o.cache.dir, bc, st)
	if err != nil {
		o.log.Warn("no control socket: gpuwarm cache cannot reach this mount", "err", err)
	} else {
		defer stopControl()
	}
	if o.metricsAddr != "" {
		stop, err := serveMetrics(ctx, o.metricsAddr, dir, newMetricsCollector(fsys, o.reports), version)
		if err != nil {
			return err
		}
		defer stop()
		o.log.Info("serving metrics", "addr", o.metricsAddr, "paths", "/metrics /healthz")
	}
	srv, err := fsys.Mount(dir)
	if err != nil {
		return err
	}
	o.log.Info("mounted", "dir", dir, "store", st.Location(), "cache", o.cache.dir,
		"mem", formatSize(o.cache.mem), "disk", formatSize(o.cache.disk))
	// A supervisor (systemd, Type=notify) starts what reads from the mount
	// only now.
	if _, err := sdnotify.Notify("READY=1\nSTATUS=serving " + dir + " from " + st.Location()); err != nil {
		o.log.Warn("cannot tell the supervisor the mount is ready", "err", err)
	}
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	select {
	case <-done:
		o.log.Info("unmounted from outside; exiting", "dir", dir)
		sdnotify.Notify("STOPPING=1\nSTATUS=unmounted from outside")
	case <-ctx.Done():
		o.log.Info("signal received; unmounting", "dir", dir)
		sdnotify.Notify("STOPPING=1\nSTATUS=unmounting " + dir)
		if err := srv.Unmount(); err != nil {
			o.log.Warn("unmount failed; detaching", "err", err)
			fusefs.Unmount(dir)
		}
		<-done
	}
	b, _ := json.Marshal(bc.Stats())
	o.log.Info("cache stats", "stats", string(b))
	// The replays' hit rates as they stand at the end (profile show).
	for id, ob := range srv.FS().Observers() {
		if r, ok := ob.(*prefetch.Replayer); ok {
			if err := prefetch.SaveLastReplay(o.cache.dir, id, r.Last()); err != nil {
				o.log.Warn("cannot record the replay's hit rate", "err", err)
			}
		}
	}
	return nil
}

// replayOnLoad replays an image's prefetch profile when the mount first
// loads it. A missing profile is normal; a bad one is logged and ignored.
// With --warm-page-cache the replay also puts the chunks it brings in into
// the kernel's page cache of their files (fusefs.Warmer), up to the same
// bound as the replay runs ahead of the reader.
func (o *mountOptions) replayOnLoad(ctx context.Context, fetch *prefetch.Fetcher, bc *cache.Cache) func(*fusefs.FS, *manifest.Index) manifest.Observer {
	return func(fsys *fusefs.FS, ix *manifest.Index) manifest.Observer {
		p, err := fetch.Take(ix.ID)
		if err != nil {
			o.log.Warn("ignoring the image's prefetch profile; booting without it", "image", ix.ID.Short(), "err", err)
			return nil
		}
		if p == nil {
			return nil
		}
		o.log.Info("replaying prefetch profile", "image", ix.ID.Short(), "chunks", len(p.Entries), "bytes", p.Bytes(), "runs", p.Runs)
		ahead := min(o.cache.mem/2, 1<<30)
		ro := prefetch.ReplayOptions{Ahead: ahead, Logger: o.log}
		var w *fusefs.Warmer
		if o.warmPages {
			w = fsys.NewWarmer(ix, p.ChunkIDs(), ahead)
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
			if err := prefetch.SaveLastReplay(o.cache.dir, ix.ID, r.Last()); err != nil {
				o.log.Warn("cannot record the replay's hit rate", "err", err)
			}
		}()
		return r
	}
}

func init() {
	register(spec{name: "umount", args: "[MOUNTPOINT]", help: "unmount a gpuwarm mount (its daemon then exits)",
		new: func() command { return &umountOptions{} }})
}

type umountOptions struct {
	cli
	lazy, json bool
}

func (o *umountOptions) flags(fs *flagSet) {
	fs.BoolVar(&o.lazy, "lazy", false, "detach now even if files are open (MNT_DETACH)")
	fs.BoolVar(&o.json, "json", false, "print the result as JSON")
}

func (o *umountOptions) run(ctx context.Context, args []string) error {
	dir, err := mountPoint(args)
	if err != nil {
		return err
	}
	if o.lazy {
		err = detach(dir)
	} else {
		err = fusefs.Unmount(dir)
	}
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(o.out, struct {
			Mountpoint string `json:"mountpoint"`
			Lazy       bool   `json:"lazy"`
		}{dir, o.lazy})
	}
	fmt.Fprintf(o.out, "unmounted %s\n", dir)
	return nil
}

// lookupGroup resolves --group: "" is none (0), else a group name or GID.
func lookupGroup(g string) (int, error) {
	if g == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(g); err == nil {
		if n <= 0 {
			return 0, usagef("--group %q: name a group other than root's", g)
		}
		return n, nil
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		return 0, usagef("--group %q: %v", g, err)
	}
	n, err := strconv.Atoi(grp.Gid)
	if err != nil || n <= 0 {
		return 0, usagef("--group %q: name a group other than root's", g)
	}
	return n, nil
}

// mountPointMissing reports whether dir does not exist; known is false
// when the stat did not answer within limit (a hung mount is there).
func mountPointMissing(dir string, limit time.Duration) (missing, known bool) {
	done := make(chan error, 1)
	go func() {
		_, err := os.Stat(dir)
		done <- err
	}()
	select {
	case err := <-done:
		return errors.Is(err, fs.ErrNotExist), true
	case <-time.After(limit):
		return false, false
	}
}
