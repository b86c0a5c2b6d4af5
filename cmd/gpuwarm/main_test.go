package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// gw runs one gpuwarm invocation in-process.
func gw(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestUsageErrorsExit2AndSayItOnce(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "Usage: gpuwarm COMMAND"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"mount", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"inspect"}, "want one tag or image ID"},
		{[]string{"pack", "/tmp"}, "--tag"},
		{[]string{"restore", "x", "--lazy", "--prefill"}, "choose one"},
		{[]string{"gc", "--grace", "-5s"}, "must be positive"},
		{[]string{"mount", "--mem-cache", "99999999999999999999"}, "too large"},
		{[]string{"mount", "--mem-cache", "2TiB"}, "out of range"},
		{[]string{"pack", "/tmp", "--tag", "x", "--chunk-size", "1"}, "out of range"},
		{[]string{"mount", "--readahead", "many"}, "not a whole number"},
		{[]string{"ls", "--log-level", "loud"}, "--log-level"},
		{[]string{"ls", "extra"}, "no arguments"},
		{[]string{"mount", ""}, "mount point is empty"},
		{[]string{"ls", "--store", "file://"}, "names no store"},
		{[]string{"ls", "--store", ""}, "names no store"},
		{[]string{"pack", "/tmp", "--tag", "by-id"}, "reserved"},
	} {
		code, _, stderr := gw(t, tc.args...)
		if code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", tc.args, code, stderr)
		}
		if n := strings.Count(stderr, tc.want); n != 1 {
			t.Errorf("%q: %q appears %d times in stderr, want once:\n%s", tc.args, tc.want, n, stderr)
		}
	}
}

func TestEnvironmentValidatedLikeFlags(t *testing.T) {
	t.Setenv("GPUWARM_MEM_CACHE", "lots")
	code, _, stderr := gw(t, "mount", "/nonexistent-mount")
	if code != 2 || !strings.Contains(stderr, "GPUWARM_MEM_CACHE") || !strings.Contains(stderr, "lots") {
		t.Fatalf("bad GPUWARM_MEM_CACHE: exit %d, %q", code, stderr)
	}
	t.Setenv("GPUWARM_MEM_CACHE", "")
	t.Setenv("GPUWARM_LOG", "chatty")
	if code, _, stderr := gw(t, "ls", "--store", t.TempDir()); code != 2 || !strings.Contains(stderr, "chatty") {
		t.Fatalf("bad GPUWARM_LOG: exit %d, %q", code, stderr)
	}
	t.Setenv("GPUWARM_LOG", "")
	// A good value replaces the default.
	t.Setenv("GPUWARM_STORE", t.TempDir())
	if code, out, stderr := gw(t, "ls"); code != 0 || !strings.Contains(out, os.Getenv("GPUWARM_STORE")) {
		t.Fatalf("GPUWARM_STORE not used: exit %d, %q %q", code, out, stderr)
	}
}

func TestHelpShowsOnlyUsedFlagsWithTheirEnvironment(t *testing.T) {
	code, out, _ := gw(t, "mount", "-h")
	if code != 0 {
		t.Fatalf("mount -h: exit %d", code)
	}
	for _, want := range []string{"(env GPUWARM_MEM_CACHE)", "(env GPUWARM_STORE)", "(env GPUWARM_CACHE_DIR)", "(env GPUWARM_PRELOAD)", "default 2 GiB", "default 50 GiB"} {
		if !strings.Contains(out, want) {
			t.Errorf("mount -h lacks %q", want)
		}
	}
	// Every flag of every command: help on one line, an environment
	// variable named where one is bound.
	for name, sp := range commands {
		fs := newFlagSet(sp, sp.new())
		fs.VisitAll(func(f *flag.Flag) {
			if strings.Contains(f.Usage, "\n") || len(f.Usage) > 160 {
				t.Errorf("%s --%s: help is not one short line: %q", name, f.Name, f.Usage)
			}
		})
	}
	for _, cmd := range []string{"umount", "gpus", "version", "ps", "stop"} {
		_, out, _ := gw(t, cmd, "-h")
		if strings.Contains(out, "-store") || strings.Contains(out, "-cache-dir") {
			t.Errorf("%s -h lists flags it does not use:\n%s", cmd, out)
		}
	}
	if code, out, _ := gw(t, "help", "restore"); code != 0 || !strings.Contains(out, "(env GPUWARM_MOUNT)") || !strings.Contains(out, "(env GPUWARM_GPUS)") {
		t.Errorf("help restore: exit %d\n%s", code, out)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := gw(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "gpuwarm ") || !strings.Contains(out, "go1") {
		t.Fatalf("--version: exit %d, %q", code, out)
	}
	code, out, _ = gw(t, "version", "--json")
	var v map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v["version"] == nil || v["go"] == nil {
		t.Fatalf("version --json: exit %d, %q", code, out)
	}
}

var snake = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// checkKeys fails on any JSON object key that is not snake_case, except
// inside annotations (keys chosen by whoever packed the image).
func checkKeys(t *testing.T, what string, v any) {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if !snake.MatchString(k) {
				t.Errorf("%s: key %q is not snake_case", what, k)
			}
			if k != "annotations" {
				checkKeys(t, what, val)
			}
		}
	case []any:
		for _, e := range x {
			checkKeys(t, what, e)
		}
	}
}

