package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

func init() {
	register(spec{name: "version", args: "[--json]", help: "print gpuwarm's version and build (also gpuwarm --version)",
		new: func() command { return &versionOptions{} }})
}

type versionOptions struct {
	cli
	json bool
}

func (o *versionOptions) flags(fs *flagSet) { fs.BoolVar(&o.json, "json", false, "print JSON") }

// version is set at link time (make build: git describe); without it the
// module version from the build info is shown.
var version string

// buildInfo is the module version and VCS state the binary was built from.
type buildInfo struct {
	Version  string `json:"version"`
	Revision string `json:"revision,omitempty"`
	Time     string `json:"time,omitempty"`
	Modified bool   `json:"modified,omitempty"` // built from a tree with uncommitted changes
	Go       string `json:"go"`
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: "(unknown)", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if version != "" {
			b.Version = version
		}
		return b
	}
	b.Version = bi.Main.Version
	if version != "" {
		b.Version = version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

func (o *versionOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 0, 0, "no arguments"); err != nil {
		return err
	}
	b := readBuildInfo()
	if o.json {
		return printJSON(o.out, b)
	}
	fmt.Fprintf(o.out, "gpuwarm %s", b.Version)
	if b.Revision != "" {
		fmt.Fprintf(o.out, ", revision %.12s", b.Revision)
		if b.Modified {
			fmt.Fprint(o.out, " (modified)")
		}
		if b.Time != "" {
			fmt.Fprintf(o.out, " of %s", b.Time)
		}
	}
	fmt.Fprintf(o.out, ", %s\n", b.Go)
	return nil
}
