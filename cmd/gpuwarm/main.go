// Command gpuwarm makes GPU workloads start in about a second: it packs
// program trees and process snapshots into a content-addressed store, mounts
// them lazily on workers, and restores snapshots from the mount.
//
// Each command lives in its own file: an options struct, the flags that
// fill it, and a run method that tests call directly. Flags shared by
// several commands (the store, the block cache, the mount point) are
// defined once, in flags.go, and every flag that an environment variable
// can set says so in its help; a bad value, from a flag or the
// environment, is a usage error (exit 2) that names where it came from.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
)

// A command is one gpuwarm subcommand's options: it registers its flags and
// runs with the positional arguments left after them.
type command interface {
	flags(fs *flagSet)
	run(ctx context.Context, args []string) error
	base() *cli
}

// cli is what every command shares: where it writes and its logger.
// Commands embed it.
type cli struct {
	out       io.Writer // results: tables, JSON
	log       *slog.Logger
	logLevel  string
	logFormat string
}

func (c *cli) base() *cli { return c }

// spec describes a command for the usage text and the dispatcher.
type spec struct {
	name, args, help string
	hidden           bool // internal; not listed
	new              func() command
}

var commands = map[string]spec{}

func register(s spec) { commands[s.name] = s }

// usageError is a mistake in how gpuwarm was called: exit status 2.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

func topUsage(w io.Writer) {
	fmt.Fprintf(w, "gpuwarm: start GPU workloads from lazily mounted images and snapshots\n\nUsage: gpuwarm COMMAND [flags] [args]\n\nCommands:\n")
	names := make([]string, 0, len(commands))
	for n, s := range commands {
		if !s.hidden {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-9s %s\n", n, commands[n].help)
	}
	fmt.Fprintf(w, "\nRun 'gpuwarm COMMAND -h' for a command's flags, 'gpuwarm --version' for the build.\n")
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run runs one gpuwarm invocation and returns its exit status: 0 done,
// 1 failed, 2 called wrongly.
func run(argv []string, stdout, stderr io.Writer) int {
	if len(argv) == 0 {
		topUsage(stderr)
		return 2
	}
	switch argv[0] {
	case "-h", "-help", "--help", "help":
		if len(argv) > 1 {
			if s, ok := commands[argv[1]]; ok {
				newFlagSet(s, s.new()).usage(stdout)
				return 0
			}
		}
		topUsage(stdout)
		return 0
	case "-version", "--version":
		argv = []string{"version"}
	}
	name := argv[0]
	s, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "gpuwarm: unknown command %q\nRun 'gpuwarm --help' for the list.\n", name)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if p := os.Getenv("GPUWARM_CPUPROFILE"); p != "" {
		// Any command's CPU profile, for whoever tunes it.
		if f, err := os.Create(p); err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	cmd := s.new()
	fs := newFlagSet(s, cmd)
	args, err := fs.parse(argv[1:], stderr)
	if errors.Is(err, flag.ErrHelp) {
		fs.usage(stdout)
		return 0
	}
	if err == nil {
		b := cmd.base()
		b.out, b.log = stdout, slog.Default()
		err = cmd.run(ctx, args)
	}
	if err == nil {
		return 0
	}
	if cmd.base().logFormat == "json" && cmd.base().log != nil {
		// One JSON object, as every other line a log shipper reads.
		cmd.base().log.Error(err.Error())
	} else {
		fmt.Fprintf(stderr, "gpuwarm %s: %v\n", name, err)
	}
	var u usageError
	if errors.As(err, &u) {
		fmt.Fprintf(stderr, "Run 'gpuwarm %s -h' for usage.\n", name)
		return 2
	}
	return 1
}

// splitList splits "a, b,c" into its non-empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
