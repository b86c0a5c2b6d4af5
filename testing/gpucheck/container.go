package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

// The PyTorch workload as a container (-mode container, or after the bare
// checks with -containers): an image holding its Python environment (the
// interpreter, its standard library, the system's shared libraries and the
// torch virtual environment, hard-linked from this machine's and packed),
// run through the gpuwarm CLI with --gpus, snapshotted with its GPU state,
// and restored lazily once and then twice at once on the one GPU, every copy
// answering bit-identically. torch.compile stays off in the container:
// Triton compiles its launchers with the host's C compiler, which the
// image would have to carry too.

var (
	gwBin      = flag.String("gpuwarm", "bin/gpuwarm", "the gpuwarm binary (container checks drive its CLI)")
	containers = flag.Bool("containers", true, "run the container checks")
	ctrPlain   = flag.Bool("container-transparent", true, "container checks: also restore the workload without the weights library")
)

// gwc runs the gpuwarm CLI with the container checks' environment.
type gwc struct {
	bin string
	env []string
}

func (g *gwc) cmd(args ...string) *exec.Cmd {
	c := exec.Command(g.bin, args...)
	c.Env = g.env
	return c
}

func (g *gwc) run(args ...string) (string, error) {
	out, err := g.cmd(args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("gpuwarm %s: %v: %s", strings.Join(args, " "), err, lastLines(string(out)))
	}
	return string(out), nil
}

