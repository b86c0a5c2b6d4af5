package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/gpuwarm/gpuwarm/fusefs"
	"github.com/gpuwarm/gpuwarm/testing/registry"
	"golang.org/x/sys/unix"
)

// requireContainers skips (fails under CI) without runc or the registry.
func requireContainers(t *testing.T) {
	t.Helper()
	requireCRIU(t)
	missing := ""
	if _, err := exec.LookPath("runc"); err != nil {
		missing = "runc"
	} else if _, err := registry.Binary(); err != nil {
		missing = "docker-registry"
	}
	if missing != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s missing: make setup installs it", missing)
		}
		t.Skipf("%s missing: make setup installs it", missing)
	}
}

// writeLayout writes img as an OCI image layout at dir.
func writeLayout(t *testing.T, dir string, img v1.Image) {
	t.Helper()
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
}

func startRegistry(t *testing.T) *registry.Server {
	t.Helper()
	srv, err := registry.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	return srv
}

// buildStaticWorkload builds the workload without cgo: it runs in an image
// that holds nothing else.
func buildStaticWorkload(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gpuwarm-workload")
	cmd := exec.Command("go", "build", "-o", bin, "../../testing/workload/cmd/gpuwarm-workload")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return bin
}

// ctrEnv is a worker for container tests: a store, a mount, and private
// places for containers and runc's state, so tests do not see each other's
// containers; every container is removed at the end.
type ctrEnv struct {
	tmp, store, mnt string
	env             []string
}

func newCtrEnv(t *testing.T, mountArgs ...string) *ctrEnv {
	t.Helper()
	tmp := t.TempDir()
	e := &ctrEnv{tmp: tmp, store: filepath.Join(tmp, "store"), mnt: filepath.Join(tmp, "mnt")}
	// Short paths: runc's state directory holds a unix socket.
	runcRoot, err := os.MkdirTemp("/run", "gpuwarm-e2e-runc")
	if err != nil {
		t.Fatal(err)
	}
	e.env = append(os.Environ(), "GPUWARM_STORE="+e.store, "GPUWARM_MOUNT="+e.mnt,
		"GPUWARM_CONTAINERS="+filepath.Join(tmp, "containers"), "GPUWARM_RUNC_ROOT="+runcRoot)
	t.Cleanup(func() { os.RemoveAll(runcRoot) })
	return e
}

// mount starts the worker's mount; the containers go before it (their
// overlays hold it).
func (e *ctrEnv) mount(t *testing.T, extra ...string) {
	t.Helper()
	startMount(t, e.store, e.mnt, filepath.Join(e.tmp, "cache"), extra...)
	t.Cleanup(e.removeAll)
}

// removeAll removes every container of the test.
func (e *ctrEnv) removeAll() {
	{
		out, _ := e.cmd("ps", "--json").Output()
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			var c struct{ Name string }
			if json.Unmarshal([]byte(line), &c) == nil && c.Name != "" {
				e.cmd("rm", "--container", c.Name).Run()
			}
		}
	}
}

func (e *ctrEnv) cmd(args ...string) *exec.Cmd {
	c := exec.Command(gpuwarmBin, args...)
	c.Env = e.env
	return c
}

