package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/gpuwarm/gpuwarm/restore/weights"
)

func init() {
	register(spec{name: "weights-lib", args: "[DIR]", help: "write gpuwarm_weights.py (the workload's side of the weights protocol) into DIR, or print it",
		new: func() command { return &weightsLibOptions{} }})
}

type weightsLibOptions struct{ cli }

func (o *weightsLibOptions) flags(fs *flagSet) {}

func (o *weightsLibOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 0, 1, "at most one directory"); err != nil {
		return err
	}
	if len(args) == 0 {
		_, err := o.out.Write(weights.Library)
		return err
	}
	p := filepath.Join(args[0], weights.LibraryName)
	if err := os.WriteFile(p, weights.Library, 0o644); err != nil {
		return fmt.Errorf("weights-lib: %w", err)
	}
	fmt.Fprintf(o.out, "wrote %s: import gpuwarm_weights in the workload (PYTHONPATH=%s)\n", p, args[0])
	return nil
}
