package main

import (
	"context"
	"fmt"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

func init() {
	register(spec{name: "ls", args: "", help: "list the tagged images in the store",
		new: func() command { return &lsOptions{} }})
}

type lsOptions struct {
	cli
	store storeFlags
	json  bool
}

func (o *lsOptions) flags(fs *flagSet) {
	o.store.register(fs)
	fs.BoolVar(&o.json, "json", false, "print JSON")
}

// imageSummary is one image as ls and inspect show it.
type imageSummary struct {
	Tag         string            `json:"tag,omitempty"`
	Image       string            `json:"image"`
	Kind        string            `json:"kind"`
	Tagged      *time.Time        `json:"tagged,omitempty"`
	Files       int               `json:"files"`
	Dirs        int               `json:"dirs"`
	Symlinks    int               `json:"symlinks"`
	Hardlinks   int               `json:"hardlinks"`
	Bytes       int64             `json:"bytes"`
	Chunks      int               `json:"chunks"`
	Unique      int               `json:"unique_chunks"`
	UniqueBytes int64             `json:"unique_bytes"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Error       string            `json:"error,omitempty"`
}

// summarize loads the image a tag (or image ID) names; failures are kept in
// Error so that one bad image does not hide the others from ls.
func summarize(ctx context.Context, st store.Store, tag string) (imageSummary, *manifest.Index) {
	s := imageSummary{Tag: tag}
	id, err := store.ResolveTag(ctx, st, tag)
	if err != nil {
		s.Error = err.Error()
		return s, nil
	}
	s.Image = id.String()
	if tag != id.String() {
		if info, err := st.Stat(ctx, store.Handle{Kind: store.Tag, Name: tag}); err == nil {
			t := info.ModTime.UTC()
			s.Tagged = &t
		}
	} else {
		s.Tag = ""
	}
	ix, err := manifest.Load(ctx, st, id)
	if err != nil {
		s.Error = err.Error()
		return s, nil
	}
	m := ix.Manifest
	stats := m.Stats()
	s.Kind = m.Annotations["gpuwarm.kind"]
	s.Files, s.Dirs, s.Symlinks, s.Hardlinks = stats.Files, stats.Dirs, stats.Symlinks, stats.Hardlinks
	s.Bytes, s.Chunks, s.Unique, s.UniqueBytes = stats.Bytes, stats.Chunks, stats.UniqueChunks, stats.UniqueBytes
	s.Annotations = m.Annotations
	return s, ix
}

func (o *lsOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 0, 0, "no arguments"); err != nil {
		return err
	}
	st, err := o.store.open(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	tags, bad, err := store.ListTags(ctx, st)
	if err != nil {
		return fmt.Errorf("list tags in %s: %w", st.Location(), err)
	}
	names := make([]string, 0, len(tags)+len(bad))
	for n := range tags {
		names = append(names, n)
	}
	for n := range bad {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]imageSummary, 0, len(names))
	for _, n := range names {
		if e, ok := bad[n]; ok {
			out = append(out, imageSummary{Tag: n, Error: e.Error()})
			continue
		}
		s, _ := summarize(ctx, st, n)
		out = append(out, s)
	}
	if o.json {
		return printJSON(o.out, out)
	}
	if len(out) == 0 {
		fmt.Fprintf(o.out, "no images in %s; add one with gpuwarm pack DIR --tag NAME\n", st.Location())
		return nil
	}
	w := tabwriter.NewWriter(o.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TAG\tIMAGE\tKIND\tFILES\tSIZE\tTAGGED")
	for _, s := range out {
		if s.Error != "" {
			fmt.Fprintf(w, "%s\t%.12s\t?\t?\t?\terror: %s\n", s.Tag, s.Image, s.Error)
			continue
		}
		tagged := "-"
		if s.Tagged != nil {
			tagged = s.Tagged.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%.12s\t%s\t%d\t%s\t%s\n", s.Tag, s.Image, s.Kind, s.Files, pack.HumanBytes(s.Bytes), tagged)
	}
	return w.Flush()
}
