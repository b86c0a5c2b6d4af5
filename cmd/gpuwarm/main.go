// Command gpuwarm makes GPU workloads start in about a second: it packs
// program trees and process snapshots into a content-addressed store, mounts
// them lazily on workers, and restores snapshots from the mount.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/storeopen"
)

type command struct {
	name, args, help string
	run              func(ctx context.Context, g *globals, args []string) error
}

var commands []*command

func register(c *command) { commands = append(commands, c) }

// globals are the settings every command shares; each has an environment
// variable so a worker's boot script can set them once.
type globals struct {
	storeURL string
	logLevel string
	log      *slog.Logger
}

func (g *globals) flags(fs *flag.FlagSet) {
	fs.StringVar(&g.storeURL, "store", envOr("GPUWARM_STORE", storeopen.Default), "store `URL`: a directory, file://DIR or s3://BUCKET/PREFIX (env GPUWARM_STORE)")
	fs.StringVar(&g.logLevel, "log-level", envOr("GPUWARM_LOG", "info"), "log level: debug, info, warn, error (env GPUWARM_LOG)")
}

func (g *globals) openStore(ctx context.Context) (store.Store, error) {
	return storeopen.Open(ctx, g.storeURL)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func usage() {
	fmt.Fprintf(os.Stderr, "gpuwarm: start GPU workloads from lazily mounted images and snapshots\n\nUsage: gpuwarm COMMAND [flags]\n\nCommands:\n")
	sort.Slice(commands, func(i, j int) bool { return commands[i].name < commands[j].name })
	for _, c := range commands {
		if strings.HasPrefix(c.name, "_") {
			continue // internal
		}
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", c.name, c.help)
	}
	fmt.Fprintf(os.Stderr, "\nRun 'gpuwarm COMMAND -h' for a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	name := os.Args[1]
	for _, c := range commands {
		if c.name != name {
			continue
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		g := &globals{}
		if p := os.Getenv("GPUWARM_CPUPROFILE"); p != "" {
			// Any command's CPU profile, for whoever tunes it.
			if f, err := os.Create(p); err == nil && pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
		if err := c.run(ctx, g, os.Args[2:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return
			}
			fmt.Fprintf(os.Stderr, "gpuwarm %s: %v\n", name, err)
			stop()
			pprof.StopCPUProfile()
			os.Exit(1)
		}
		return
	}
	fmt.Fprintf(os.Stderr, "gpuwarm: unknown command %q\n\n", name)
	usage()
	os.Exit(2)
}

// parse parses a command's flags (globals included) and sets up logging.
func (g *globals) parse(c *command, fs *flag.FlagSet, args []string) error {
	g.flags(fs)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: gpuwarm %s %s\n\n%s\n\nFlags:\n", c.name, c.args, c.help)
		fs.PrintDefaults()
	}
	if err := fs.Parse(interleave(fs, args)); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: use debug, info, warn or error", g.logLevel)
	}
	g.log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	slog.SetDefault(g.log)
	return nil
}

// interleave moves flags after positional arguments to the front, so that
// "gpuwarm pack DIR --tag x" works; everything after "--" stays in place.
func interleave(fs *flag.FlagSet, args []string) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i:]...)
			break
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if strings.Contains(name, "=") {
				continue
			}
			if f := fs.Lookup(name); f != nil {
				if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
					continue
				}
				if i+1 < len(args) {
					flags = append(flags, args[i+1])
					i++
				}
			}
			continue
		}
		pos = append(pos, a)
	}
	return append(flags, pos...)
}

// byteSize is a flag value such as 512MiB, 2G or 1048576.
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(n)
	return nil
}

func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	units := []struct {
		suf string
		m   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}}
	for _, u := range units {
		if strings.HasSuffix(t, u.suf) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suf)), u.m
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: use a number with an optional unit (e.g. 512MiB, 2GiB)", s)
	}
	return int64(f * float64(mult)), nil
}
