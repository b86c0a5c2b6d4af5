package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/restore/container"
)

func init() {
	register(spec{name: "rm", args: "NAME...", help: "remove containers of this worker (stopping them), or delete tags (gc then frees what only they used)",
		new: func() command { return &rmOptions{} }})
}

type rmOptions struct {
	cli
	store        storeFlags
	ctr          containerFlags
	json         bool
	tag, ctrOnly bool
}

func (o *rmOptions) flags(fs *flagSet) {
	o.store.register(fs)
	fs.BoolVar(&o.json, "json", false, "print the removed tags and containers as JSON")
	fs.BoolVar(&o.tag, "tag", false, "the names are tags (where a container has the same name)")
	fs.BoolVar(&o.ctrOnly, "container", false, "the names are containers")
	o.ctr.register(fs)
}

// rmResult lists the tags removed (before a failure, with --json).
type rmResult struct {
	Removed    []string `json:"removed"`
	Containers []string `json:"containers,omitempty"`
}

func (o *rmOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 1, -1, "at least one container or tag"); err != nil {
		return err
	}
	if o.tag && o.ctrOnly {
		return usagef("--tag and --container: choose one")
	}
	res := rmResult{Removed: []string{}}
	fail := func(err error) error {
		if o.json {
			printJSON(o.out, res)
		}
		return err
	}
	var tags []string
	var rc *container.Runc
	for _, n := range args {
		c, cerr := container.Load(o.ctr.dir, n)
		if o.tag || (cerr != nil && !o.ctrOnly) {
			tags = append(tags, n)
			continue
		}
		if cerr != nil {
			return fail(cerr)
		}
		if rc == nil {
			var err error
			if rc, _, err = o.ctr.runc(ctx, false); err != nil {
				return fail(err)
			}
		}
		if err := stopContainer(ctx, rc, n, 0); err != nil {
			return fail(err)
		}
		if err := c.Remove(ctx, rc); err != nil {
			return fail(fmt.Errorf("remove container %s: %w", n, err))
		}
		res.Containers = append(res.Containers, n)
		if !o.json {
			fmt.Fprintf(o.out, "removed container %s\n", n)
		}
	}
	if len(tags) > 0 {
		st, err := o.store.open(ctx)
		if err != nil {
			return fail(err)
		}
		defer st.Close()
		for _, t := range tags {
			if err := st.Delete(ctx, store.Handle{Kind: store.Tag, Name: t}); err != nil {
				if errors.Is(err, store.ErrNotFound) {
					err = fmt.Errorf("no container or tag %q (gpuwarm ps lists containers; tags are in %s)", t, st.Location())
				}
				return fail(err)
			}
			res.Removed = append(res.Removed, t)
			if !o.json {
				fmt.Fprintf(o.out, "removed tag %s\n", t)
			}
		}
	}
	if o.json {
		return printJSON(o.out, res)
	}
	return nil
}
