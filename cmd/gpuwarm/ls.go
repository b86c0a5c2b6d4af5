package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

type imageSummary struct {
	Tag         string            `json:"tag,omitempty"`
	Image       string            `json:"image"`
	Kind        string            `json:"kind"`
	Tagged      time.Time         `json:"tagged,omitempty"`
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

func summarize(ctx context.Context, st store.Store, tag string) imageSummary {
	s := imageSummary{Tag: tag}
	id, err := store.ResolveTag(ctx, st, tag)
	if err != nil {
		s.Error = err.Error()
		return s
	}
	s.Image = id.String()
	if tag != id.String() {
		if info, err := st.Stat(ctx, store.Handle{Kind: store.Tag, Name: tag}); err == nil {
			s.Tagged = info.ModTime.UTC()
		}
	} else {
		s.Tag = ""
	}
	ix, err := manifest.Load(ctx, st, id)
	if err != nil {
		s.Error = err.Error()
		return s
	}
	fill(&s, ix.Manifest)
	return s
}

func fill(s *imageSummary, m *manifest.Manifest) {
	stats := m.Stats()
	s.Kind = m.Annotations["gpuwarm.kind"]
	s.Files, s.Dirs, s.Symlinks, s.Hardlinks = stats.Files, stats.Dirs, stats.Symlinks, stats.Hardlinks
	s.Bytes, s.Chunks, s.Unique, s.UniqueBytes = stats.Bytes, stats.Chunks, stats.UniqueChunks, stats.UniqueBytes
	s.Annotations = m.Annotations
}

func init() {
	c := &command{name: "ls", args: "", help: "list the tagged images in the store"}
	c.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		jsonOut := fs.Bool("json", false, "print JSON")
		if err := g.parse(c, fs, args); err != nil {
			return err
		}
		st, err := g.openStore(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		tags, err := store.Tags(ctx, st)
		if err != nil {
			return fmt.Errorf("list tags in %s: %w", st.Location(), err)
		}
		names := make([]string, 0, len(tags))
		for n := range tags {
			names = append(names, n)
		}
		sort.Strings(names)
		out := make([]imageSummary, 0, len(names))
		for _, n := range names {
			out = append(out, summarize(ctx, st, n))
		}
		if *jsonOut {
			return json.NewEncoder(os.Stdout).Encode(out)
		}
		if len(out) == 0 {
			fmt.Printf("no images in %s; add one with gpuwarm pack DIR --tag NAME\n", st.Location())
			return nil
		}
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "TAG\tIMAGE\tKIND\tFILES\tSIZE\tTAGGED")
		for _, s := range out {
			if s.Error != "" {
				fmt.Fprintf(w, "%s\t%.12s\t?\t?\t?\terror: %s\n", s.Tag, s.Image, s.Error)
				continue
			}
			fmt.Fprintf(w, "%s\t%.12s\t%s\t%d\t%s\t%s\n", s.Tag, s.Image, s.Kind, s.Files, pack.HumanBytes(s.Bytes), s.Tagged.Format(time.RFC3339))
		}
		return w.Flush()
	}
	register(c)

	in := &command{name: "inspect", args: "TAG|IMAGE-ID", help: "show an image's contents, sizes and annotations"}
	in.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(in.name, flag.ContinueOnError)
		jsonOut := fs.Bool("json", false, "print JSON")
		files := fs.Bool("files", false, "list every entry")
		if err := g.parse(in, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			fs.Usage()
			return fmt.Errorf("want one tag or image ID")
		}
		st, err := g.openStore(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		s := summarize(ctx, st, fs.Arg(0))
		if s.Error != "" {
			return fmt.Errorf("%s", s.Error)
		}
		var entries []map[string]any
		if *files {
			id, _ := store.ResolveTag(ctx, st, fs.Arg(0))
			ix, err := manifest.Load(ctx, st, id)
			if err != nil {
				return err
			}
			for _, e := range ix.Entries {
				entries = append(entries, map[string]any{"path": "/" + e.Path, "type": e.Type.String(),
					"mode": fmt.Sprintf("%04o", e.Mode), "uid": e.UID, "gid": e.GID, "size": e.Size,
					"chunks": len(e.Chunks), "target": e.Target})
			}
		}
		if *jsonOut {
			return json.NewEncoder(os.Stdout).Encode(map[string]any{"image": s, "entries": entries})
		}
		fmt.Printf("image     %s\n", s.Image)
		if s.Tag != "" {
			fmt.Printf("tag       %s (set %s)\n", s.Tag, s.Tagged.Format(time.RFC3339))
		}
		fmt.Printf("kind      %s\n", s.Kind)
		fmt.Printf("entries   %d files, %d dirs, %d symlinks, %d hard links\n", s.Files, s.Dirs, s.Symlinks, s.Hardlinks)
		fmt.Printf("size      %s in %d chunks; %s in %d distinct chunks\n", pack.HumanBytes(s.Bytes), s.Chunks, pack.HumanBytes(s.UniqueBytes), s.Unique)
		keys := make([]string, 0, len(s.Annotations))
		for k := range s.Annotations {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Printf("  %s = %s\n", k, s.Annotations[k])
		}
		if *files {
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "\nTYPE\tMODE\tUID:GID\tSIZE\tPATH")
			for _, e := range entries {
				extra := ""
				if t := e["target"].(string); t != "" {
					extra = " -> " + t
				}
				fmt.Fprintf(w, "%s\t%s\t%d:%d\t%d\t%s%s\n", e["type"], e["mode"], e["uid"], e["gid"], e["size"], e["path"], extra)
			}
			w.Flush()
		}
		return nil
	}
	register(in)
}