func containerChecks(script string, gb float64) []bu.Row {
	dir := filepath.Join(*workDir, "ctr")
	os.RemoveAll(dir)
	bin, _ := filepath.Abs(*gwBin)
	g := &gwc{bin: bin, env: append(os.Environ(), "GPUWARM_STORE="+filepath.Join(dir, "store"),
		"GPUWARM_MOUNT="+filepath.Join(dir, "mnt"), "GPUWARM_CONTAINERS="+filepath.Join(dir, "containers"),
		"GPUWARM_RUNC_ROOT=/run/gpuwarm-gpucheck", "GPUWARM_CACHE_DIR="+filepath.Join(dir, "cache"))}
	// The containers' logs are appended to: a line from an earlier run
	// would pass for this one's (removed below, before each container).
	logOf := func(name string) string { return filepath.Join("/var/log/gpuwarm", name+".log") }
	phase("container: building the Python environment's image")
	rootfs := filepath.Join(dir, "rootfs")
	if !check("container: root filesystem of the Python environment", buildPyRootfs(rootfs, script)) {
		return nil
	}
	t := time.Now()
	out, err := g.run("pack", "--tag", "pyenv", rootfs)
	if !check("container: pack the Python environment", err) {
		return nil
	}
	fmt.Printf("     packed the Python environment in %.1fs: %s\n", time.Since(t).Seconds(), lastLines(out))
	wdir := filepath.Join(dir, "weights")
	out2, err := exec.Command("python3", script, "--make", wdir, "--gb", fmt.Sprint(gb)).CombinedOutput()
	if !check("container: make weights", errorIf(err, out2)) {
		return nil
	}
	if _, err := g.run("pack", "--tag", "weights", wdir); !check("container: pack weights", err) {
		return nil
	}
	mntDir := filepath.Join(dir, "mnt")
	os.MkdirAll(mntDir, 0o755)
	mount := g.cmd("mount", "--mem-cache", fmt.Sprintf("%dG", *memGB), "--disk-cache", fmt.Sprintf("%dG", *diskGB))
	mount.Stdout, mount.Stderr = os.Stderr, os.Stderr
	if !check("container: mount", mount.Start()) {
		return nil
	}
	defer func() {
		out, _ := g.cmd("ps", "--json").Output()
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.SplitN(line, `"name":"`, 2); len(f) == 2 {
				g.run("rm", "--container", strings.SplitN(f[1], `"`, 2)[0])
			}
		}
		mount.Process.Signal(syscall.SIGTERM)
		mount.Wait()
	}()
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(filepath.Join(mntDir, "pyenv")); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	lib, _ := filepath.Abs(*weightsLib)
	rows := []bu.Row{}
	// The workload twice: restored by the CUDA driver alone (transparent),
	// and with the weights library (the weights uploaded from the mount);
	// the second is restored twice at once as well.
	variants := []bool{true}
	if *ctrPlain {
		variants = []bool{false, true}
	}
	for _, withLib := range variants {
		sfx, what := "", "transparent"
		if withLib {
			sfx, what = "w", "weights library"
		}
		name := func(n string) string { return n + sfx }
		for _, n := range []string{"orig", "one", "twin0", "twin1"} {
			os.Remove(logOf(name(n)))
		}
		phase("container (%s): cold boot in a container", what)
		t = time.Now()
		// A network namespace of its own: the CUDA process binds an
		// abstract Unix socket, and two restores in one network namespace
		// (the host's) cannot both bind it.
		args := []string{"run", "--image", "pyenv", "--name", name("orig"), "--gpus", "0", "--net-own",
			"-v", filepath.Join(mntDir, "weights") + ":/weights:ro", "-e", "PYTHONUNBUFFERED=1"}
		wargs := []string{"--", "/venv/bin/python3", "/app/torch_workload.py", "--weights", "/weights", "--no-compile"}
		if withLib {
			args = append(args, "-v", lib+":/gwlib:ro", "-e", "PYTHONPATH=/gwlib")
			wargs = append(wargs, "--weights-lib")
		}
		_, err = g.run(append(args, wargs...)...)
		if !check("container ("+what+"): run with --gpus 0", err) {
			return rows
		}
		ready, err := waitPrefix(logOf(name("orig")), "ready", 10*time.Minute, 0)
		if !check("container ("+what+"): torch sees the GPU inside the container and the model boots", err) {
			return rows
		}
		boot := time.Since(t)
		pid := containerPID(g, name("orig"))
		want, err := askSignal(pid, logOf(name("orig")), 0)
		if !check("container ("+what+"): first answer", err) {
			return rows
		}
		fmt.Printf("     cold boot in a container to first answer %.2fs (%s)\n", boot.Seconds(), ready)
		fmt.Printf("     its abstract Unix sockets: %v\n", abstractSockets(pid))
		check("container ("+what+"): its GPU memory on GPU 0 (NVML, host PID)", onGPU(pid, 0))

		phase("container (%s): snapshot", what)
		t = time.Now()
		snap := "gsnap" + sfx
		out, err = g.run("snapshot", "--name", name("orig"), "--tag", snap)
		if !check("container ("+what+"): snapshot with GPU state", err) {
			return rows
		}
		fmt.Printf("     snapshot %.2fs: %s\n", time.Since(t).Seconds(), strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "))
		if withLib && !strings.Contains(out, "released by the workload") {
			check("container (weights library): the snapshot references the weights", fmt.Errorf("no weights line: %s", out))
			return rows
		}
		g.run("rm", name("orig"))

		// restoreAndAsk restores the snapshot as container n and returns
		// the time from start to the restored model's first answer.
		restoreAndAsk := func(n string, start time.Time, extra ...string) (time.Duration, error) {
			c := g.cmd(append([]string{"restore", snap, "--lazy", "--name", n}, extra...)...)
			stdout, _ := c.StdoutPipe()
			c.Stderr = os.Stderr
			if err := c.Start(); err != nil {
				return 0, err
			}
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil || !strings.Contains(line, " pid ") {
				c.Process.Kill()
				c.Wait()
				return 0, fmt.Errorf("restore %s said %q (%v)", n, line, err)
			}
			rpid, _ := strconv.Atoi(strings.Fields(strings.SplitN(line, " pid ", 2)[1])[0])
			got, err := askSignal(rpid, logOf(n), 0)
			took := time.Since(start)
			go func() { bufio.NewReader(stdout).WriteTo(os.Stdout) }()
			if werr := c.Wait(); werr != nil && err == nil {
				err = werr
			}
			if err == nil && got != want {
				err = fmt.Errorf("%s answered %s, before the snapshot %s", n, got, want)
			}
			return took, err
		}
		bootRow := "container: cold boot (no torch.compile)"
		oneRow := "container (" + what + "): lazy restore, first answer"
		if withLib == variants[0] {
			rows = append(rows, bu.Row{Name: bootRow, Value: boot.Seconds(), Unit: "s"})
		}
		phase("container (%s): one lazy restore", what)
		one, err := restoreAndAsk(name("one"), time.Now(), "--gpus", "0")
		if check("container ("+what+"): lazy restore answers bit-identically (--gpus 0)", err) {
			fmt.Printf("     restored container, lazy, to first answer %.3fs\n", one.Seconds())
			check("container ("+what+"): the restored copy's GPU memory on GPU 0", onGPU(containerPID(g, name("one")), 0))
			rows = append(rows, bu.Row{Name: oneRow, Value: one.Seconds(), Unit: "s", Baseline: bootRow, Goal: "<= 1.0 s"})
		}
		g.run("rm", name("one"))
		if !withLib {
			continue
		}
		time.Sleep(time.Second)

		phase("container (%s): two lazy restores of one snapshot at once", what)
		start := time.Now()
		var wg sync.WaitGroup
		took := make([]time.Duration, 2)
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				took[i], errs[i] = restoreAndAsk(name(fmt.Sprintf("twin%d", i)), start)
			}()
		}
		wg.Wait()
		both := max(took[0], took[1])
		if check("container ("+what+"): two concurrent restores on one GPU both answer bit-identically", errorsJoin(errs)) {
			fmt.Printf("     two concurrent container restores: first answers at %.3fs and %.3fs\n", took[0].Seconds(), took[1].Seconds())
			rows = append(rows, bu.Row{Name: "container (" + what + "): two concurrent lazy restores, both answered", Value: both.Seconds(), Unit: "s",
				Baseline: oneRow, Goal: "<= 2.0 s"})
		}
	}
	return rows
}

