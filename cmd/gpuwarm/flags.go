package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/storeopen"
)

// Defaults shared by the commands (and the systemd unit).
const (
	defaultMount    = "/gpuwarm"
	defaultCacheDir = "/var/cache/gpuwarm"
	runDir          = "/run/gpuwarm" // PID files of gpuwarm run --name
)

// flagSet is a command's flags: the standard library's, plus the
// environment variables bound to them, whose bad values are reported as
// usage errors naming the variable.
type flagSet struct {
	*flag.FlagSet
	spec    spec
	envErrs []error
	logLvl  *string
	logFmt  *string
}

func newFlagSet(s spec, cmd command) *flagSet {
	fs := &flagSet{FlagSet: flag.NewFlagSet(s.name, flag.ContinueOnError), spec: s}
	fs.SetOutput(io.Discard) // errors are printed once, by run
	fs.Usage = func() {}
	b := cmd.base()
	fs.StringVar(&b.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.env("log-level", "GPUWARM_LOG")
	fs.StringVar(&b.logFormat, "log-format", "text", "log lines as text or json (one object per line, for log shippers)")
	fs.env("log-format", "GPUWARM_LOG_FORMAT")
	cmd.flags(fs)
	fs.logLvl, fs.logFmt = &b.logLevel, &b.logFormat
	return fs
}

// env binds flag name to the environment variable v: a set variable
// replaces the flag's default, and the flag's help names the variable.
func (fs *flagSet) env(name, v string) {
	f := fs.Lookup(name)
	if f == nil {
		panic("gpuwarm: env for unknown flag " + name)
	}
	f.Usage += " (env " + v + ")"
	if s, ok := os.LookupEnv(v); ok && s != "" {
		if err := f.Value.Set(s); err != nil {
			fs.envErrs = append(fs.envErrs, fmt.Errorf("environment variable %s=%q: %w", v, s, err))
		}
	}
}

// parse parses args (flags may follow positional arguments; everything
// after "--" is positional) and sets up logging; it returns the positional
// arguments.
func (fs *flagSet) parse(args []string, stderr io.Writer) ([]string, error) {
	if len(fs.envErrs) > 0 {
		return nil, usageError{errors.Join(fs.envErrs...)}
	}
	if err := fs.Parse(interleave(fs.FlagSet, args)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err}
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*fs.logLvl)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", *fs.logLvl)
	}
	hopt := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch *fs.logFmt {
	case "text":
		h = slog.NewTextHandler(stderr, hopt)
	case "json":
		h = slog.NewJSONHandler(stderr, hopt)
	default:
		return nil, usagef("--log-format %q: use text or json", *fs.logFmt)
	}
	log := slog.New(h).With("cmd", fs.spec.name)
	slog.SetDefault(log)
	return fs.Args(), nil
}

// usage prints the command's usage and flags.
func (fs *flagSet) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: gpuwarm %s %s\n\n%s\n\nFlags:\n", fs.spec.name, fs.spec.args, fs.spec.help)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
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

// wantArgs checks the number of positional arguments.
func wantArgs(args []string, min, max int, what string) error {
	if len(args) < min || (max >= 0 && len(args) > max) {
		return usagef("want %s, got %d argument(s): %q", what, len(args), args)
	}
	return nil
}

// sizeValue is a byte size flag (512MiB, 2G, 1.5TiB, 1048576) kept within
// [min, max], shown as 2 GiB.
type sizeValue struct {
	p        *int64
	min, max int64
}

func (fs *flagSet) size(p *int64, name string, def, min, max int64, usage string) {
	*p = def
	fs.Var(&sizeValue{p, min, max}, name, usage+" ("+formatSize(min)+" to "+formatSize(max)+")")
}

func (s *sizeValue) String() string {
	if s == nil || s.p == nil {
		return "0 B"
	}
	return formatSize(*s.p)
}

func (s *sizeValue) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	if n < s.min || n > s.max {
		return fmt.Errorf("size %s is out of range: use %s to %s", formatSize(n), formatSize(s.min), formatSize(s.max))
	}
	*s.p = n
	return nil
}

var sizeUnits = []struct {
	suf string
	m   float64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"B", 1}}

// parseSize parses a size with an optional unit (K, M, G, T are powers of
// 1024; KB, MB, GB, TB of 1000).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suf) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suf)), u.m
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("size %q: use a number with an optional unit (e.g. 512MiB, 2GiB)", s)
	}
	b := f * mult
	if b >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(b), nil
}

