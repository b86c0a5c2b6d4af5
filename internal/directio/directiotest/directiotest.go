// Package directiotest runs a test on each kind of filesystem a writer using
// O_DIRECT meets: one that does it (the test's directory), one that refuses
// it (directio.OpenNew stands in EINVAL), and tmpfs when /dev/shm exists.
package directiotest

import (
	"os"
	"syscall"
	"testing"

	"github.com/gpuwarm/gpuwarm/internal/directio"
)

// Each calls fn with a fresh directory of each kind; refused says that
// O_DIRECT opens fail there, as on filesystems without it. directio.OpenNew
// is restored afterwards.
func Each(t *testing.T, fn func(name, dir string, refused bool)) {
	t.Helper()
	dirs := map[string]string{"disk": t.TempDir(), "refused": t.TempDir()}
	if shm, err := os.MkdirTemp("/dev/shm", "directio-test"); err == nil {
		defer os.RemoveAll(shm)
		dirs["tmpfs"] = shm
	}
	open := directio.OpenNew
	defer func() { directio.OpenNew = open }()
	for name, dir := range dirs {
		directio.OpenNew = open
		if name == "refused" {
			directio.OpenNew = func(string, uint32) (int, error) { return -1, syscall.EINVAL }
		}
		fn(name, dir, name == "refused")
	}
}
