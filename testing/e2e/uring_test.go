package e2e

import (
	"os"
	"slices"
	"strings"
	"testing"
)

const uringParam = "/sys/module/fuse/parameters/enable_uring"

// transports runs test once with requests through /dev/fuse and once
// through io_uring queues (--fuse-uring), with the fuse module's
// enable_uring parameter set for it (and put back after).
func transports(t *testing.T, test func(t *testing.T, flags []string)) {
	t.Run("dev-fuse", func(t *testing.T) { test(t, nil) })
	t.Run("io_uring", func(t *testing.T) {
		old, err := os.ReadFile(uringParam)
		if err != nil {
			t.Skipf("this kernel has no FUSE over io_uring (Linux 6.14+ built with CONFIG_FUSE_IO_URING): %v", err)
		}
		if strings.TrimSpace(string(old)) != "Y" {
			if err := os.WriteFile(uringParam, []byte("1"), 0); err != nil {
				t.Skipf("cannot enable FUSE over io_uring: %v", err)
			}
			t.Cleanup(func() { os.WriteFile(uringParam, []byte("0"), 0) })
		}
		test(t, []string{"--fuse-uring"})
	})
}

// checkTransport fails the test if a --fuse-uring mount answered nothing
// through its rings (or a /dev/fuse one did).
func checkTransport(t *testing.T, d *daemon, flags []string) {
	t.Helper()
	n := d.stats(t).FUSE.URingRequests
	if uring := slices.Contains(flags, "--fuse-uring"); uring != (n > 0) {
		t.Errorf("%d requests answered through io_uring queues (flags %v)\n%s", n, flags, d.logs.String())
	}
}
