package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/gpu"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/prefetch"
	"github.com/gpuwarm/gpuwarm/restore"
	"github.com/gpuwarm/gpuwarm/restore/container"
	"github.com/gpuwarm/gpuwarm/restore/lazypages"
	"github.com/gpuwarm/gpuwarm/restore/report"
)

func init() {
	register(spec{name: "restore", args: "NAME [--lazy [--record-profile] | --prefill]", help: "restore a snapshot from the mount; prints the new PID and a timing breakdown",
		new: func() command { return &restoreOptions{} }})
}

type restoreOptions struct {
	cli
	store              storeFlags
	cacheDir           cacheFlags // only its directory: where the last replay is recorded
	mount              string
	lazy, prefill      bool
	stdout             string
	wait, json         bool
	record, noPrefetch bool
	recordFor          time.Duration
	criuLazy           bool
	keepCRIULog        bool
	gpus               string
	workers            int
	name               string
	ctr                containerFlags
	reports            string
	quiet              bool
}

func (o *restoreOptions) flags(fs *flagSet) {
	o.store.register(fs)
	o.cacheDir.registerDir(fs)
	mountFlag(fs, &o.mount, "gpuwarm mount `DIR` that presents the snapshot")
	fs.BoolVar(&o.lazy, "lazy", false, "run before memory is loaded; pages follow from the cache")
	fs.BoolVar(&o.prefill, "prefill", false, "keep the tree stopped while gpuwarm fills all of its memory in parallel, then run")
	fs.StringVar(&o.stdout, "stdout", "", "connect the workload's stdout and stderr to `FILE` (default /dev/null)")
	fs.BoolVar(&o.wait, "wait", false, "wait for the restored workload to exit")
	fs.BoolVar(&o.json, "json", false, "print the timing as JSON")
	fs.BoolVar(&o.record, "record-profile", false, "with --lazy: record the program's memory order into the snapshot's profile")
	fs.duration(&o.recordFor, "record-for", 3*time.Second, false, "with --record-profile: how long only the program's own faults bring memory in")
	fs.BoolVar(&o.noPrefetch, "no-prefetch", false, "with --lazy: ignore the snapshot's prefetch profile")
	fs.BoolVar(&o.criuLazy, "criu-lazy-pages", false, "with --lazy: use CRIU's own lazy-pages daemon instead of gpuwarm's")
	fs.BoolVar(&o.keepCRIULog, "keep-criu-log", false, "keep CRIU's log of a restore that succeeds too, in /var/log/gpuwarm")
	fs.env("keep-criu-log", "GPUWARM_KEEP_CRIU_LOG")
	fs.StringVar(&o.gpus, "gpus", "", "put the GPU state on these GPUs: `LIST` of indices or UUIDs (default: the same GPUs)")
	fs.env("gpus", "GPUWARM_GPUS")
	fs.intRange(&o.workers, "lazy-workers", 8, 1, 256, "with --lazy: memory copies gpuwarm's lazy daemon runs at once")
	fs.StringVar(&o.name, "name", "", "a container snapshot's new container `NAME` (default SNAPSHOT-N)")
	o.ctr.register(fs)
	reportsFlag(fs, &o.reports)
	fs.BoolVar(&o.quiet, "quiet", false, "with --prefill: no progress line on the terminal")
}

// restoreResult is what restore --json prints.
type restoreResult struct {
	PID       int     `json:"pid"`
	Container string  `json:"container,omitempty"`
	Lazy      bool    `json:"lazy"`
	Prepare   float64 `json:"prepare_s"`
	CRIU      float64 `json:"criu_s"`
	GPU       float64 `json:"gpu_s"`
	Running   float64 `json:"running_s"`
	Resident  float64 `json:"resident_s"`
	LazyBytes int64   `json:"lazy_bytes,omitempty"`
	LazyUnits int     `json:"lazy_units,omitempty"`
	Faults    int64   `json:"lazy_faults,omitempty"`
	Ahead     int64   `json:"lazy_ahead_bytes,omitempty"`
	Profile   int     `json:"profile_chunks,omitempty"` // chunks of the profile the restore followed
	Recorded  int     `json:"recorded_chunks,omitempty"`
	// Weights the workload's library uploaded from the mount.
	WeightsBytes   int64   `json:"weights_bytes,omitempty"`
	WeightsSeconds float64 `json:"weights_s,omitempty"`
	Error          string  `json:"error,omitempty"`
}