func errorsJoin(errs []error) error {
	var msgs []string
	for _, e := range errs {
		if e != nil {
			msgs = append(msgs, e.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return fmt.Errorf("%s", strings.Join(msgs, "; "))
}

func containerPID(g *gwc, name string) int {
	out, _ := g.cmd("ps", "--json").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, `"name":"`+name+`"`) {
			if f := strings.SplitN(line, `"pid":`, 2); len(f) == 2 {
				n, _ := strconv.Atoi(strings.TrimRight(strings.SplitN(f[1], ",", 2)[0], "}"))
				return n
			}
		}
	}
	return 0
}

// askSignal sends SIGUSR1 to pid and returns the answer it logs after the
// skip-th "answer" line already there.
func askSignal(pid int, logPath string, _ int) (string, error) {
	if pid <= 0 {
		return "", fmt.Errorf("no pid for %s", logPath)
	}
	before := countPrefix(logPath, "answer ")
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		return "", err
	}
	line, err := waitPrefix(logPath, "answer ", 2*time.Minute, before)
	if err != nil {
		return "", err
	}
	return strings.TrimPrefix(line, "answer "), nil
}

func countPrefix(path, prefix string) int {
	b, _ := os.ReadFile(path)
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

// waitPrefix waits for the (skip+1)-th line of path starting with prefix.
func waitPrefix(path, prefix string, limit time.Duration, skip int) (string, error) {
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(path)
		n := 0
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, prefix) {
				if n == skip {
					return l, nil
				}
				n++
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no %q line in %s after %s: %s", prefix, path, limit, lastLines(string(b)))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// buildPyRootfs makes a root filesystem of this machine's Python
// environment from hard links: the interpreter and its standard library,
// the shared libraries of /usr/lib, the virtual environment torch lives in
// (as /venv), the workload script as /app/torch_workload.py.
func buildPyRootfs(root, script string) error {
	out, err := exec.Command("python3", "-c", "import sys, os; print(sys.prefix); print(sys.base_prefix); print(os.path.realpath(sys.executable)); print('%d.%d' % sys.version_info[:2])").Output()
	if err != nil {
		return fmt.Errorf("python3: %w", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 4 {
		return fmt.Errorf("python3 printed %q", out)
	}
	prefix, base, exe, ver := f[0], f[1], f[2], f[3]
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	link := func(src, dst string) error {
		if _, err := os.Stat(src); err != nil {
			return nil // not on this machine
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, dst)), 0o755); err != nil {
			return err
		}
		if out, err := exec.Command("cp", "-al", src, filepath.Join(root, dst)).CombinedOutput(); err != nil {
			return fmt.Errorf("cp -al %s: %v: %s", src, err, out)
		}
		return nil
	}
	for _, p := range []struct{ src, dst string }{
		{exe, exe}, {filepath.Join(base, "lib", "python"+ver), filepath.Join("/usr/lib", "python"+ver)},
		{"/usr/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"}, {"/usr/lib64", "/usr/lib64"},
		{"/etc/passwd", "/etc/passwd"}, {"/etc/group", "/etc/group"}, {"/etc/ld.so.conf", "/etc/ld.so.conf"},
		{"/etc/ld.so.conf.d", "/etc/ld.so.conf.d"}, {"/etc/ssl", "/etc/ssl"},
	} {
		if err := link(p.src, p.dst); err != nil {
			return err
		}
	}
	if prefix != base {
		if err := link(prefix, "/venv"); err != nil {
			return err
		}
		// The venv's interpreter link names the host's path: the same path
		// exists in the image.
		os.Remove(filepath.Join(root, "venv/bin/python3"))
		if err := os.Symlink(exe, filepath.Join(root, "venv/bin/python3")); err != nil {
			return err
		}
	} else {
		os.MkdirAll(filepath.Join(root, "venv/bin"), 0o755)
		os.Symlink(exe, filepath.Join(root, "venv/bin/python3"))
	}
	for name, target := range map[string]string{"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"} {
		os.Symlink(target, filepath.Join(root, name))
	}
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "tmp"), 0o1777)
	os.Chmod(filepath.Join(root, "tmp"), 0o1777)
	os.MkdirAll(filepath.Join(root, "app"), 0o755)
	b, err := os.ReadFile(script)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(root, "app/torch_workload.py"), b, 0o644)
}

// abstractSockets lists the abstract Unix socket names pid holds.
func abstractSockets(pid int) []string {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && inodes[f[6]] && strings.HasPrefix(f[7], "@") {
			names = append(names, f[7])
		}
	}
	return names
}
