package main

import (
	"context"
	"fmt"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/gc"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
)

func init() {
	register(spec{name: "gc", args: "[--dry-run]", help: "delete chunks, images and profiles that no tag needs",
		new: func() command { return &gcOptions{} }})
}

type gcOptions struct {
	cli
	store     storeFlags
	dry, json bool
	grace     time.Duration
}

func (o *gcOptions) flags(fs *flagSet) {
	o.store.register(fs)
	fs.BoolVar(&o.dry, "dry-run", false, "report what would be deleted")
	fs.duration(&o.grace, "grace", time.Hour, true, "keep unreferenced objects younger than this (0: none)")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
}

func (o *gcOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 0, 0, "no arguments"); err != nil {
		return err
	}
	st, err := o.store.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	grace := o.grace
	if grace == 0 {
		grace = -1 // gc.Options: negative means none, zero the default
	}
	rep, err := gc.Run(ctx, st, gc.Options{DryRun: o.dry, Grace: grace, Logger: o.log})
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(o.out, rep)
	}
	verb := "deleted"
	if o.dry {
		verb = "would delete"
	}
	fmt.Fprintf(o.out, "live: %d images, %d chunks, %d profiles\n", rep.LiveImages, rep.LiveChunks, rep.LiveProfiles)
	fmt.Fprintf(o.out, "%s: %d images, %d chunks, %d profiles (%s); kept %d objects younger than %v\n", verb,
		rep.DeletedManifests, rep.DeletedChunks, rep.DeletedProfiles+rep.DeletedProfileRefs, pack.HumanBytes(rep.DeletedBytes), rep.KeptYoung, o.grace)
	for _, t := range rep.DanglingTags {
		fmt.Fprintf(o.out, "warning: tag %q names a missing image\n", t)
	}
	return nil
}