func (o *restoreOptions) run(ctx context.Context, args []string) (err error) {
	if err := wantArgs(args, 1, 1, "one snapshot name"); err != nil {
		return err
	}
	name := args[0]
	if o.record && !o.lazy {
		return usagef("--record-profile needs --lazy: an eager restore reads memory in CRIU's order, not the program's")
	}
	if o.lazy && o.prefill {
		return usagef("--lazy and --prefill: choose one (--prefill waits for all memory before the program runs)")
	}
	c, err := restore.FindCRIU(ctx)
	if err != nil {
		return err
	}
	st, err := o.store.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	opt := restore.Options{Mount: o.mount, Name: name, Store: st, Lazy: o.lazy, Prefill: o.prefill, Logger: o.log,
		CRIULazyPages: o.criuLazy, LazyWorkers: o.workers, KeepCRIULog: o.keepCRIULog}
	var rec *prefetch.Recorder
	ix, err := restore.ManifestOf(ctx, st, o.mount, name)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	opt.Index = ix
	// The GPUs are read once (NVML: tens of milliseconds), while the rest
	// is prepared, for the container's devices and the GPU checks.
	inventory := sync.OnceValues(gpu.ReadInventory)
	if ix.Annotations[gpu.MetaAnnotation] != "" {
		go inventory()
	}
	var ctr *container.Container
	if ix.Annotations[container.AnnImageID] != "" {
		var rc *container.Runc
		// The container's preparation (overlay, config, network
		// namespace) counts in the times the restore reports: its caller
		// waits for it.
		opt.Start = time.Now()
		if ctr, rc, err = o.prepareContainer(ctx, c, name, ix, &opt, inventory); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				ctr.Remove(context.WithoutCancel(ctx), rc)
			}
		}()
	} else if o.name != "" {
		return usagef("--name: %s is a snapshot of a bare process, not of a container", name)
	}
	if (o.lazy || o.prefill) && !o.criuLazy {
		if o.record {
			rec = prefetch.NewRecorder(ix.ID)
			opt.Record, opt.RecordFor = rec, o.recordFor
		}
		if !o.noPrefetch {
			prof, err := prefetch.Load(ctx, st, ix.ID)
			if err != nil {
				o.log.Warn("ignoring the snapshot's prefetch profile", "err", err)
			}
			opt.Profile = prof
		}
	}
	if o.stdout != "" {
		f, err := os.OpenFile(o.stdout, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		opt.Stdout, opt.Stderr = f, f
	}
	gpuRep := restore.GPURestoreHooksOn(&opt, o.log, splitList(o.gpus), inventory)
	wRep := restore.WeightsRestoreHooks(&opt, st, o.mount, o.log, o.warmImages)
	// The worker's mount daemon exports what this restore measured.
	rep := report.Restore{Mode: "eager", Container: ctr != nil}
	switch {
	case o.lazy:
		rep.Mode = "lazy"
	case o.prefill:
		rep.Mode = "prefill"
	}
	reported := false
	writeReport := func(ok bool) {
		if reported {
			return
		}
		reported = true
		rep.OK = ok
		if gpuRep.Meta != nil {
			rep.GPUBytes = int64(gpuRep.Meta.MemoryBytes)
		}
		if ok && wRep.Meta != nil {
			rep.WeightsBytes, rep.WeightsSeconds = wRep.Meta.Bytes, wRep.Duration.Seconds()
		}
		if werr := report.Write(o.reports, rep); werr != nil {
			o.log.Debug("cannot leave the restore's figures for the mount's metrics", "err", werr)
		}
	}
	defer func() { writeReport(err == nil) }()
	bar := newProgress(nil, o.quiet || o.json || !o.prefill, "prefill: memory in place")
	opt.Progress = bar.update
	p, err := restore.Restore(ctx, c, opt)
	bar.done()
	if err != nil {
		return err
	}
	var guardDone func()
	if o.lazy {
		if guardDone, err = startGuard(p.PID); err != nil {
			p.Kill()
			return fmt.Errorf("cannot start the guard of the lazy restore: %w", err)
		}
	}
	if !o.json {
		if ctr != nil {
			fmt.Fprintf(o.out, "restored %s as container %s, pid %d (running after %s)\n", name, ctr.Name, p.PID, ms(p.Timing.Running))
		} else {
			fmt.Fprintf(o.out, "restored %s as pid %d (running after %s)\n", name, p.PID, ms(p.Timing.Running))
		}
	}
	resident, rerr := p.WaitResident(ctx)
	if rerr == nil && guardDone != nil {
		guardDone()
	}
	if rerr != nil && o.lazy {
		// Interrupted (or failed) before every lazy page was in place: once
		// this process is gone nobody fills the rest, and the program would
		// read zeros there. Take it down instead.
		p.Kill()
		rerr = fmt.Errorf("lazy memory not all in place, the restored tree was killed: %w", rerr)
	}
	t := p.Timing
	res := restoreResult{PID: p.PID, Lazy: o.lazy, Container: ctrName(ctr), Prepare: t.Prepare.Seconds(), CRIU: t.CRIU.Seconds(),
		GPU: t.After.Seconds(), Running: t.Running.Seconds(), Resident: resident.Seconds()}
	if wRep.Meta != nil {
		res.WeightsBytes, res.WeightsSeconds = wRep.Meta.Bytes, wRep.Duration.Seconds()
	}
	ls := p.LazyStats()
	if ls.Tasks > 0 {
		res.LazyBytes, res.LazyUnits, res.Faults, res.Ahead = ls.Bytes, ls.Units, ls.Faults, ls.AheadBytes
	}
	rep.Running, rep.Resident, rep.GPU = res.Running, res.Resident, res.GPU
	rep.LazyBytes, rep.Faults = res.LazyBytes, res.Faults
	if opt.Profile != nil {
		res.Profile = len(opt.Profile.Entries)
	}
	if rerr == nil && opt.Profile != nil && ls.Units > 0 {
		last := prefetch.RestoreReplay(int64(len(opt.Profile.Entries)), int64(ls.Units), ls.FaultCopies)
		if err := prefetch.SaveLastReplay(o.cacheDir.dir, ix.ID, last); err != nil {
			o.log.Warn("cannot record the replay's hit rate", "err", err)
		}
	}
	var run, merged *prefetch.Profile
	if rerr == nil && rec != nil {
		run = rec.Profile()
		var replaced error
		merged, _, replaced, err = prefetch.AddRun(ctx, st, run)
		if replaced != nil {
			o.log.Warn("replacing an unreadable profile", "err", replaced)
		}
		if err != nil {
			rerr = fmt.Errorf("saving the profile: %w", err)
		}
		res.Recorded = len(run.Entries)
	}
	if rerr != nil {
		res.Error = rerr.Error()
	}
	if o.json {
		printJSON(o.out, res)
	} else {
		o.printTiming(t, resident, ls, opt.Profile, run, merged)
		if wRep.Meta != nil {
			fmt.Fprintf(o.out, "  weights: %s uploaded by the workload from the mount in %s (%.1f GB/s; allocation %s, pinned staging %s), after %s waiting for its library\n",
				pack.HumanBytes(wRep.Meta.Bytes), ms(wRep.Duration), wRep.GBps(), ms(wRep.Alloc), ms(wRep.Pinned), ms(wRep.Wait))
			if wRep.Moved > 0 {
				fmt.Fprintf(o.out, "  weights: %d tensors at other GPU addresses than before the snapshot (CUDA graphs over them must be captured again)\n", wRep.Moved)
			}
		}
	}
	if rerr != nil {
		return rerr
	}
	writeReport(true)
	if o.wait {
		if ctr != nil {
			// Not our child (runc's): wait for it to be gone.
			for syscall.Kill(p.PID, 0) == nil {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(100 * time.Millisecond):
				}
			}
			return nil
		}
		return p.Wait()
	}
	return nil
}

