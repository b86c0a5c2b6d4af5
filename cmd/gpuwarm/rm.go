package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/gpuwarm/gpuwarm/manifest/store"
)

func init() {
	register(spec{name: "rm", args: "TAG...", help: "delete tags (gc then frees what only they used)",
		new: func() command { return &rmOptions{} }})
}

type rmOptions struct {
	cli
	store storeFlags
	json  bool
}

func (o *rmOptions) flags(fs *flagSet) {
	o.store.register(fs)
	fs.BoolVar(&o.json, "json", false, "print the removed tags as JSON")
}

// rmResult lists the tags removed (before a failure, with --json).
type rmResult struct {
	Removed []string `json:"removed"`
}

func (o *rmOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 1, -1, "at least one tag"); err != nil {
		return err
	}
	st, err := o.store.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	removed := []string{}
	for _, t := range args {
		if err := st.Delete(ctx, store.Handle{Kind: store.Tag, Name: t}); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				err = fmt.Errorf("no tag %q in %s", t, st.Location())
			}
			if o.json {
				printJSON(o.out, rmResult{removed})
			}
			return err
		}
		removed = append(removed, t)
		if !o.json {
			fmt.Fprintf(o.out, "removed tag %s\n", t)
		}
	}
	if o.json {
		return printJSON(o.out, rmResult{removed})
	}
	return nil
}
