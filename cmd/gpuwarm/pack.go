package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

func init() {
	c := &command{name: "pack", args: "DIR --tag NAME", help: "pack a directory tree into an image in the store and tag it"}
	c.run = func(ctx context.Context, g *globals, args []string) error {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		tag := fs.String("tag", "", "tag `NAME` for the image (required)")
		chunkSize := byteSize(pack.DefaultChunkSize)
		fs.Var(&chunkSize, "chunk-size", "chunk `SIZE` of files")
		var annots multiFlag
		fs.Var(&annots, "annotation", "`KEY=VALUE` recorded in the image (repeatable)")
		jsonOut := fs.Bool("json", false, "print the summary as JSON")
		quiet := fs.Bool("quiet", false, "no progress bar")
		if err := g.parse(c, fs, args); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			fs.Usage()
			return fmt.Errorf("want exactly one directory, got %d arguments", fs.NArg())
		}
		if err := manifest.ValidTag(*tag); err != nil {
			return fmt.Errorf("--tag: %w", err)
		}
		st, err := g.openStore(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		dir, _ := filepath.Abs(fs.Arg(0))
		a := map[string]string{"gpuwarm.kind": "files"}
		for _, kv := range annots {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return fmt.Errorf("--annotation %q: want KEY=VALUE", kv)
			}
			a[k] = v
		}
		lock, err := store.AcquireLock(ctx, st, store.WriteLock, 5*time.Minute)
		if err != nil {
			return err
		}
		defer lock.Release(context.WithoutCancel(ctx))
		opt := pack.Options{ChunkSize: int(chunkSize), Annotations: a, Logger: g.log}
		if !*quiet && !*jsonOut && isTerminal(os.Stderr) {
			opt.Progress = os.Stderr
		}
		res, err := pack.Dir(ctx, st, dir, opt)
		if err != nil {
			return err
		}
		if err := store.SetTag(ctx, st, *tag, res.ID); err != nil {
			return fmt.Errorf("tag %q: %w", *tag, err)
		}
		if *jsonOut {
			return json.NewEncoder(os.Stdout).Encode(map[string]any{
				"tag": *tag, "image": res.ID.String(), "files": res.Stats.Files, "dirs": res.Stats.Dirs,
				"symlinks": res.Stats.Symlinks, "hardlinks": res.Stats.Hardlinks, "bytes": res.Stats.Bytes,
				"chunks": res.Stats.Chunks, "unique_chunks": res.Stats.UniqueChunks, "new_chunks": res.NewChunks,
				"new_bytes": res.NewBytes, "dedup_ratio": res.DedupRatio(), "seconds": res.Duration.Seconds(),
				"mb_per_s": res.MBps(),
			})
		}
		ratio := "-"
		if res.NewBytes > 0 {
			ratio = fmt.Sprintf("%.2fx", res.DedupRatio())
		}
		fmt.Printf("packed %s as %s (image %s)\n", dir, *tag, res.ID)
		fmt.Printf("  files %d, dirs %d, symlinks %d, hard links %d\n", res.Stats.Files, res.Stats.Dirs, res.Stats.Symlinks, res.Stats.Hardlinks)
		fmt.Printf("  bytes %s in %d chunks (%d distinct)\n", pack.HumanBytes(res.Stats.Bytes), res.Stats.Chunks, res.Stats.UniqueChunks)
		fmt.Printf("  new   %s in %d chunks uploaded; logical/uploaded %s\n", pack.HumanBytes(res.NewBytes), res.NewChunks, ratio)
		fmt.Printf("  time  %.2fs, %.0f MB/s\n", res.Duration.Seconds(), res.MBps())
		return nil
	}
	register(c)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