func (e *ctrEnv) gw(t *testing.T, args ...string) string {
	t.Helper()
	c := e.cmd(args...)
	var stderr strings.Builder
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("gpuwarm %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

type psLine struct {
	Name, State, Snapshot, Image string
	PID                          int
	Log                          string
}

func (e *ctrEnv) ps(t *testing.T) map[string]psLine {
	t.Helper()
	out := e.gw(t, "ps", "--json")
	m := map[string]psLine{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var p psLine
		if err := json.Unmarshal([]byte(line), &p); err != nil {
			t.Fatalf("ps --json: %v: %q", err, line)
		}
		m[p.Name] = p
	}
	return m
}

// TestContainerImageSources packs one image pushed to a real registry from
// the registry, from an OCI layout and from a docker save archive; all
// three present the same flattened tree on the mount (whiteouts, an opaque
// directory, a hard link across layers, a directory replaced by a file),
// and the real Debian image runs its python3 as a container.
func TestContainerImageSources(t *testing.T) {
	requireContainers(t)
	reg := startRegistry(t)
	e := newCtrEnv(t)
	img, err := registry.WorkloadImage(buildStaticWorkload(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ref := reg.Ref("test/workload", "v1")
	if err := registry.Push(ctx, ref, img); err != nil {
		t.Fatal(err)
	}
	writeLayout(t, filepath.Join(e.tmp, "layout"), img)
	archive := filepath.Join(e.tmp, "workload.tar")
	tag, _ := name.NewTag("test/workload:v1")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	e.gw(t, "pack", "--image", ref, "--tag", "from-registry")
	e.gw(t, "pack", "--image", filepath.Join(e.tmp, "layout"), "--tag", "from-layout")
	e.gw(t, "pack", "--image", archive, "--tag", "from-archive")

	debian := "/var/lib/gpuwarm/test-images/debian12-python3-stdlib.tar"
	if _, err := os.Stat(debian); err != nil {
		t.Fatalf("the Debian test image is missing (make setup builds it): %v", err)
	}
	dimg, err := registry.FileImage(debian, v1.Config{Cmd: []string{"python3"}, Env: []string{"LANG=C.UTF-8"}})
	if err != nil {
		t.Fatal(err)
	}
	dref := reg.Ref("test/debian", "12")
	if err := registry.Push(ctx, dref, dimg); err != nil {
		t.Fatal(err)
	}
	e.gw(t, "pack", "--image", dref, "--tag", "debian")

	e.mount(t)
	for _, tag := range []string{"from-registry", "from-layout", "from-archive"} {
		root := filepath.Join(e.mnt, tag)
		read := func(p string) string {
			b, err := os.ReadFile(filepath.Join(root, p))
			if err != nil {
				return "<absent>"
			}
			return string(b)
		}
		for p, want := range map[string]string{
			"srv/hello": "hello from the image\n", "etc/stale": "<absent>", "opt/old/a": "<absent>",
			"opt/old/b": "after the opaque directory", "was-dir": "now a file", "data/model-link.bin": "weights v1",
		} {
			if got := read(p); got != want {
				t.Errorf("%s: %s = %q, want %q", tag, p, got, want)
			}
		}
		var a, b syscall.Stat_t
		syscall.Stat(filepath.Join(root, "data/model.bin"), &a)
		syscall.Stat(filepath.Join(root, "data/model-link.bin"), &b)
		if a.Ino != b.Ino || a.Nlink != 2 {
			t.Errorf("%s: the hard link across layers is not one file (inodes %d, %d, links %d)", tag, a.Ino, b.Ino, a.Nlink)
		}
	}
	// The real distribution: python3 of Debian 12 in a container.
	logPath := filepath.Join(e.tmp, "py.log")
	e.gw(t, "run", "--image", "debian", "--name", "py", "--log", logPath, "--wait", "--",
		"python3", "-c", "import sys, os; print('python', sys.version_info[:2], os.getpid(), os.environ['LANG'])")
	line := waitLine(t, logPath, "python")
	if line != "python (3, 11) 1 C.UTF-8" {
		t.Fatalf("python3 in the Debian container printed %q", line)
	}
	// The same tree packed from a directory: an image without an image
	// config (no Env, no Cmd) runs the command given.
	e.gw(t, "pack", filepath.Join(e.mnt, "debian"), "--tag", "debian-dir")
	logPath = filepath.Join(e.tmp, "py-dir.log")
	e.gw(t, "run", "--image", "debian-dir", "--name", "py-dir", "--log", logPath, "--wait", "--",
		"/usr/bin/python3", "-c", "import sys, os; print('python', sys.version_info[:2], os.getpid())")
	if line := waitLine(t, logPath, "python"); line != "python (3, 11) 1" {
		t.Fatalf("python3 in the container of the directory-packed image printed %q", line)
	}
}

// TestContainerSnapshotRestoredThreeTimes runs the workload image as a
// container that serves requests on the host's network with memory and CPU
// limits, changes its root filesystem, snapshots it, and restores it three
// times at once, lazily: each restore answers with the original memory in a
// PID namespace of its own, under its own cgroup with the limits applied,
// and keeps the root filesystem's changes; ps, stop and rm manage them.
func TestContainerSnapshotRestoredThreeTimes(t *testing.T) {
	requireContainers(t)
	e := newCtrEnv(t)
	packWorkloadImage(t, e)
	e.mount(t)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// A volume that is a tmpfs of the host's: it stays the host's (bound
	// again by every restore), never copied as the container's own tmpfs
	// mounts are.
	hostTmpfs := filepath.Join(e.tmp, "host-tmpfs")
	os.Mkdir(hostTmpfs, 0o755)
	if err := syscall.Mount("tmpfs", hostTmpfs, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(hostTmpfs, syscall.MNT_DETACH) })
	out := e.gw(t, "run", "--image", "wl", "--name", "orig", "--log", filepath.Join(e.tmp, "orig.log"), "--memory", "512M", "--cpus", "1.5", "-e", "EXTRA=1",
		"-v", hostTmpfs+":/shared", "--", "--mb", "64", "--listen", addr)
	pid, _ := strconv.Atoi(strings.TrimSpace(out))
	orig := e.ps(t)["orig"]
	want := strings.Fields(waitLine(t, orig.Log, "ready"))[1]
	if got := ask(t, addr, "checksum"); got != want {
		t.Fatalf("the container answered %q over TCP, its log says %q", got, want)
	}
	checkLimits(t, pid, 512<<20, 150000)
	// Root filesystem changes: a new file, a changed one, a deleted one.
	root := fmt.Sprintf("/proc/%d/root", pid)
	os.WriteFile(root+"/tmp/written", []byte("kept"), 0o644)
	os.WriteFile(root+"/srv/hello", []byte("changed"), 0o644)
	os.Remove(root + "/etc/passwd")
	os.WriteFile(root+"/dev/shm/segment", []byte("shared"), 0o600) // a tmpfs gpuwarm saves, not CRIU
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if !strings.Contains(string(env), "WORKLOAD=image") || !strings.Contains(string(env), "EXTRA=1") {
		t.Fatalf("the container's environment lacks the image's or -e's variables: %q", env)
	}
	e.gw(t, "snapshot", "--name", "orig", "--tag", "snap")
	// The three restores start on an empty cache: they share it, so each
	// chunk comes from the store once, not three times.
	cacheDir := filepath.Join(e.tmp, "cache")
	e.gw(t, "cache", "evict", "--all", "--cache-dir", cacheDir)
	fetched := func() int64 {
		var s struct {
			FetchBytes int64 `json:"fetch_bytes"`
		}
		b, _ := os.ReadFile(filepath.Join(e.mnt, ".stats"))
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("the mount's stats %q: %v", b, err)
		}
		return s.FetchBytes
	}
	before := fetched()

	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.cmd("restore", "snap", "--lazy", "--name", fmt.Sprintf("r%d", i))
			if b, err := c.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("restore r%d: %v\n%s", i, err, b)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ps := e.ps(t)
	nsSeen := map[string]string{}
	for i := range 3 {
		n := fmt.Sprintf("r%d", i)
		c := ps[n]
		if c.State != "running" || c.Snapshot != "snap" || c.Image != "wl" {
			t.Fatalf("ps: %s is %+v", n, c)
		}
		from := sizeOf(c.Log)
		syscall.Kill(c.PID, syscall.SIGUSR1)
		if got := strings.Fields(waitNewLine(t, c.Log, from, "checksum"))[1]; got != want {
			t.Fatalf("%s: restored memory checksum %s, want %s", n, got, want)
		}
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.PID))
		if !strings.Contains(string(status), fmt.Sprintf("NSpid:\t%d\t1\n", c.PID)) {
			t.Fatalf("%s: not PID 1 of its own namespace:\n%s", n, status)
		}
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", c.PID))
		if other, ok := nsSeen[ns]; ok {
			t.Fatalf("%s and %s share PID namespace %s", n, other, ns)
		}
		nsSeen[ns] = n
		checkLimits(t, c.PID, 512<<20, 150000)
		cgroupIs(t, c.PID, "/gpuwarm/"+n)
		root := fmt.Sprintf("/proc/%d/root", c.PID)
		checkTmpfsMounts(t, n, c.PID)
		if err := os.WriteFile(root+"/shared/"+n, []byte(n), 0o644); err != nil {
			t.Fatalf("%s: writing to the host's tmpfs volume: %v", n, err)
		}
		if b, _ := os.ReadFile(filepath.Join(hostTmpfs, n)); string(b) != n {
			t.Fatalf("%s: a file written to /shared is not in the host's tmpfs (%q): the volume was copied, not bound", n, b)
		}
		for p, w := range map[string]string{"/tmp/written": "kept", "/srv/hello": "changed", "/etc/passwd": "<absent>", "/opt/old/b": "after the opaque directory",
			"/dev/shm/segment": "shared"} {
			b, err := os.ReadFile(root + p)
			got := string(b)
			if err != nil {
				got = "<absent>"
			}
			if got != w {
				t.Fatalf("%s: %s = %q, want %q (the root filesystem's changes travel with the snapshot)", n, p, got, w)
			}
		}
	}
	// Every restore has read all its memory (the checksums): the store
	// gave the snapshot's and the image's bytes about once.
	var images int64
	for _, line := range strings.Split(strings.TrimSpace(e.gw(t, "cache", "stat", "snap", "wl", "--json", "--cache-dir", cacheDir)), "\n") {
		var st struct{ Bytes int64 }
		json.Unmarshal([]byte(line), &st)
		images += st.Bytes
	}
	got := fetched() - before
	if images == 0 || got > images*3/2 {
		t.Fatalf("three restores from an empty cache fetched %d bytes; the snapshot and its image hold %d", got, images)
	}
	t.Logf("three restores from an empty cache fetched %d bytes; the snapshot and its image hold %d", got, images)
	// Three restores listen on the one port (SO_REUSEPORT): each request
	// is answered with the snapshot's memory.
	for range 6 {
		if got := ask(t, addr, "checksum"); got != want {
			t.Fatalf("a restored container answered %q over TCP, want %q", got, want)
		}
	}
	e.gw(t, "stop", "--timeout", "0", "r0")
	if st := e.ps(t)["r0"].State; st != "stopped" {
		t.Fatalf("after stop, r0 is %q", st)
	}
	e.gw(t, "rm", "r0", "r1", "r2", "orig")
	if left := e.ps(t); len(left) != 0 {
		t.Fatalf("after rm: %v", left)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), filepath.Join(e.tmp, "containers")) {
		t.Fatalf("rm left a mount (overlay or tmpfs) behind:\n%s", mounts)
	}
}

