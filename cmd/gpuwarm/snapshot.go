package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/restore"
)

const runDir = "/run/gpuwarm"

func init() {
	r := &command{name: "run", args: "[--name N] -- CMD [ARG...]", help: "start a workload that can be snapshotted (fresh PID, IPC and UTS namespaces)"}
	r.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(r.name, flag.ContinueOnError)
		name := fs.String("name", "", "record the PID as `NAME` (gpuwarm snapshot --name NAME)")
		logPath := fs.String("log", "", "append the workload's stdout and stderr to `FILE` (default /var/log/gpuwarm/NAME.log, or /dev/null)")
		wait := fs.Bool("wait", false, "wait for the workload to exit")
		hostPIDs := fs.Bool("host-pids", false, "stay in the host's PID namespace (CUDA workloads: the driver needs /proc to match its PID; restores then keep the original PIDs)")
		if err := g.parse(r, fs, args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			fs.Usage()
			return errors.New("want a command after --")
		}
		if *name != "" {
			if err := manifest.ValidTag(*name); err != nil {
				return fmt.Errorf("--name: %w", err)
			}
		}
		out := *logPath
		if out == "" && *name != "" {
			out = filepath.Join("/var/log/gpuwarm", *name+".log")
		}
		var logf *os.File
		if out != "" {
			os.MkdirAll(filepath.Dir(out), 0o755)
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				return err
			}
			defer f.Close()
			logf = f
		}
		cmd, err := restore.Run(restore.RunOptions{Args: fs.Args(), Env: os.Environ(), Stdout: logf, Stderr: logf, HostPIDs: *hostPIDs})
		if err != nil {
			return err
		}
		if *name != "" {
			os.MkdirAll(runDir, 0o755)
			os.WriteFile(filepath.Join(runDir, *name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
		}
		fmt.Println(cmd.Process.Pid)
		if *wait {
			return cmd.Wait()
		}
		cmd.Process.Release()
		return nil
	}
	register(r)

	s := &command{name: "snapshot", args: "--pid PID|--name N --tag NAME [--leave-running]", help: "checkpoint a running workload into the store"}
	s.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(s.name, flag.ContinueOnError)
		pid := fs.Int("pid", 0, "`PID` of the tree's root (from gpuwarm run)")
		name := fs.String("name", "", "workload `NAME` given to gpuwarm run")
		tag := fs.String("tag", "", "tag `NAME` for the snapshot (required)")
		leave := fs.Bool("leave-running", false, "keep the workload running after the dump")
		jsonOut := fs.Bool("json", false, "print the result as JSON")
		if err := g.parse(s, fs, args); err != nil {
			return err
		}
		if err := manifest.ValidTag(*tag); err != nil {
			return fmt.Errorf("--tag: %w", err)
		}
		if *pid == 0 && *name != "" {
			b, err := os.ReadFile(filepath.Join(runDir, *name+".pid"))
			if err != nil {
				return fmt.Errorf("no workload named %q (started with gpuwarm run --name): %w", *name, err)
			}
			*pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if *pid <= 0 {
			fs.Usage()
			return errors.New("want --pid or --name")
		}
		if err := syscall.Kill(*pid, 0); err != nil {
			return fmt.Errorf("no process %d to snapshot: %w", *pid, err)
		}
		c, err := restore.FindCRIU(ctx)
		if err != nil {
			return err
		}
		st, err := g.openStore(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		lock, err := store.AcquireLock(ctx, st, store.WriteLock, 5*time.Minute)
		if err != nil {
			return err
		}
		defer lock.Release(context.WithoutCancel(ctx))
		opt := restore.SnapshotOptions{PID: *pid, LeaveRunning: *leave, Store: st, Logger: g.log}
		if err := gpuSnapshotHooks(ctx, g, &opt); err != nil {
			return err
		}
		res, err := restore.Snapshot(ctx, c, opt)
		if err != nil {
			return err
		}
		if err := store.SetTag(ctx, st, *tag, res.Image); err != nil {
			return err
		}
		if *jsonOut {
			return json.NewEncoder(os.Stdout).Encode(map[string]any{"tag": *tag, "image": res.Image.String(),
				"page_bytes": res.PageBytes, "new_bytes": res.NewBytes, "dump_seconds": res.DumpSeconds, "seconds": res.Total.Seconds()})
		}
		fmt.Printf("snapshot of pid %d stored as %s (image %s)\n", *pid, *tag, res.Image)
		fmt.Printf("  memory %s, %s new in the store\n", pack.HumanBytes(res.PageBytes), pack.HumanBytes(res.NewBytes))
		fmt.Printf("  criu dump %.2fs, total %.2fs\n", res.DumpSeconds, res.Total.Seconds())
		return nil
	}
	register(s)

	rs := &command{name: "restore", args: "NAME [--lazy [--record-profile] | --prefill]", help: "restore a snapshot from the mount; prints the new PID and a timing breakdown"}
	rs.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(rs.name, flag.ContinueOnError)
		mount := fs.String("mount", envOr("GPUWARM_MOUNT", "/gpuwarm"), "gpuwarm mount `DIR` that presents the snapshot (env GPUWARM_MOUNT)")
		lazy := fs.Bool("lazy", false, "run before memory is loaded; pages follow from the cache")
		prefill := fs.Bool("prefill", false, "eager, at gpuwarm's speed: the tree stays stopped while gpuwarm's lazy-pages daemon fills all of its memory in parallel, then runs")
		outPath := fs.String("stdout", "", "connect the workload's stdout and stderr to `FILE` (default /dev/null)")
		wait := fs.Bool("wait", false, "wait for the restored workload to exit")
		jsonOut := fs.Bool("json", false, "print the timing as JSON")
		record := fs.Bool("record-profile", false, "with --lazy: record the order the restored program uses its memory in, and merge it into the snapshot's prefetch profile")
		noPrefetch := fs.Bool("no-prefetch", false, "with --lazy: ignore the snapshot's prefetch profile (fill memory in address order)")
		criuLazy := fs.Bool("criu-lazy-pages", false, "with --lazy: use CRIU's own lazy-pages daemon (fed by gpuwarm's page server) instead of gpuwarm's")
		gpus := fs.String("gpus", envOr("GPUWARM_GPUS", ""), "restore the GPU state onto these GPUs: `LIST` of indices or UUIDs, one per GPU the snapshot held state on (default: the same GPU by UUID, else the same index; env GPUWARM_GPUS)")
		workers := fs.Int("lazy-workers", 8, "with --lazy: memory copies gpuwarm's lazy daemon runs at once")
		if err := g.parse(rs, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			fs.Usage()
			return errors.New("want one snapshot name")
		}
		c, err := restore.FindCRIU(ctx)
		if err != nil {
			return err
		}
		st, err := g.openStore(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		opt := restore.Options{Mount: *mount, Name: fs.Arg(0), Store: st, Lazy: *lazy, Prefill: *prefill, Logger: g.log,
			CRIULazyPages: *criuLazy, LazyWorkers: *workers}
		if *record && !*lazy {
			return errors.New("--record-profile needs --lazy: an eager restore reads memory in CRIU's order, not the program's")
		}
		var rec *prefetch.Recorder
		var ix *manifest.Index
		if *lazy && *prefill {
			return errors.New("--lazy and --prefill: choose one (--prefill waits for all memory before the program runs)")
		}
		if (*lazy || *prefill) && !*criuLazy {
			if ix, err = restore.ManifestOf(ctx, st, *mount, fs.Arg(0)); err != nil {
				return fmt.Errorf("restore: %s: %w", fs.Arg(0), err)
			}
			if *record {
				rec = prefetch.NewRecorder(ix.ID)
				opt.Record = rec
			}
			if !*noPrefetch {
				prof, err := prefetch.Load(ctx, st, ix.ID)
				if err != nil {
					g.log.Warn("ignoring the snapshot's prefetch profile", "err", err)
				}
				opt.Profile = prof
			}
		}
		if *outPath != "" {
			f, err := os.OpenFile(*outPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				return err
			}
			defer f.Close()
			opt.Stdout, opt.Stderr = f, f
		}
		gpuRestoreHooks(ctx, g, &opt, splitList(*gpus))
		p, err := restore.Restore(ctx, c, opt)
		if err != nil {
			return err
		}
		var guardDone func()
		if *lazy {
			if guardDone, err = startGuard(p.PID); err != nil {
				p.Kill()
				return fmt.Errorf("restore: cannot start the guard of the lazy restore: %w", err)
			}
		}
		if !*jsonOut {
			fmt.Printf("restored %s as pid %d (running after %s)\n", fs.Arg(0), p.PID, ms(p.Timing.Running))
		}
		resident, rerr := p.WaitResident(ctx)
		if rerr == nil && guardDone != nil {
			guardDone()
		}
		if rerr != nil && *lazy {
			// Interrupted (or failed) before every lazy page was in place:
			// once this process is gone nobody fills the rest, and the
			// program would read zeros there. Take it down instead.
			p.Kill()
			rerr = fmt.Errorf("restore: lazy memory not all in place, the restored tree was killed: %w", rerr)
		}
		t := p.Timing
		if *jsonOut {
			json.NewEncoder(os.Stdout).Encode(map[string]any{"pid": p.PID, "lazy": *lazy,
				"prepare_s": t.Prepare.Seconds(), "criu_s": t.CRIU.Seconds(), "gpu_s": t.After.Seconds(),
				"running_s": t.Running.Seconds(), "resident_s": resident.Seconds()})
		} else {
			fmt.Printf("  prepare        %s\n  criu restore   %s\n", ms(t.Prepare), ms(t.CRIU))
			if t.After > 0 {
				fmt.Printf("  gpu restore    %s\n", ms(t.After))
			}
			fmt.Printf("  running        %s\n  resident       %s\n", ms(t.Running), ms(resident))
			if ls := p.LazyStats(); ls.Tasks > 0 {
				order := "address order"
				if opt.Profile != nil {
					order = fmt.Sprintf("profile order (%d chunks first)", len(opt.Profile.Entries))
				}
				fmt.Printf("  lazy pages     %s in %d units, %d faults, %s copied ahead of demand, %s\n",
					pack.HumanBytes(ls.Bytes), ls.Units, ls.Faults, pack.HumanBytes(ls.AheadBytes), order)
			}
		}
		if rerr != nil {
			return rerr
		}
		if ls := p.LazyStats(); opt.Profile != nil && ls.Units > 0 {
			// Units the program found in place (or on their way) versus
			// units it had to wait for.
			hits := int64(ls.Units) - ls.FaultCopies
			last := prefetch.LastReplay{Kind: "restore", Chunks: int64(len(opt.Profile.Entries)), Fetched: int64(ls.Units) - ls.FaultCopies,
				Touched: int64(ls.Units), Hits: hits, Misses: ls.FaultCopies}
			if err := prefetch.SaveLastReplay(envOr("GPUWARM_CACHE_DIR", "/var/cache/gpuwarm"), ix.ID, last); err != nil {
				g.log.Warn("cannot record the replay's hit rate", "err", err)
			}
		}
		if rec != nil {
			prof := rec.Profile()
			old, err := prefetch.Load(ctx, st, ix.ID)
			if err != nil {
				g.log.Warn("replacing an unreadable profile", "err", err)
			}
			merged := prefetch.Merge(old, prof)
			if _, err := prefetch.Save(ctx, st, merged); err != nil {
				return fmt.Errorf("restore: saving the profile: %w", err)
			}
			if !*jsonOut {
				fmt.Printf("  profile        %d chunks (%s) touched first, merged over %d runs\n", len(prof.Entries), pack.HumanBytes(prof.Bytes()), merged.Runs)
			}
		}
		if *wait {
			return p.Wait()
		}
		return nil
	}
	register(rs)
}

func ms(d time.Duration) string { return fmt.Sprintf("%8.1f ms", float64(d.Microseconds())/1000) }
