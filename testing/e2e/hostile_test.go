package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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
	if !d.logHas("limit") {
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

// gwFail runs gpuwarm expecting it to fail, within limit, and returns its
// output.
func gwFail(t *testing.T, limit time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, gpuwarmBin, args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("gpuwarm %s did not end within %v:\n%s", strings.Join(args, " "), limit, out)
	}
	if err == nil {
		t.Fatalf("gpuwarm %s succeeded:\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

func mountedHere(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// TestBadMountPoints: an empty name, a regular file and a directory with
// files in it are refused before anything is mounted, saying why; a mount
// point whose daemon is stopped is reported, not waited on forever.
func TestBadMountPoints(t *testing.T) {
	requireFUSE(t)
	_, storeDir, mnt, cacheDir := packedTree(t, 0)
	tmp := t.TempDir()
	if out := gwFail(t, 10*time.Second, "mount", "", "--store", storeDir, "--cache-dir", cacheDir); !strings.Contains(out, "empty") {
		t.Errorf("empty mount point: %s", out)
	}
	file := filepath.Join(tmp, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	if out := gwFail(t, 10*time.Second, "mount", file, "--store", storeDir, "--cache-dir", cacheDir); !strings.Contains(out, "not a directory") {
		t.Errorf("regular file: %s", out)
	}
	if mountedHere(file) {
		syscall.Unmount(file, syscall.MNT_DETACH)
		t.Fatal("a failed mount on a regular file left a mount behind")
	}
	full := filepath.Join(tmp, "full")
	os.MkdirAll(full, 0o755)
	os.WriteFile(filepath.Join(full, "precious"), []byte("x"), 0o644)
	if out := gwFail(t, 10*time.Second, "mount", full, "--store", storeDir, "--cache-dir", cacheDir); !strings.Contains(out, "not empty") || !strings.Contains(out, "--nonempty") {
		t.Errorf("non-empty directory: %s", out)
	}
	if mountedHere(full) {
		t.Fatal("a refused mount left a mount behind")
	}
	d := startMount(t, storeDir, full, cacheDir, "--nonempty")
	if _, err := os.Stat(filepath.Join(full, "t")); err != nil {
		t.Fatalf("--nonempty mount: %v", err)
	}
	d.stop(t)

	// A stopped daemon: a second mount on its mount point says so.
	d2 := startMount(t, storeDir, mnt, cacheDir)
	d2.cmd.Process.Signal(syscall.SIGSTOP)
	defer d2.cmd.Process.Signal(syscall.SIGCONT)
	start := time.Now()
	out := gwFail(t, 30*time.Second, "mount", mnt, "--store", storeDir, "--cache-dir", filepath.Join(tmp, "cache2"))
	if !strings.Contains(out, "does not answer") {
		t.Errorf("mount over a stopped daemon's mount: %s", out)
	}
	t.Logf("refused after %v", time.Since(start))
	d2.cmd.Process.Signal(syscall.SIGCONT)
	d2.stop(t)
}

// asUser runs cmd as uid 65534 (nobody) with the given supplementary
// groups and returns its error.
func asUser(groups []uint32, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: groups}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// TestAccessModel: by default every local user may read the images (as
// programs run from the mount as other users must) but only root may read
// .stats; with --group only root and that group's members may list or
// enter the mount, so nobody else can make the daemon load a manifest.
func TestAccessModel(t *testing.T) {
	requireFUSE(t)
	_, storeDir, mnt, cacheDir := packedTree(t, 0)
	// Let others reach the mount point (test directories are 0700).
	for d := filepath.Dir(mnt); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	d := startMount(t, storeDir, mnt, cacheDir)
	if err := asUser(nil, "cat", filepath.Join(mnt, "t", "small.txt")); err != nil {
		t.Fatalf("an unprivileged user cannot read an image: %v", err)
	}
	if err := asUser(nil, "cat", filepath.Join(mnt, ".stats")); err == nil {
		t.Fatal("an unprivileged user read .stats")
	}
	if _, err := os.ReadFile(filepath.Join(mnt, ".stats")); err != nil {
		t.Fatalf("root cannot read .stats: %v", err)
	}
	d.stop(t)

	const gid = 54321
	d = startMount(t, storeDir, mnt, cacheDir, "--group", strconv.Itoa(gid), "--public-stats")
	if err := asUser(nil, "ls", mnt); err == nil {
		t.Fatal("a user outside --group listed the mount")
	}
	if err := asUser(nil, "cat", filepath.Join(mnt, "t", "small.txt")); err == nil {
		t.Fatal("a user outside --group read an image")
	}
	if err := asUser([]uint32{gid}, "cat", filepath.Join(mnt, "t", "small.txt")); err != nil {
		t.Fatalf("a member of --group cannot read an image: %v", err)
	}
	if err := asUser([]uint32{gid}, "cat", filepath.Join(mnt, ".stats")); err != nil {
		t.Fatalf("--public-stats: a member cannot read .stats: %v", err)
	}
	if _, err := os.ReadFile(filepath.Join(mnt, "t", "small.txt")); err != nil {
		t.Fatalf("root cannot read through a --group mount: %v", err)
	}
	d.stop(t)
}