// checkTmpfsMounts: a restored container's tmpfs mounts are as runc made
// the original's: /dev holds working device nodes and keeps nosuid,
// /dev/shm is nodev and noexec, the masked /proc/acpi is empty and
// read-only.
func checkTmpfsMounts(t *testing.T, name string, pid int) {
	t.Helper()
	root := fmt.Sprintf("/proc/%d/root", pid)
	var st syscall.Stat_t
	if err := syscall.Stat(root+"/dev/null", &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFCHR || st.Rdev != 259 {
		t.Fatalf("%s: /dev/null is not the 1:3 device (%+v, %v)", name, st, err)
	}
	if err := os.WriteFile(root+"/dev/null", []byte("x"), 0); err != nil {
		t.Fatalf("%s: writing /dev/null: %v", name, err)
	}
	if err := os.WriteFile(root+"/proc/acpi/x", nil, 0o600); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("%s: writing under the masked /proc/acpi: %v, want a read-only filesystem", name, err)
	}
	mi, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	want := map[string][]string{"/dev": {"nosuid"}, "/dev/shm": {"nosuid", "nodev", "noexec"}, "/proc/acpi": {"ro"}}
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || want[f[4]] == nil {
			continue
		}
		opts := "," + f[5] + ","
		for _, o := range want[f[4]] {
			if !strings.Contains(opts, ","+o+",") {
				t.Fatalf("%s: %s is mounted %s, want %s among its options", name, f[4], f[5], o)
			}
		}
		delete(want, f[4])
	}
	if len(want) != 0 {
		t.Fatalf("%s: no mount at %v:\n%s", name, want, mi)
	}
}

