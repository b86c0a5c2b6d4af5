package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/gpuwarm/gpuwarm/internal/proctree"
)

// A lazily restored tree depends on `gpuwarm restore` until all of its
// memory is in place: if that process dies first, nobody fills the rest and
// the program would read zeros there. The guard is a small process of its
// own that holds the read end of a pipe from `gpuwarm restore`: it exits
// quietly when told "done", and kills the restored tree when the pipe
// closes without it (the restore was killed, even with SIGKILL).

const guardCmd = "_lazy-guard"

func init() {
	register(spec{name: guardCmd, args: "PID", help: "(internal) kill a lazily restored tree if gpuwarm restore dies before its memory is in place",
		hidden: true, new: func() command { return &guardOptions{} }})
}

type guardOptions struct{ cli }

func (o *guardOptions) flags(fs *flagSet) {}

func (o *guardOptions) run(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return usagef("want the restored root's pid")
	}
	pid, err := strconv.Atoi(args[0])
	if err != nil || pid <= 1 {
		return usagef("bad pid %q", args[0])
	}
	signal.Ignore(os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	b, _ := io.ReadAll(os.Stdin)
	if strings.TrimSpace(string(b)) == "done" {
		return nil
	}
	for _, p := range proctree.Tree(pid) {
		syscall.Kill(p, syscall.SIGKILL)
	}
	fmt.Fprintf(os.Stderr, "gpuwarm: the lazy restore of pid %d ended before its memory was in place; killed the restored tree\n", pid)
	return nil
}

// startGuard starts the guard for a restored tree; done tells it all is in
// place (call it once, after the last page arrived).
func startGuard(pid int) (done func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, guardCmd, strconv.Itoa(pid))
	cmd.Stdin, cmd.Stderr = r, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // not in the terminal's signal path
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	r.Close()
	return func() {
		io.WriteString(w, "done\n")
		w.Close()
		cmd.Wait()
	}, nil
}
