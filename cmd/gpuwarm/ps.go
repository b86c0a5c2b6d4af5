package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gpuwarm/gpuwarm/restore/container"
)

func init() {
	register(spec{name: "ps", args: "[--json]", help: "list this worker's containers: image or snapshot, GPUs, state",
		new: func() command { return &psOptions{} }})
}

type psOptions struct {
	cli
	ctr  containerFlags
	json bool
}

func (o *psOptions) flags(fs *flagSet) {
	o.ctr.register(fs)
	fs.BoolVar(&o.json, "json", false, "print JSON, one object per container")
}

// psEntry is one container as ps --json prints it.
type psEntry struct {
	container.Record
	State string `json:"state"`
	PID   int    `json:"pid,omitempty"`
}

func (o *psOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 0, 0, "no arguments"); err != nil {
		return err
	}
	cs, err := container.List(o.ctr.dir)
	if err != nil {
		return err
	}
	var rc *container.Runc
	if len(cs) > 0 {
		if rc, _, err = o.ctr.runc(ctx, false); err != nil {
			return err
		}
	}
	var listed map[string]container.State
	if rc != nil {
		listed, _ = rc.List(ctx) // nil: asked one by one below
	}
	var entries []psEntry
	for _, c := range cs {
		e := psEntry{Record: c.Record, State: "missing"}
		st, ok := listed[c.Name]
		var err error
		if listed == nil { // runc list failed: one by one
			var p *container.State
			if p, err = rc.State(ctx, c.Name); err == nil {
				st, ok = *p, true
			}
		}
		switch {
		case ok:
			e.State, e.PID = st.Status, st.PID
			if st.Status == "stopped" {
				e.PID = 0
			}
		case err != nil && !errors.Is(err, container.ErrNotExist):
			e.State = "unknown: " + err.Error()
		}
		entries = append(entries, e)
	}
	if o.json {
		for _, e := range entries {
			if err := printJSON(o.out, e); err != nil {
				return err
			}
		}
		return nil
	}
	w := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tSTATE\tPID\tIMAGE\tSNAPSHOT\tGPUS\tCREATED")
	for _, e := range entries {
		pid := "-"
		if e.PID > 0 {
			pid = fmt.Sprint(e.PID)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Name, e.State, pid, dash(e.Image), dash(e.Snapshot),
			dash(strings.Join(e.GPUs, ",")), e.Created.Local().Format(time.DateTime))
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
