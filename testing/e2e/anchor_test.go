package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The spawning workload's children are `sleep <spawnMark>`: processes that
// come and go before the snapshot and after the restore.
const spawnMark = "3599.25"

// spawned lists the live (not zombie) `sleep spawnMark` processes.
func spawned() map[int]bool {
	out := map[int]bool{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if f := strings.Split(string(b), "\x00"); len(f) >= 2 && f[1] == spawnMark {
			if st, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil && !strings.Contains(string(st), ") Z") {
				out[pid] = true
			}
		}
	}
	return out
}

func killSpawned() {
	for pid := range spawned() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// snapshotSpawner runs the spawning workload in the host's PID namespace
// (as CUDA workloads run) and snapshots it into a fresh store.
func snapshotSpawner(t *testing.T, tmp string) string {
	t.Helper()
	requireCRIU(t)
	t.Cleanup(killSpawned)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	wl := buildWorkload(t)
	storeDir := filepath.Join(tmp, "store")
	logA := filepath.Join(tmp, "a.log")
	pidS := strings.TrimSpace(gw(t, "run", "--host-pids", "--log", logA, "--", wl, "--mb", "128",
		"--spawn", sleep+" "+spawnMark, "--spawn-every", "50ms"))
	waitLine(t, logA, "ready")
	for len(spawned()) < 3 {
		time.Sleep(20 * time.Millisecond)
	}
	gw(t, "snapshot", "--pid", pidS, "--tag", "wl", "--store", storeDir)
	// The snapshot killed the workload and its children; the restore needs
	// their PIDs free.
	pid, _ := strconv.Atoi(pidS)
	pids := []int{pid}
	for p := range spawned() {
		pids = append(pids, p)
	}
	killSpawned()
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range pids {
		for {
			if _, err := os.Stat("/proc/" + strconv.Itoa(p)); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pid %d of the snapshotted tree is still taken 10 s after the snapshot", p)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return storeDir
}

// TestLazyHostPIDTreeKilledTogether: a tree in the host's PID namespace
// (no init whose death takes the rest along) whose processes keep starting
// others: when every gpuwarm process of its lazy restore is killed at
// once, mid-fill, every process of the tree dies, those started after the
// restore included, before reading a page that never arrived.
func TestLazyHostPIDTreeKilledTogether(t *testing.T) {
	tmp := t.TempDir()
	storeDir := snapshotSpawner(t, tmp)
	mnt := filepath.Join(tmp, "mnt")
	startMount(t, storeDir+"?sim-latency=5ms&sim-bandwidth=3e7", mnt, filepath.Join(tmp, "cache"), "--no-prefetch")
	cmd := exec.Command(gpuwarmBin, "restore", "wl", "--lazy", "--mount", mnt, "--store", storeDir, "--lazy-workers", "1")
	rpid := startRestore(t, cmd)
	t.Cleanup(func() { syscall.Kill(rpid, syscall.SIGKILL) })
	// Let the restored tree start processes of its own while memory is
	// still arriving (128 MB at 30 MB/s: about 4 s).
	before := spawned()
	deadline := time.Now().Add(3 * time.Second)
	for {
		newer := 0
		for pid := range spawned() {
			if !before[pid] {
				newer++
			}
		}
		if newer >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	guard := guardOf(t, rpid)
	// Every gpuwarm process of the restore, at once.
	syscall.Kill(guard, syscall.SIGKILL)
	cmd.Process.Kill()
	cmd.Wait()
	deadline = time.Now().Add(10 * time.Second)
	for {
		left := spawned()
		st, err := os.ReadFile("/proc/" + strconv.Itoa(rpid) + "/stat")
		rootGone := err != nil || strings.Contains(string(st), ") Z")
		if rootGone && len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after every gpuwarm process of the lazy restore was killed mid-fill, root %d gone=%v and %d of its processes still run", rpid, rootGone, len(left))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLazyHostPIDTreeLetGo: once its memory is all in place, a lazily
// restored host-PID tree runs on its own: no task traced, it keeps
// starting processes and answers with the snapshot's memory.
func TestLazyHostPIDTreeLetGo(t *testing.T) {
	tmp := t.TempDir()
	storeDir := snapshotSpawner(t, tmp)
	mnt := filepath.Join(tmp, "mnt")
	startMount(t, storeDir+"?sim-latency=1ms&sim-bandwidth=2e8", mnt, filepath.Join(tmp, "cache"), "--no-prefetch")
	outFile := filepath.Join(tmp, "restored.log")
	res := gw(t, "restore", "wl", "--lazy", "--mount", mnt, "--store", storeDir, "--stdout", outFile)
	if !strings.Contains(res, "resident") {
		t.Fatalf("restore output: %s", res)
	}
	rpid, _ := strconv.Atoi(strings.Fields(strings.SplitN(res, "pid ", 2)[1])[0])
	t.Cleanup(func() { syscall.Kill(rpid, syscall.SIGKILL) })
	// gpuwarm restore has exited: nothing is traced any more, and the tree
	// goes on starting processes.
	before := spawned()
	deadline := time.Now().Add(5 * time.Second)
	for {
		newer := 0
		for pid := range spawned() {
			if !before[pid] {
				newer++
			}
		}
		if newer >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restored tree started %d processes in 5 s after its restore ended", newer)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for pid := range spawned() {
		if tr := tracerOf(pid); tr != 0 {
			t.Fatalf("spawned pid %d is still traced by %d", pid, tr)
		}
	}
	tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(rpid) + "/task")
	for _, e := range tasks {
		tid, _ := strconv.Atoi(e.Name())
		if tr := tracerOf(tid); tr != 0 {
			t.Fatalf("thread %d of the restored root is still traced by %d", tid, tr)
		}
	}
	syscall.Kill(rpid, syscall.SIGUSR1)
	if got := waitLine(t, outFile, "checksum"); len(strings.Fields(got)) != 2 {
		t.Fatalf("restored workload answered %q", got)
	}
	want := strings.Fields(waitLine(t, filepath.Join(tmp, "a.log"), "ready"))[1]
	if got := strings.Fields(waitLine(t, outFile, "checksum"))[1]; got != want {
		t.Fatalf("restored checksum %s, want %s", got, want)
	}
}

// tracerOf returns task tid's TracerPid, 0 when untraced or gone.
func tracerOf(tid int) int {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "TracerPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}
