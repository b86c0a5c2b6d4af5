package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/gpuwarm/gpuwarm/gpu"
	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
	"golang.org/x/sys/unix"
)

// driverProg holds gb of random half floats on the GPU (and MB of pinned
// host memory) and answers "sum".
const driverProg = `
import sys, torch
n = int(float(sys.argv[1]) * 1e9) // 2
x = torch.empty(n, dtype=torch.float16, device="cuda").uniform_()
pinned = torch.zeros(int(sys.argv[2]) << 20, dtype=torch.uint8, pin_memory=True) if int(sys.argv[2]) else None
torch.cuda.synchronize()
print("ready", float(x.sum(dtype=torch.float32)), flush=True)
for line in sys.stdin:
    print(float(x.sum(dtype=torch.float32)), flush=True)
`

var pinnedMB = flag.Int("driver-pinned-mb", 0, "driver mode: the program also holds this much pinned host memory")

// driverFloor measures the CUDA driver's own checkpoint and restore of a
// process in place (no CRIU, no gpuwarm): the floor under any restore of
// that much GPU state. Each round checkpoints, optionally collapses the
// process's host copy into 2 MiB pages (MADV_COLLAPSE through
// process_madvise), and restores; the answer must match after each.
func driverFloor(gb float64) []bu.Row {
	tag := fmt.Sprintf("driver-%g", gb)
	if *pinnedMB > 0 {
		tag += fmt.Sprintf("-pinned-%dMB", *pinnedMB)
	}
	for _, f := range []string{"enabled", "defrag"} {
		b, _ := os.ReadFile("/sys/kernel/mm/transparent_hugepage/" + f)
		fmt.Printf("     THP %s: %s", f, b)
	}
	p := bu.NewPipes()
	cmd := exec.Command("python3", "-c", driverProg, fmt.Sprint(gb), fmt.Sprint(*pinnedMB))
	cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.Env = p.CIn, p.COut, os.Stderr, pyEnv
	if !check(tag+": start", cmd.Start()) {
		return nil
	}
	p.Child()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ready, err := p.ReadLine(5 * time.Minute)
	if !check(tag+": ready", errorIf(err, []byte(ready))) {
		return nil
	}
	want := strings.TrimPrefix(ready, "ready ")
	pid := cmd.Process.Pid
	var rows []bu.Row
	for i, collapse := range []bool{false, true, false} {
		name := fmt.Sprintf("%s round %d", tag, i+1)
		t := time.Now()
		if !check(name+": lock", gpu.Lock(pid, time.Minute)) || !check(name+": checkpoint", gpu.Checkpoint(pid)) {
			return rows
		}
		ckpt := time.Since(t)
		rss, huge := anonMemory(pid)
		how := "4 KiB pages as the driver left them"
		if collapse {
			t = time.Now()
			ok, failed := collapseTHP(pid)
			d := time.Since(t)
			rss, huge = anonMemory(pid)
			fmt.Printf("     MADV_COLLAPSE %.2fs: %d ranges collapsed, %d refused\n", d.Seconds(), ok, failed)
			how = "collapsed into 2 MiB pages"
		}
		t = time.Now()
		err := gpu.Restore(pid)
		rest := time.Since(t)
		if !check(name+": restore", err) || !check(name+": unlock", gpu.Unlock(pid)) {
			return rows
		}
		got, err := p.Ask("sum", time.Minute)
		check(name+": same answer after restore", errorIfDiff(got, want, err))
		fmt.Printf("     %s: checkpoint %.2fs, restore %.2fs (%.1f GB/s); host copy %s, %s in huge pages (%s)\n",
			name, ckpt.Seconds(), rest.Seconds(), gb/rest.Seconds(), gbs(rss), gbs(huge), how)
		rows = append(rows, bu.Row{Name: fmt.Sprintf("driver restore in place, %s, %s", tag, how), Value: rest.Seconds(), Unit: "s"})
	}
	return rows
}

func gbs(b int64) string { return fmt.Sprintf("%.2f GB", float64(b)/1e9) }

// anonMemory is a process's resident anonymous memory and the part of it
// in transparent huge pages.
func anonMemory(pid int) (anon, huge int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fs[1], 10, 64)
		switch fs[0] {
		case "Anonymous:":
			anon = v << 10
		case "AnonHugePages:":
			huge = v << 10
		}
	}
	return anon, huge
}

// collapseTHP asks the kernel to collapse every large private anonymous
// mapping of pid into huge pages, 16 ranges of up to 1 GiB at a time.
func collapseTHP(pid int) (ok, failed int) {
	const huge = 2 << 20
	const madvCollapse = 25
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		fmt.Println("     pidfd_open:", err)
		return 0, 1
	}
	defer unix.Close(pidfd)
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	var ranges [][2]uintptr
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 5 || fs[1] != "rw-p" || fs[4] != "0" || (len(fs) > 5 && strings.HasPrefix(fs[5], "[s")) {
			continue
		}
		se := strings.SplitN(fs[0], "-", 2)
		s, _ := strconv.ParseUint(se[0], 16, 64)
		e, _ := strconv.ParseUint(se[1], 16, 64)
		s = (s + huge - 1) &^ (huge - 1)
		e &^= huge - 1
		for ; s+huge <= e; s += 1 << 30 {
			ranges = append(ranges, [2]uintptr{uintptr(s), uintptr(min(e, s+1<<30))})
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var firstErr error
	for _, r := range ranges {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			// An iovec of the other process's addresses (never ours to touch).
			iov := struct{ base, len uintptr }{r[0], r[1] - r[0]}
			_, _, e := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(pidfd), uintptr(unsafe.Pointer(&iov)), 1, madvCollapse, 0, 0)
			mu.Lock()
			defer mu.Unlock()
			if e != 0 {
				failed++
				if firstErr == nil {
					firstErr = e
				}
				return
			}
			ok++
		}()
	}
	wg.Wait()
	if firstErr != nil {
		fmt.Println("     process_madvise(MADV_COLLAPSE):", firstErr)
	}
	return ok, failed
}