func (o *restoreOptions) printTiming(t restore.Timing, resident time.Duration, ls lazypages.Stats, prof, run, merged *prefetch.Profile) {
	w := o.out
	fmt.Fprintf(w, "  prepare        %s\n  criu restore   %s\n", ms(t.Prepare), ms(t.CRIU))
	if t.After > 0 {
		fmt.Fprintf(w, "  gpu restore    %s\n", ms(t.After))
	}
	fmt.Fprintf(w, "  running        %s\n  resident       %s\n", ms(t.Running), ms(resident))
	if ls.Tasks > 0 {
		order := "address order"
		if prof != nil {
			order = fmt.Sprintf("profile order (%d chunks first)", len(prof.Entries))
		}
		fmt.Fprintf(w, "  lazy pages     %s in %d units, %d faults, %s copied ahead of demand, %s\n",
			pack.HumanBytes(ls.Bytes), ls.Units, ls.Faults, pack.HumanBytes(ls.AheadBytes), order)
	}
	if merged != nil {
		fmt.Fprintf(w, "  profile        %d chunks (%s) touched first, merged over %d runs\n", len(run.Entries), pack.HumanBytes(run.Bytes()), merged.Runs)
	}
}

func ctrName(c *container.Container) string {
	if c == nil {
		return ""
	}
	return c.Name
}

// warmImages has the mount daemon behind this restore's cache fetch the
// images into it (its parallel fetches, the store's rate), as `gpuwarm cache
// warm` does; without a daemon there, nothing happens.
func (o *restoreOptions) warmImages(ctx context.Context, ids []digest.ID) {
	hc, err := controlClient(o.cacheDir.dir)
	if err != nil {
		o.log.Debug("weights: not warming the cache", "err", err)
		return
	}
	for _, id := range ids {
		body, err := send(ctx, hc, http.MethodPost, controlURL("/v1/warm", url.Values{"image": {id.String()}}))
		if err != nil {
			if ctx.Err() == nil {
				o.log.Debug("weights: warming the cache", "image", id.Short(), "err", err)
			}
			continue
		}
		var last warmProgress
		dec := json.NewDecoder(body)
		for dec.Decode(&last) == nil {
		}
		body.Close()
		o.log.Debug("weights: the mount daemon warmed the cache", "image", id.Short(), "bytes", last.Done, "fetched", last.Fetched, "seconds", last.Seconds, "err", last.Error)
	}
}