// TestContainerLazyRestoreKilled: SIGKILL of `gpuwarm restore` (and of its
// guard) while a container's memory is still arriving takes the container
// down with it.
func TestContainerLazyRestoreKilled(t *testing.T) {
	requireContainers(t)
	e := newCtrEnv(t)
	packWorkloadImage(t, e)
	e.mount(t)
	e.gw(t, "run", "--image", "wl", "--name", "orig", "--log", filepath.Join(e.tmp, "orig.log"), "--", "--mb", "128")
	waitLine(t, e.ps(t)["orig"].Log, "ready")
	e.gw(t, "snapshot", "--name", "orig", "--tag", "snap")
	// A second mount over a slow store: filling 128 MB takes seconds.
	slow := filepath.Join(e.tmp, "slow")
	startMount(t, e.store+"?sim-latency=5ms&sim-bandwidth=3e7", slow, filepath.Join(e.tmp, "cache2"), "--no-prefetch")
	t.Cleanup(e.removeAll)
	cmd := e.cmd("restore", "snap", "--lazy", "--mount", slow, "--name", "victim", "--lazy-workers", "1")
	rpid := startRestore(t, cmd)
	syscall.Kill(guardOf(t, rpid), syscall.SIGKILL)
	cmd.Process.Kill()
	cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := os.ReadFile("/proc/" + strconv.Itoa(rpid) + "/stat")
		if err != nil || strings.Contains(string(st), ") Z") {
			break
		}
		if time.Now().After(deadline) {
			syscall.Kill(rpid, syscall.SIGKILL)
			t.Fatalf("the lazily restored container (pid %d) still runs after gpuwarm restore was killed mid-fill: %s", rpid, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// packWorkloadImage packs the workload image (from a docker archive: the
// registry is exercised by TestContainerImageSources) as tag wl.
func packWorkloadImage(t *testing.T, e *ctrEnv) {
	t.Helper()
	img, err := registry.WorkloadImage(buildStaticWorkload(t))
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(e.tmp, "workload.tar")
	tag, _ := name.NewTag("test/workload:v1")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	e.gw(t, "pack", "--image", archive, "--tag", "wl")
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ask sends one request line to the workload over TCP.
func ask(t *testing.T, addr, req string) string {
	t.Helper()
	var c net.Conn
	var err error
	for i := 0; i < 100; i++ {
		if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintln(c, req)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s %q: %v", addr, req, err)
	}
	return strings.TrimSpace(line)
}

// cgroupOf returns the cgroup path of pid for controller (v1), or its
// unified path (v2), and the directory under /sys/fs/cgroup holding it.
func cgroupOf(t *testing.T, pid int, controller string) (string, string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	unified := ""
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == controller {
				return f[2], filepath.Join("/sys/fs/cgroup", controller, f[2])
			}
		}
		if f[0] == "0" {
			unified = f[2]
		}
	}
	return unified, filepath.Join("/sys/fs/cgroup", unified)
}

func cgroupIs(t *testing.T, pid int, want string) {
	t.Helper()
	if got, _ := cgroupOf(t, pid, "memory"); got != want {
		t.Fatalf("pid %d is in cgroup %q, want %q", pid, got, want)
	}
}

// checkLimits reads pid's memory and CPU limits from its cgroup files.
func checkLimits(t *testing.T, pid int, mem int64, quota int) {
	t.Helper()
	_, dir := cgroupOf(t, pid, "memory")
	read := func(dir, f string) string {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return strings.TrimSpace(string(b))
	}
	if v := read(dir, "memory.max"); !strings.HasPrefix(v, "<") {
		if v != strconv.FormatInt(mem, 10) {
			t.Fatalf("pid %d: memory.max %s, want %d", pid, v, mem)
		}
		if c := read(dir, "cpu.max"); c != fmt.Sprintf("%d 100000", quota) {
			t.Fatalf("pid %d: cpu.max %q, want %d 100000", pid, c, quota)
		}
		return
	}
	if v := read(dir, "memory.limit_in_bytes"); v != strconv.FormatInt(mem, 10) {
		t.Fatalf("pid %d: memory.limit_in_bytes %s, want %d (cgroup %s)", pid, v, mem, dir)
	}
	_, cdir := cgroupOf(t, pid, "cpu")
	if v := read(cdir, "cpu.cfs_quota_us"); v != strconv.Itoa(quota) {
		t.Fatalf("pid %d: cpu.cfs_quota_us %s, want %d (cgroup %s)", pid, v, quota, cdir)
	}
}

// TestContainerOwnNetwork: --net-own gives the container a network
// namespace of its own (loopback only); a server listening there is
// snapshotted with it and a restore serves in a new namespace of its own.
// CRIU is kept from iptables-restore (not in PATH), as on GPU hosts that
// lack it: a namespace nothing outside can reach needs no network lock.
func TestContainerOwnNetwork(t *testing.T) {
	requireContainers(t)
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", filepath.Dir(goBin)+":/usr/local/bin:/usr/bin:/bin")
	if p, err := exec.LookPath("iptables-restore"); err == nil {
		t.Fatalf("iptables-restore still in PATH at %s", p)
	}
	e := newCtrEnv(t)
	packWorkloadImage(t, e)
	e.mount(t)
	out := e.gw(t, "run", "--image", "wl", "--name", "net", "--log", filepath.Join(e.tmp, "net.log"), "--net-own", "--", "--mb", "16", "--listen", "127.0.0.1:7000")
	pid, _ := strconv.Atoi(strings.TrimSpace(out))
	want := strings.Fields(waitLine(t, e.ps(t)["net"].Log, "ready"))[1]
	hostNS, _ := os.Readlink("/proc/self/ns/net")
	if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); ns == hostNS || ns == "" {
		t.Fatalf("--net-own container is in the host's network namespace (%s)", ns)
	}
	if got := askIn(t, pid, "127.0.0.1:7000", "checksum"); got != want {
		t.Fatalf("answered %q in its namespace, want %q", got, want)
	}
	e.gw(t, "snapshot", "--name", "net", "--tag", "netsnap")
	e.gw(t, "restore", "netsnap", "--name", "net2")
	r := e.ps(t)["net2"]
	if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", r.PID)); ns == hostNS {
		t.Fatal("the restore is in the host's network namespace")
	}
	if got := askIn(t, r.PID, "127.0.0.1:7000", "checksum"); got != want {
		t.Fatalf("the restore answered %q in its namespace, want %q", got, want)
	}
}

