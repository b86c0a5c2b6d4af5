package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// vmHWM is a process's peak resident memory in bytes.
func vmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// TestHugeStoreObjectsRefused: a tag object of 2 GB (a sparse file in the
// store) costs neither the mount daemon nor gpuwarm ls more than a few tens
// of megabytes: it is refused by size, with EIO for the lookup and an error
// naming the object for ls.
func TestHugeStoreObjectsRefused(t *testing.T) {
	requireFUSE(t)
	_, storeDir, mnt, cacheDir := packedTree(t, 0)
	huge := filepath.Join(storeDir, "tags", "huge")
	if err := os.WriteFile(huge, []byte("image:"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(huge, 2<<30); err != nil {
		t.Fatal(err)
	}
	d := startMount(t, storeDir, mnt, cacheDir)
	before := vmHWM(t, d.cmd.Process.Pid)
	_, err := os.ReadDir(filepath.Join(mnt, "huge"))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("ls of a 2 GB tag: %v, want EIO", err)
	}
	if _, err := os.ReadDir(filepath.Join(mnt, "t")); err != nil {
		t.Fatalf("the good tag beside it: %v", err)
	}
	if after := vmHWM(t, d.cmd.Process.Pid); after-before > 64<<20 {
		t.Fatalf("the daemon's peak memory grew by %d MB on a 2 GB tag", (after-before)>>20)
	}
	if !strings.Contains(d.logs.String(), "limit") {
		t.Fatalf("the daemon did not say why:\n%s", d.logs.String())
	}
	var out bytes.Buffer
	cmd := exec.Command(gpuwarmBin, "ls", "--store", storeDir)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("gpuwarm ls: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "huge") || !strings.Contains(out.String(), "limit") {
		t.Fatalf("gpuwarm ls does not name the oversized tag:\n%s", out.String())
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && ru.Maxrss > 128<<10 {
		t.Fatalf("gpuwarm ls peaked at %d MB on a 2 GB tag", ru.Maxrss>>10)
	}
}