// formatSize shows n in the largest binary unit it fills: 2 GiB, 1.5 MiB.
func formatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f == math.Trunc(f) {
		return fmt.Sprintf("%.0f %s", f, units[i])
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

// durationValue is a duration flag that must be > 0 (or >= 0 with zeroOK).
type durationValue struct {
	p      *time.Duration
	zeroOK bool
}

func (fs *flagSet) duration(p *time.Duration, name string, def time.Duration, zeroOK bool, usage string) {
	*p = def
	fs.Var(&durationValue{p, zeroOK}, name, usage+" (a `DURATION` such as 500ms)")
}

func (d *durationValue) String() string {
	if d == nil || d.p == nil {
		return "0s"
	}
	return d.p.String()
}

func (d *durationValue) Set(v string) error {
	t, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("duration %q: use a number with a unit (e.g. 500ms, 2s, 1h)", v)
	}
	if t < 0 || t == 0 && !d.zeroOK {
		return fmt.Errorf("duration %q must be positive", v)
	}
	*d.p = t
	return nil
}

// intValue is an int flag kept within [min, max].
type intValue struct {
	p        *int
	min, max int
}

func (fs *flagSet) intRange(p *int, name string, def, min, max int, usage string) {
	*p = def
	fs.Var(&intValue{p, min, max}, name, fmt.Sprintf("%s (`N` from %d to %d)", usage, min, max))
}

func (v *intValue) String() string {
	if v == nil || v.p == nil {
		return "0"
	}
	return strconv.Itoa(*v.p)
}

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("%q is not a whole number", s)
	}
	if n < v.min || n > v.max {
		return fmt.Errorf("%d is out of range: use %d to %d", n, v.min, v.max)
	}
	*v.p = n
	return nil
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

// storeFlags is the store every store-using command takes.
type storeFlags struct{ url string }

func (s *storeFlags) register(fs *flagSet) {
	fs.StringVar(&s.url, "store", storeopen.Default, "store `URL`: a directory, file://DIR or s3://BUCKET/PREFIX")
	fs.env("store", "GPUWARM_STORE")
}

// open opens an existing store: commands that only read it (and rm, gc)
// never create one where --store points by mistake.
func (s *storeFlags) open(ctx context.Context) (store.Store, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return storeopen.OpenExisting(ctx, s.url)
}

// create opens the store, creating a file store that does not exist yet:
// for the commands that write images (pack, snapshot, record).
func (s *storeFlags) create(ctx context.Context) (store.Store, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return storeopen.Open(ctx, s.url)
}

// createLocked is create plus the store's write lock (waiting up to 5
// minutes for a gc to finish), for commands that add images; done releases
// both.
func (s *storeFlags) createLocked(ctx context.Context) (st store.Store, done func(), err error) {
	if st, err = s.create(ctx); err != nil {
		return nil, nil, err
	}
	lock, err := store.AcquireLock(ctx, st, store.WriteLock, 5*time.Minute)
	if err != nil {
		st.Close()
		return nil, nil, err
	}
	return st, func() {
		lock.Release(context.WithoutCancel(ctx))
		st.Close()
	}, nil
}

func (s *storeFlags) check() error {
	if u := strings.TrimSpace(s.url); u == "" || u == "file://" {
		return usagef("--store %q names no store: give a directory, file://DIR or s3://BUCKET/PREFIX", s.url)
	}
	return nil
}

// cacheFlags are the block cache's settings.
type cacheFlags struct {
	dir       string
	mem, disk int64
	fetches   int
}

func (c *cacheFlags) register(fs *flagSet) {
	c.registerDir(fs)
	fs.size(&c.mem, "mem-cache", 2<<30, 0, 1<<40, "memory tier `SIZE`")
	fs.env("mem-cache", "GPUWARM_MEM_CACHE")
	fs.size(&c.disk, "disk-cache", 50<<30, 0, 1<<50, "disk tier `SIZE`")
	fs.env("disk-cache", "GPUWARM_DISK_CACHE")
	fs.intRange(&c.fetches, "fetches", 64, 1, 4096, "concurrent store reads (half kept for demand reads)")
}

func (c *cacheFlags) registerDir(fs *flagSet) {
	fs.StringVar(&c.dir, "cache-dir", defaultCacheDir, "`DIR` of the block cache's disk tier")
	fs.env("cache-dir", "GPUWARM_CACHE_DIR")
}

// mountFlag is the mount point commands that use a mount expect.
func mountFlag(fs *flagSet, p *string, usage string) {
	fs.StringVar(p, "mount", defaultMount, usage)
	fs.env("mount", "GPUWARM_MOUNT")
}

// mountPoint is a mount command's positional MOUNTPOINT, or the default
// ($GPUWARM_MOUNT, else /gpuwarm) without one.
func mountPoint(args []string) (string, error) {
	if err := wantArgs(args, 0, 1, "at most one mount point"); err != nil {
		return "", err
	}
	if len(args) == 1 {
		if strings.TrimSpace(args[0]) == "" {
			return "", usagef("the mount point is empty")
		}
		return args[0], nil
	}
	if v := os.Getenv("GPUWARM_MOUNT"); v != "" {
		return v, nil
	}
	return defaultMount, nil
}

// printJSON writes v as one line of JSON.
func printJSON(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

func ms(d time.Duration) string { return fmt.Sprintf("%8.1f ms", float64(d.Microseconds())/1000) }