// askIn asks the workload over TCP from inside pid's network namespace: a
// socket belongs to the namespace it was made in.
func askIn(t *testing.T, pid int, addr, req string) string {
	t.Helper()
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // this thread leaves the host's namespace: it dies with the goroutine
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: err}
			return
		}
		var c net.Conn
		for i := 0; i < 100; i++ {
			if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintln(c, req)
		line, err := bufio.NewReader(c).ReadString('\n')
		ch <- result{strings.TrimSpace(line), err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("ask %s in pid %d's network namespace: %v", addr, pid, r.err)
	}
	return r.s
}

// TestContainerSnapshotOnWarmWorker: a container started where an earlier
// one left the image's files cached whole (assembled in the disk tier, the
// kernel's page cache holding them) is snapshotted and restored. Its
// program and libraries were then mapped through the overlay from files
// the mount would open by FUSE passthrough, whose mappings CRIU cannot
// place in the container's mount namespace ("Can't lookup mount"): the
// overlay's lower layer is the mount's .rootfs tree, never passthrough.
func TestContainerSnapshotOnWarmWorker(t *testing.T) {
	requireContainers(t)
	e := newCtrEnv(t)
	debian := "/var/lib/gpuwarm/test-images/debian12-python3-stdlib.tar"
	img, err := registry.FileImage(debian, v1.Config{Env: []string{"LANG=C.UTF-8"}})
	if err != nil {
		t.Fatal(err)
	}
	writeLayout(t, filepath.Join(e.tmp, "layout"), img)
	e.gw(t, "pack", "--image", filepath.Join(e.tmp, "layout"), "--tag", "deb")
	e.mount(t)
	// The first container reads python whole: the mount assembles it.
	e.gw(t, "run", "--image", "deb", "--name", "first", "--log", filepath.Join(e.tmp, "first.log"), "--wait", "--",
		"sh", "-c", "cat /usr/bin/python3.11 > /dev/null && python3 -c 'print(\"warm\")'")
	e.gw(t, "rm", "first")
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		b, err := os.ReadFile(filepath.Join(e.mnt, ".stats"))
		var s fusefs.Stats
		if err == nil && json.Unmarshal(b, &s) == nil && s.Assembly.Done > 0 && s.Assembly.Running == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no file assembled 20 s after a container read python whole: %s", b)
		}
	}
	logPath := filepath.Join(e.tmp, "second.log")
	e.gw(t, "run", "--image", "deb", "--name", "second", "--log", logPath, "--",
		"python3", "-c", "import os, time; print('ready', os.getpid(), flush=True); time.sleep(600)")
	waitLine(t, logPath, "ready")
	e.gw(t, "snapshot", "--name", "second", "--tag", "second-snap")
	e.gw(t, "rm", "second")
	e.gw(t, "restore", "second-snap", "--lazy", "--name", "second-r")
	if st := e.ps(t)["second-r"].State; st != "running" {
		t.Fatalf("the restored container is %q", st)
	}
}
