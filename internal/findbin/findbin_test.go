package findbin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFind(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(b, nil, 0o755)
	t.Setenv("FINDBIN_TEST", a)
	// a is missing, b exists: b.
	got, err := Find("FINDBIN_TEST", []string{b}, "no-such-program-xyz", Exists)
	if err != nil || got != b {
		t.Fatalf("got %q, %v", got, err)
	}
	// The environment's path comes first once it exists.
	os.WriteFile(a, nil, 0o755)
	if got, _ := Find("FINDBIN_TEST", []string{b}, "no-such-program-xyz", Exists); got != a {
		t.Fatalf("got %q, want %s", got, a)
	}
	// A probe refusing both: the error names each and why.
	_, err = Find("FINDBIN_TEST", []string{b}, "no-such-program-xyz", func(p string) (string, error) {
		return "", errors.New(p + " is too old")
	})
	if err == nil || !strings.Contains(err.Error(), a+" is too old") || !strings.Contains(err.Error(), b+" is too old") {
		t.Fatalf("error %v", err)
	}
}

// TestVersionCached: a helper's --version output is kept while the file is
// the same, and asked again once it changes.
func TestVersionCached(t *testing.T) {
	VersionCacheDir = t.TempDir()
	dir := t.TempDir()
	bin := filepath.Join(dir, "helper")
	count := filepath.Join(dir, "runs")
	script := func(v string) []byte {
		return []byte("#!/bin/sh\necho x >> " + count + "\necho 'Version: " + v + "'\n")
	}
	if err := os.WriteFile(bin, script("1.0"), 0o755); err != nil {
		t.Fatal(err)
	}
	runs := func() int { b, _ := os.ReadFile(count); return strings.Count(string(b), "x") }
	for range 3 {
		out, err := Version(context.Background(), bin)
		if err != nil || string(out) != "Version: 1.0\n" {
			t.Fatalf("Version: %q, %v", out, err)
		}
	}
	if runs() != 1 {
		t.Fatalf("the helper ran %d times for three asks", runs())
	}
	os.WriteFile(bin, script("2.0"), 0o755) // a reinstall
	if out, err := Version(context.Background(), bin); err != nil || string(out) != "Version: 2.0\n" || runs() != 2 {
		t.Fatalf("after the helper changed: %q, %v, %d runs", out, err, runs())
	}
	os.WriteFile(bin, []byte("#!/bin/sh\nexit 3\n"), 0o755)
	if _, err := Version(context.Background(), bin); err == nil {
		t.Fatal("a failing --version passed")
	}
}
