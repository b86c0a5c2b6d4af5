package restore

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

// RunOptions start a workload that can be snapshotted.
type RunOptions struct {
	Args   []string
	Env    []string
	Dir    string
	Stdin  *os.File // nil: /dev/null
	Stdout *os.File // nil: /dev/null
	Stderr *os.File // nil: /dev/null
	// HostPIDs keeps the host's PID namespace. The CUDA driver needs /proc
	// to match its PID, which a PID namespace without its own mount
	// namespace and /proc breaks; such workloads restore with their
	// original PIDs, so one at a time per snapshot on a worker.
	HostPIDs bool
}

// Run starts a workload as PID 1 of fresh PID, IPC and UTS namespaces and
// session leader of its own session, which is what CRIU needs to dump the
// tree alone and to restore it any number of times side by side: each
// restore recreates the PID namespace, so PIDs never clash.
//
// The mount namespace stays the host's, so the program's files are the
// mount's paths (for example /gpuwarm/<tag>/bin/python3) both when running
// and after restore; a private mount namespace would make CRIU dump every
// mount, FUSE ones included, which it cannot.
func Run(opt RunOptions) (*exec.Cmd, error) {
	if len(opt.Args) == 0 {
		return nil, fmt.Errorf("run: no command")
	}
	cmd := exec.Command(opt.Args[0], opt.Args[1:]...)
	cmd.Env = opt.Env
	cmd.Dir = opt.Dir
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	pick := func(f *os.File) *os.File {
		if f == nil {
			return devnull
		}
		return f
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pick(opt.Stdin), pick(opt.Stdout), pick(opt.Stderr)
	flags := uintptr(syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS)
	if opt.HostPIDs {
		flags = syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Setsid: true}
	// The workload must inherit nothing but its standard streams: CRIU
	// cannot dump, say, a /dev/fuse descriptor some library left open.
	closeOnExecAll()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", opt.Args[0], err)
	}
	return cmd, nil
}

// closeOnExecAll marks every descriptor above stderr close-on-exec.
func closeOnExecAll() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}
