package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/fusefs/cache"
	"github.com/gpuwarm/gpuwarm/internal/sdnotify"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/prefetch"
)

type cacheFlags struct {
	dir       string
	mem, disk byteSize
	fetches   int
}

func (c *cacheFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.dir, "cache-dir", envOr("GPUWARM_CACHE_DIR", "/var/cache/gpuwarm"), "`DIR` of the disk tier of the block cache (env GPUWARM_CACHE_DIR)")
	c.mem = 2 << 30
	c.disk = 50 << 30
	if v := os.Getenv("GPUWARM_MEM_CACHE"); v != "" {
		c.mem.Set(v)
	}
	if v := os.Getenv("GPUWARM_DISK_CACHE"); v != "" {
		c.disk.Set(v)
	}
	fs.Var(&c.mem, "mem-cache", "memory tier `SIZE` (env GPUWARM_MEM_CACHE)")
	fs.Var(&c.disk, "disk-cache", "disk tier `SIZE` (env GPUWARM_DISK_CACHE)")
	fs.IntVar(&c.fetches, "fetches", 64, "concurrent store reads (half kept for demand reads)")
}

func init() {
	c := &command{name: "mount", args: "MOUNTPOINT", help: "serve every tagged image read-only at MOUNTPOINT/<tag>/ (the worker's boot daemon)"}
	c.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		var cf cacheFlags
		cf.register(fs)
		tagTTL := fs.Duration("tag-ttl", 2*time.Second, "how long a tag's image is trusted before it is looked up again")
		noPass := fs.Bool("no-passthrough", false, "never use FUSE passthrough")
		readahead := fs.Int("readahead", 2, "chunks fetched ahead of sequential reads (-1: none)")
		acl := fs.Bool("posix-acl", false, "have the kernel enforce the POSIX ACLs packed with the files (off: served as xattrs, permission checks use the mode bits)")
		readers := fs.Int("fuse-readers", 0, "goroutines waiting for FUSE requests (0: a quarter of GOMAXPROCS, at least 2; GOMAXPROCS is raised to this plus 2)")
		uring := fs.Bool("fuse-uring", false, "have the kernel send FUSE requests through io_uring queues, one per CPU, each answered by a thread pinned to its CPU, where it offers them (Linux 6.14+, fuse module parameter enable_uring=1); through /dev/fuse otherwise")
		spin := fs.Duration("fuse-spin", fusefs.DefaultSpin(), "one thread answers /dev/fuse's requests and reads on without sleeping for up to this long after each, as long as they come close together (0: go-fuse's readers, which sleep in read(2)); default on machines of 8 CPUs or more, where it costs one core during bursts and saves a wakeup per request")
		uringEntries := fs.Int("fuse-uring-entries", 0, "with --fuse-uring: requests each CPU's ring holds at once, each with a 1 MiB buffer (0: 4, fewer on machines of more than 32 CPUs, at least 2)")
		debug := fs.Bool("debug", false, "log every FUSE request")
		noPrefetch := fs.Bool("no-prefetch", false, "do not replay images' prefetch profiles")
		warmPages := fs.Bool("warm-page-cache", true, "a replay also puts the chunks it brings in into the kernel's page cache of their files (up to half the memory tier, 1 GiB at most), so the program's reads of them need no round trip to the daemon (=false: only into the block cache)")
		assemble := fs.Bool("assemble-files", true, "copy a multi-chunk file whose chunks are all cached into one disk-tier entry, so later opens are served by FUSE passthrough at the disk's speed (costs its size in the disk tier; =false: never)")
		preload := fs.String("preload", os.Getenv("GPUWARM_PRELOAD"), "comma-separated `TAGS` (or image IDs; * for all) whose images are loaded, and their prefetch profiles replayed, as soon as the daemon starts, before anything reads them (env GPUWARM_PRELOAD)")
		cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the daemon to `FILE` until it exits")
		if err := g.parse(c, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			fs.Usage()
			return fmt.Errorf("want a mount point")
		}
		dir := fs.Arg(0)
		if *cpuProfile != "" {
			f, err := os.Create(*cpuProfile)
			if err != nil {
				return err
			}
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
		if err := os.MkdirAll(dir, 0o755); err != nil && !os.IsExist(err) {
			g.log.Warn("cannot create mount point", "dir", dir, "err", err)
		}
		st, err := g.openStore(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		bc, err := cache.Open(st, cache.Config{Dir: cf.dir, MemBytes: int64(cf.mem), DiskBytes: int64(cf.disk), Fetches: cf.fetches, Logger: g.log})
		if err != nil {
			return err
		}
		defer bc.Close()
		mopt := fusefs.Options{Cache: bc, Logger: g.log, TagTTL: *tagTTL,
			NoPassthrough: *noPass, Readahead: *readahead, Debug: *debug, AssembleFiles: *assemble, Readers: *readers, POSIXACL: *acl, URing: *uring, URingEntries: *uringEntries, Spin: *spin}
		if !*noPrefetch {
			ps := &profiles{ctx: ctx, st: st}
			mopt.Loading = func(id digest.ID) { ps.start(id) }
			mopt.OnImage = prefetchOnImage(ctx, g, ps, bc, int64(cf.mem), cf.dir, *warmPages)
		}
		fsys := fusefs.New(mopt)
		if names := splitList(*preload); len(names) > 0 {
			// While the kernel sets the mount up: the replays get going
			// before the first program can even start.
			go func() {
				start := time.Now()
				if err := fsys.Preload(ctx, names); err != nil {
					g.log.Warn("preloading images failed; they load on first access instead", "err", err)
					return
				}
				g.log.Info("images preloaded", "images", names, "seconds", time.Since(start).Seconds())
			}()
		}
		srv, err := fsys.Mount(dir)
		if err != nil {
			return err
		}
		g.log.Info("mounted", "dir", dir, "store", st.Location(), "cache", cf.dir,
			"mem", int64(cf.mem), "disk", int64(cf.disk))
		// A supervisor (systemd, Type=notify) starts what reads from the
		// mount only now.
		if _, err := sdnotify.Notify("READY=1\nSTATUS=serving " + dir + " from " + st.Location()); err != nil {
			g.log.Warn("cannot tell the supervisor the mount is ready", "err", err)
		}
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		select {
		case <-done:
			g.log.Info("unmounted from outside; exiting", "dir", dir)
			sdnotify.Notify("STOPPING=1\nSTATUS=unmounted from outside")
		case <-ctx.Done():
			g.log.Info("signal received; unmounting", "dir", dir)
			sdnotify.Notify("STOPPING=1\nSTATUS=unmounting " + dir)
			if err := srv.Unmount(); err != nil {
				g.log.Warn("unmount failed; detaching", "err", err)
				fusefs.Unmount(dir)
			}
			<-done
		}
		b, _ := json.Marshal(bc.Stats())
		g.log.Info("cache stats", "stats", string(b))
		// The replays' hit rates as they stand at the end (profile show).
		for id, o := range srv.FS().Observers() {
			if r, ok := o.(*prefetch.Replayer); ok {
				if err := prefetch.SaveLastReplay(cf.dir, id, r.Last()); err != nil {
					g.log.Warn("cannot record the replay's hit rate", "err", err)
				}
			}
		}
		return nil
	}
	register(c)

	u := &command{name: "umount", args: "MOUNTPOINT", help: "unmount a gpuwarm mount (its daemon then exits)"}
	u.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(u.name, flag.ContinueOnError)
		lazy := fs.Bool("lazy", false, "detach now even if files are open (MNT_DETACH)")
		if err := g.parse(u, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			fs.Usage()
			return fmt.Errorf("want a mount point")
		}
		if *lazy {
			return detach(fs.Arg(0))
		}
		return fusefs.Unmount(fs.Arg(0))
	}
	register(u)
}
