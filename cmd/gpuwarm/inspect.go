package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/restore"
)

func init() {
	register(spec{name: "inspect", args: "TAG|IMAGE-ID", help: "show an image's contents, sizes and annotations",
		new: func() command { return &inspectOptions{} }})
}

type inspectOptions struct {
	cli
	store       storeFlags
	json, files bool
}

func (o *inspectOptions) flags(fs *flagSet) {
	o.store.register(fs)
	fs.BoolVar(&o.json, "json", false, "print JSON")
	fs.BoolVar(&o.files, "files", false, "list every entry")
}

// entryInfo is one entry of an image as inspect --files shows it.
type entryInfo struct {
	Path   string `json:"path"`
	Type   string `json:"type"`
	Mode   string `json:"mode"`
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
	Size   int64  `json:"size"`
	Chunks int    `json:"chunks"`
	Target string `json:"target,omitempty"`
}

type inspectResult struct {
	Image   imageSummary `json:"image"`
	Entries []entryInfo  `json:"entries,omitempty"`
}

func (o *inspectOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 1, 1, "one tag or image ID"); err != nil {
		return err
	}
	st, err := o.store.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	s, ix := summarize(ctx, st, args[0])
	if s.Error != "" {
		return errors.New(s.Error)
	}
	res := inspectResult{Image: s}
	if o.files {
		for _, e := range ix.Entries {
			res.Entries = append(res.Entries, entryInfo{Path: "/" + e.Path, Type: e.Type.String(),
				Mode: fmt.Sprintf("%04o", e.Mode), UID: e.UID, GID: e.GID, Size: int64(e.Size),
				Chunks: len(e.Chunks), Target: e.Target})
		}
	}
	if o.json {
		return printJSON(o.out, res)
	}
	w := o.out
	fmt.Fprintf(w, "image     %s\n", s.Image)
	if s.Tag != "" && s.Tagged != nil {
		fmt.Fprintf(w, "tag       %s (set %s)\n", s.Tag, s.Tagged.Format(time.RFC3339))
	}
	fmt.Fprintf(w, "kind      %s\n", s.Kind)
	fmt.Fprintf(w, "entries   %d files, %d dirs, %d symlinks, %d hard links\n", s.Files, s.Dirs, s.Symlinks, s.Hardlinks)
	fmt.Fprintf(w, "size      %s in %d chunks; %s in %d distinct chunks\n", pack.HumanBytes(s.Bytes), s.Chunks, pack.HumanBytes(s.UniqueBytes), s.Unique)
	if cfg, ok, err := pack.ImageConfig(s.Annotations); ok && err == nil {
		ports := make([]string, 0, len(cfg.ExposedPorts))
		for p := range cfg.ExposedPorts {
			ports = append(ports, p)
		}
		sort.Strings(ports)
		fmt.Fprintf(w, "run as    entrypoint %q, cmd %q, workdir %q, user %q, ports %v\n", cfg.Entrypoint, cfg.Cmd, cfg.WorkingDir, cfg.User, ports)
		for _, e := range cfg.Env {
			fmt.Fprintf(w, "  env %s\n", e)
		}
	}
	if wm, err := restore.ParseWeightsMeta(s.Annotations[restore.AnnWeights]); err == nil && wm != nil {
		var ids []string
		for _, id := range wm.Images() {
			ids = append(ids, id.Short())
		}
		fmt.Fprintf(w, "weights   %d tensors (%s) referenced in image %s, not stored\n", len(wm.Refs), pack.HumanBytes(wm.Bytes), strings.Join(ids, ", "))
	}
	keys := make([]string, 0, len(s.Annotations))
	for k := range s.Annotations {
		if k == pack.AnnOCIConfig || k == restore.AnnWeights {
			continue // shown above
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %s = %s\n", k, s.Annotations[k])
	}
	if o.files {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nTYPE\tMODE\tUID:GID\tSIZE\tPATH")
		for _, e := range res.Entries {
			extra := ""
			if e.Target != "" {
				extra = " -> " + e.Target
			}
			fmt.Fprintf(tw, "%s\t%s\t%d:%d\t%d\t%s%s\n", e.Type, e.Mode, e.UID, e.GID, e.Size, e.Path, extra)
		}
		return tw.Flush()
	}
	return nil
}