func jsonOf(t *testing.T, what, out string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%s: not JSON: %v\n%s", what, err, out)
	}
	checkKeys(t, what, v)
	return v
}

func TestJSONOutputs(t *testing.T) {
	storeDir := t.TempDir()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "a.txt"), []byte("hello gpuwarm\n"), 0o644)
	os.MkdirAll(filepath.Join(src, "d"), 0o755)
	os.WriteFile(filepath.Join(src, "d/b.bin"), bytes.Repeat([]byte{7}, 3<<20), 0o644)
	must := func(args ...string) string {
		t.Helper()
		code, out, stderr := gw(t, append(args, "--store", storeDir, "--log-level", "warn")...)
		if code != 0 {
			t.Fatalf("%q: exit %d: %s", args, code, stderr)
		}
		return out
	}
	first := jsonOf(t, "pack", must("pack", src, "--tag", "app", "--json")).(map[string]any)
	if r, ok := first["dedup_ratio"].(float64); !ok || r <= 0 {
		t.Errorf("first pack: dedup_ratio %v, want a positive number", first["dedup_ratio"])
	}
	again := jsonOf(t, "pack", must("pack", src, "--tag", "app2", "--json")).(map[string]any)
	if v, ok := again["dedup_ratio"]; !ok || v != nil || again["new_bytes"].(float64) != 0 {
		t.Errorf("repack of the same tree: dedup_ratio %v (want null), new_bytes %v", v, again["new_bytes"])
	}
	ls := jsonOf(t, "ls", must("ls", "--json")).([]any)
	if len(ls) != 2 || ls[0].(map[string]any)["tag"] != "app" {
		t.Errorf("ls --json: %v", ls)
	}
	in := jsonOf(t, "inspect", must("inspect", "app", "--json", "--files")).(map[string]any)
	if img := in["image"].(map[string]any); img["files"].(float64) != 2 || len(in["entries"].([]any)) != 4 {
		t.Errorf("inspect --json --files: %v", in)
	}
	rm := jsonOf(t, "rm", must("rm", "app2", "--json")).(map[string]any)
	if r := rm["removed"].([]any); len(r) != 1 || r[0] != "app2" {
		t.Errorf("rm --json: %v", rm)
	}
	gcRep := jsonOf(t, "gc", must("gc", "--json", "--dry-run")).(map[string]any)
	if gcRep["live_images"].(float64) != 1 {
		t.Errorf("gc --json: %v", gcRep)
	}
	if code, _, stderr := gw(t, "rm", "nope", "--store", storeDir); code != 1 || !strings.Contains(stderr, `no container or tag "nope"`) {
		t.Errorf("rm of a missing tag: exit %d, %q", code, stderr)
	}
}

// Commands that only read a store never create one: a mistyped path is an
// error naming it; pack creates the store it writes to.
func TestReadOnlyCommandsDoNotCreateStores(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-store-here")
	for _, args := range [][]string{{"ls"}, {"inspect", "x"}, {"gc"}, {"rm", "x"}, {"profile", "show", "x"}} {
		code, _, stderr := gw(t, append(args, "--store", missing)...)
		if code != 1 || !strings.Contains(stderr, "no store at") {
			t.Errorf("%q on a missing store: exit %d, %q", args, code, stderr)
		}
		if _, err := os.Stat(missing); err == nil {
			t.Fatalf("%q created the store %s", args, missing)
		}
	}
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644)
	if code, _, stderr := gw(t, "pack", src, "--tag", "t", "--store", missing); code != 0 {
		t.Fatalf("pack into a new store: exit %d: %s", code, stderr)
	}
	if code, out, _ := gw(t, "ls", "--store", missing); code != 0 || !strings.Contains(out, "t ") {
		t.Fatalf("ls after pack: exit %d, %q", code, out)
	}
}
