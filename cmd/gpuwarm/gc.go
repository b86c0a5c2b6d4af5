package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/gc"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

func init() {
	c := &command{name: "gc", args: "[--dry-run]", help: "delete chunks, images and profiles that no tag needs"}
	c.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		dry := fs.Bool("dry-run", false, "report what would be deleted")
		grace := fs.Duration("grace", time.Hour, "keep unreferenced objects younger than this")
		jsonOut := fs.Bool("json", false, "print the report as JSON")
		if err := g.parse(c, fs, args); err != nil {
			return err
		}
		st, err := g.openStore(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		if *grace == 0 {
			*grace = -1
		}
		rep, err := gc.Run(ctx, st, gc.Options{DryRun: *dry, Grace: *grace, Logger: g.log})
		if err != nil {
			return err
		}
		if *jsonOut {
			return json.NewEncoder(os.Stdout).Encode(rep)
		}
		verb := "deleted"
		if *dry {
			verb = "would delete"
		}
		fmt.Printf("live: %d images, %d chunks, %d profiles\n", rep.LiveImages, rep.LiveChunks, rep.LiveProfiles)
		fmt.Printf("%s: %d images, %d chunks, %d profiles (%s); kept %d objects younger than %v\n", verb,
			rep.DeletedManifests, rep.DeletedChunks, rep.DeletedProfiles+rep.DeletedProfileRefs, pack.HumanBytes(rep.DeletedBytes), rep.KeptYoung, *grace)
		for _, t := range rep.DanglingTags {
			fmt.Printf("warning: tag %q names a missing image\n", t)
		}
		return nil
	}
	register(c)

	rm := &command{name: "rm", args: "TAG...", help: "delete tags (gc then frees what only they used)"}
	rm.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(rm.name, flag.ContinueOnError)
		if err := g.parse(rm, fs, args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			fs.Usage()
			return fmt.Errorf("want at least one tag")
		}
		st, err := g.openStore(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		for _, t := range fs.Args() {
			if err := st.Delete(ctx, store.Handle{Kind: store.Tag, Name: t}); err != nil {
				if errors.Is(err, store.ErrNotFound) {
					return fmt.Errorf("no tag %q in %s", t, st.Location())
				}
				return err
			}
			fmt.Printf("removed tag %s\n", t)
		}
		return nil
	}
	register(rm)
}
