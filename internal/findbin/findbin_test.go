package findbin

import (
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
