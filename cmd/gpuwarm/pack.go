package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/gpuwarm/gpuwarm/internal/inflate"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/manifest/store"
)

func init() {
	register(spec{name: "pack", args: "DIR --tag NAME | --image REF --tag NAME", help: "pack a directory tree, or an OCI image's root filesystem, into an image in the store and tag it",
		new: func() command { return &packOptions{} }})
}

type packOptions struct {
	cli
	store       storeFlags
	tag         string
	image       string
	chunkSize   int64
	smallFiles  int64
	annotations multiFlag
	json, quiet bool
	rehash      bool
	stampDir    string
}

func (o *packOptions) flags(fs *flagSet) {
	o.store.register(fs)
	fs.StringVar(&o.tag, "tag", "", "tag `NAME` for the image (required)")
	fs.StringVar(&o.image, "image", "", "pack the OCI image `REF` (registry reference, OCI layout directory or docker save archive) instead of a directory")
	fs.size(&o.chunkSize, "chunk-size", pack.DefaultChunkSize, 64<<10, chunk.MaxSize, "chunk `SIZE` of files")
	fs.size(&o.smallFiles, "small-files", pack.DefaultSmallFile, 0, pack.DefaultSharedChunk/2, "files of up to `SIZE` share chunks with their directory's (0: none, for mounts older than manifest version 3)")
	fs.Var(&o.annotations, "annotation", "`KEY=VALUE` recorded in the image (repeatable)")
	fs.BoolVar(&o.json, "json", false, "print the summary as JSON")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress bar")
	fs.BoolVar(&o.rehash, "rehash", false, "read and hash every file, even those unchanged since the tag's last pack")
	fs.StringVar(&o.stampDir, "stamps", pack.DefaultStampDir, "`DIR` where pack remembers the files it packed (to skip unchanged ones)")
}

// packResult is what pack --json prints.
type packResult struct {
	Tag          string `json:"tag"`
	Image        string `json:"image"`
	Files        int    `json:"files"`
	Dirs         int    `json:"dirs"`
	Symlinks     int    `json:"symlinks"`
	Hardlinks    int    `json:"hardlinks"`
	Bytes        int64  `json:"bytes"`
	Chunks       int    `json:"chunks"`
	UniqueChunks int    `json:"unique_chunks"`
	NewChunks    int    `json:"new_chunks"`
	NewBytes     int64  `json:"new_bytes"`
	// DedupRatio is the image's bytes over the bytes uploaded; null when
	// nothing new was uploaded (everything was in the store already).
	DedupRatio *float64 `json:"dedup_ratio"`
	Seconds    float64  `json:"seconds"`
	MBPerS     float64  `json:"mb_per_s"`
	// Reused counts files unchanged since the tag's last pack, whose
	// chunks were kept without reading them.
	Reused      int   `json:"reused_files"`
	ReusedBytes int64 `json:"reused_bytes"`
}

func (o *packOptions) run(ctx context.Context, args []string) error {
	if o.image != "" {
		if err := wantArgs(args, 0, 0, "no directory with --image"); err != nil {
			return err
		}
	} else if err := wantArgs(args, 1, 1, "one directory"); err != nil {
		return err
	}
	if err := manifest.ValidTag(o.tag); err != nil {
		return usagef("--tag: %w", err)
	}
	a := map[string]string{}
	if o.image == "" {
		a["gpuwarm.kind"] = "files"
	}
	for _, kv := range o.annotations {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usagef("--annotation %q: want KEY=VALUE", kv)
		}
		a[k] = v
	}
	var dir string
	if o.image == "" {
		var err error
		if dir, err = filepath.Abs(args[0]); err != nil {
			return err
		}
		if fi, err := os.Stat(dir); err != nil {
			return fmt.Errorf("cannot pack %s: %w", args[0], err)
		} else if !fi.IsDir() {
			return usagef("%s is not a directory", args[0])
		}
	}
	st, done, err := o.store.createLocked(ctx)
	if err != nil {
		return err
	}
	defer done()
	opt := pack.Options{ChunkSize: int(o.chunkSize), SmallFile: int(o.smallFiles), Annotations: a, Logger: o.log}
	if o.smallFiles == 0 {
		opt.SmallFile = -1
	}
	var res *pack.Result
	if o.image != "" {
		img, err := pack.OpenImage(ctx, o.image)
		if err != nil {
			return err
		}
		if ok, why := inflate.Native(); !ok {
			o.log.Info("gzip layers are unpacked by the Go inflate, at about 0.4x ISA-L's speed (install libisal2)", "isa-l", why)
		}
		if res, err = pack.Image(ctx, st, img, o.image, opt); err != nil {
			return err
		}
		dir = o.image
	} else {
		if !o.quiet && !o.json && isTerminal(os.Stderr) {
			opt.Progress = os.Stderr
		}
		stamps := pack.StampPath(o.stampDir, st, dir, o.tag)
		if !o.rehash {
			prev, err := pack.LoadPrevious(ctx, st, stamps, o.tag, int(o.chunkSize))
			if err != nil {
				o.log.Warn("packing every file: cannot use the tag's last pack", "err", err)
			}
			opt.Previous = prev
		}
		if res, err = pack.Dir(ctx, st, dir, opt); err != nil {
			return err
		}
		defer func() {
			// After the tag moved: the record names the image it describes.
			if err := pack.SaveStamps(stamps, res.ID, int(o.chunkSize), res.Stamps); err != nil {
				o.log.Warn("cannot remember the packed files; the next pack reads them all", "err", err)
			}
		}()
	}
	if err := store.SetTag(ctx, st, o.tag, res.ID); err != nil {
		return fmt.Errorf("tag %q: %w", o.tag, err)
	}
	r := packResult{Tag: o.tag, Image: res.ID.String(), Files: res.Stats.Files, Dirs: res.Stats.Dirs,
		Symlinks: res.Stats.Symlinks, Hardlinks: res.Stats.Hardlinks, Bytes: res.Stats.Bytes,
		Chunks: res.Stats.Chunks, UniqueChunks: res.Stats.UniqueChunks, NewChunks: res.NewChunks,
		NewBytes: res.NewBytes, Seconds: res.Duration.Seconds(), MBPerS: res.MBps(), Reused: res.Reused, ReusedBytes: res.ReusedBytes}
	if res.NewBytes > 0 {
		d := res.DedupRatio()
		r.DedupRatio = &d
	}
	if o.json {
		return printJSON(o.out, r)
	}
	ratio := "- (nothing new)"
	if r.DedupRatio != nil {
		ratio = fmt.Sprintf("%.2fx", *r.DedupRatio)
	}
	w := o.out
	fmt.Fprintf(w, "packed %s as %s (image %s)\n", dir, o.tag, res.ID)
	fmt.Fprintf(w, "  files %d, dirs %d, symlinks %d, hard links %d\n", r.Files, r.Dirs, r.Symlinks, r.Hardlinks)
	fmt.Fprintf(w, "  bytes %s in %d chunks (%d distinct)\n", pack.HumanBytes(r.Bytes), r.Chunks, r.UniqueChunks)
	fmt.Fprintf(w, "  new   %s in %d chunks uploaded; logical/uploaded %s\n", pack.HumanBytes(r.NewBytes), r.NewChunks, ratio)
	if r.Reused > 0 {
		fmt.Fprintf(w, "  kept  %d files (%s) unchanged since the last pack, not read\n", r.Reused, pack.HumanBytes(r.ReusedBytes))
	}
	fmt.Fprintf(w, "  time  %.2fs, %.0f MB/s\n", r.Seconds, r.MBPerS)
	return nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
