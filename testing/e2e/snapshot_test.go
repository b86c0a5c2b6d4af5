package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func buildWorkload(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gpuwarm-workload")
	if out, err := exec.Command("go", "build", "-o", bin, "../../testing/workload/cmd/gpuwarm-workload").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return bin
}

func requireCRIU(t *testing.T) {
	t.Helper()
	requireFUSE(t)
	for _, p := range []string{os.Getenv("GPUWARM_CRIU"), "/opt/gpuwarm/criu/bin/criu"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return
			}
		}
	}
	if _, err := exec.LookPath("criu"); err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("CRIU missing: make setup installs it")
	}
	t.Skip("CRIU missing: make setup installs it")
}

// waitLine waits until file holds a line starting with prefix.
// waitNewLine waits for a line starting with prefix written to file after
// from (its size when the caller started waiting): a container's log is
// appended to, and may hold lines of an earlier container of that name.
func waitNewLine(t *testing.T, file string, from int64, prefix string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var b []byte
	for time.Now().Before(deadline) {
		b, _ = os.ReadFile(file)
		if int64(len(b)) >= from {
			for _, l := range strings.Split(string(b[from:]), "\n") {
				if strings.HasPrefix(l, prefix) {
					return l
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no new %q line in %s:\n%s", prefix, file, b)
	return ""
}

// sizeOf is a file's size, 0 if it does not exist.
func sizeOf(file string) int64 {
	fi, err := os.Stat(file)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func waitLine(t *testing.T, file, prefix string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(file)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, prefix) {
				return l
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(file)
	t.Fatalf("no %q line in %s:\n%s", prefix, file, b)
	return ""
}

// TestSnapshotOnAResoreOnB: gpuwarm run + snapshot on worker A into a
// bucket; worker B (own cache, own mount) restores it eagerly and lazily
// through the CLI, and the restored memory checksums match.
func TestSnapshotOnARestoreOnB(t *testing.T) {
	requireCRIU(t)
	srv := startS3(t)
	url := srv.URL("fleet", "snap")
	wl := buildWorkload(t)
	tmp := t.TempDir()
	logA := filepath.Join(tmp, "a.log")
	pidS := strings.TrimSpace(gw(t, "run", "--log", logA, "--", wl, "--mb", "96"))
	pid, _ := strconv.Atoi(pidS)
	want := strings.Fields(waitLine(t, logA, "ready"))[1]
	out := gw(t, "snapshot", "--pid", pidS, "--tag", "wl", "--store", url)
	if !strings.Contains(out, "stored as wl") {
		t.Fatal(out)
	}
	time.Sleep(200 * time.Millisecond)
	if st, err := os.ReadFile("/proc/" + pidS + "/stat"); err == nil && !strings.Contains(string(st), ") Z") {
		t.Fatalf("the snapshotted workload still runs without --leave-running: %s", st)
	}
	_ = pid
	mntB := filepath.Join(tmp, "b/mnt")
	dB := startMount(t, url, mntB, filepath.Join(tmp, "b/cache"))
	t.Setenv("GPUWARM_CACHE_DIR", filepath.Join(tmp, "b/cache"))
	// The restores' temporary directories go here, to check none is left.
	tmpB := filepath.Join(tmp, "b/tmp")
	os.MkdirAll(tmpB, 0o755)
	t.Setenv("TMPDIR", tmpB)
	// Eager; lazy recording the order memory is used in; lazy in that order.
	modes := [][]string{nil, {"--lazy", "--record-profile"}, {"--lazy"}, {"--prefill"}}
	for i, mode := range modes {
		lazy := len(mode) > 0
		outFile := filepath.Join(tmp, "restored-"+strconv.Itoa(i)+".log")
		args := append([]string{"restore", "wl", "--mount", mntB, "--store", url, "--stdout", outFile}, mode...)
		res := gw(t, args...)
		if !strings.Contains(res, "restored wl as pid") || !strings.Contains(res, "resident") {
			t.Fatalf("restore output: %s", res)
		}
		rpid, _ := strconv.Atoi(strings.Fields(strings.SplitN(res, "pid ", 2)[1])[0])
		t.Cleanup(func() { syscall.Kill(rpid, syscall.SIGKILL) }) // also when a check below fails
		switch i {
		case 1:
			if !strings.Contains(res, "touched first, merged over 1 runs") {
				t.Fatalf("recording restore stored no profile: %s", res)
			}
		case 2:
			if !strings.Contains(res, "profile order") {
				t.Fatalf("the next lazy restore did not use the profile: %s", res)
			}
			show := gw(t, "profile", "show", "wl", "--store", url)
			if !strings.Contains(show, "last replay on this worker: restore") {
				t.Fatalf("profile show: %s", show)
			}
		case 3:
			// Filled by gpuwarm's daemon. (Not "0 faults": CRIU 4.2's
			// restorer touches some lazy pages itself before it stops the
			// tree, and those faults are served like any other.)
			if !strings.Contains(res, "lazy pages") || !strings.Contains(res, "copied ahead of demand") {
				t.Fatalf("prefill restore did not fill memory through gpuwarm's daemon: %s", res)
			}
		}
		syscall.Kill(rpid, syscall.SIGUSR1)
		got := strings.Fields(waitLine(t, outFile, "checksum"))[1]
		syscall.Kill(rpid, syscall.SIGKILL)
		if got != want {
			t.Fatalf("lazy=%v: restored on B with checksum %s, want %s", lazy, got, want)
		}
		t.Logf("lazy=%v: %s", lazy, strings.ReplaceAll(res, "\n", "; "))
		if left, _ := os.ReadDir(tmpB); len(left) > 0 {
			t.Fatalf("restore %v left %d entries in its temporary directory, first %s", mode, len(left), left[0].Name())
		}
	}
	// The worker's record of the last replay (kept in the cache directory)
	// outlives a restart of its mount daemon.
	dB.stop(t)
	startMount(t, url, mntB, filepath.Join(tmp, "b/cache"))
	if show := gw(t, "profile", "show", "wl", "--store", url); !strings.Contains(show, "last replay on this worker: restore") {
		t.Fatalf("profile show after the mount restarted: %s", show)
	}
}

// TestLazyRestoreKilledMidFill: when `gpuwarm restore --lazy` dies (even by
// SIGKILL) before the restored memory is all in place, the restored tree is
// killed rather than left to read zeros where its pages never arrived.
func TestLazyRestoreKilledMidFill(t *testing.T) { lazyRestoreKilledMidFill(t, false) }

// TestLazyRestoreAndGuardKilledTogether: the guard dies with `gpuwarm
// restore` (a broad kill of gpuwarm processes): the restored tree, in its
// own PID namespace, dies with them (the restore's ptrace anchor), before
// it can read a page that never arrived.
func TestLazyRestoreAndGuardKilledTogether(t *testing.T) { lazyRestoreKilledMidFill(t, true) }

func lazyRestoreKilledMidFill(t *testing.T, withGuard bool) {
	requireCRIU(t)
	wl := buildWorkload(t)
	tmp := t.TempDir()
	storeDir := filepath.Join(tmp, "store")
	logA := filepath.Join(tmp, "a.log")
	pidS := strings.TrimSpace(gw(t, "run", "--log", logA, "--", wl, "--mb", "128"))
	waitLine(t, logA, "ready")
	gw(t, "snapshot", "--pid", pidS, "--tag", "wl", "--store", storeDir)
	// A slow store: filling 128 MB takes seconds.
	mnt := filepath.Join(tmp, "mnt")
	startMount(t, storeDir+"?sim-latency=5ms&sim-bandwidth=3e7", mnt, filepath.Join(tmp, "cache"), "--no-prefetch")
	cmd := exec.Command(gpuwarmBin, "restore", "wl", "--lazy", "--mount", mnt, "--store", storeDir, "--lazy-workers", "1")
	tmpDir := filepath.Join(tmp, "tmp") // CRIU's work directory goes here
	os.MkdirAll(tmpDir, 0o755)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmpDir)
	rpid := startRestore(t, cmd)
	if withGuard {
		guard := guardOf(t, rpid)
		syscall.Kill(guard, syscall.SIGKILL)
	}
	cmd.Process.Kill() // mid-fill, uncatchable
	cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := os.ReadFile("/proc/" + strconv.Itoa(rpid) + "/stat")
		if err != nil || strings.Contains(string(st), ") Z") {
			break // gone (or dead, waiting for its new parent to reap it)
		}
		if time.Now().After(deadline) {
			syscall.Kill(rpid, syscall.SIGKILL)
			t.Fatalf("restored pid %d still runs after gpuwarm restore was killed mid-fill: %s", rpid, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Nor is anything left on disk: CRIU's work directory went once CRIU
	// was done with it.
	if left, _ := os.ReadDir(tmpDir); len(left) > 0 {
		t.Fatalf("the killed restore left %s in its temporary directory", left[0].Name())
	}
}

// startRestore starts a `gpuwarm restore` command and returns the restored
// root's pid, from its first line of output.
func startRestore(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.Contains(line, " pid ") {
		cmd.Process.Kill()
		t.Fatalf("restore said %q (%v)", line, err)
	}
	rpid, _ := strconv.Atoi(strings.Fields(strings.SplitN(line, "pid ", 2)[1])[0])
	return rpid
}

// guardOf finds the _lazy-guard process watching the restored root rpid.
func guardOf(t *testing.T, rpid int) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if f := strings.Split(string(b), "\x00"); len(f) >= 3 && f[1] == "_lazy-guard" && f[2] == strconv.Itoa(rpid) {
			return pid
		}
	}
	t.Fatalf("no _lazy-guard process for restored pid %d", rpid)
	return 0
}
