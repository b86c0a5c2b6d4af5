package main

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/restore/container"
)

func init() {
	register(spec{name: "stop", args: "NAME...", help: "stop containers (SIGTERM, then SIGKILL after --timeout); gpuwarm rm removes them",
		new: func() command { return &stopOptions{} }})
}

type stopOptions struct {
	cli
	ctr     containerFlags
	timeout time.Duration
}

func (o *stopOptions) flags(fs *flagSet) {
	o.ctr.register(fs)
	fs.duration(&o.timeout, "timeout", 10*time.Second, true, "how long a container may take to exit after SIGTERM")
}

func (o *stopOptions) run(ctx context.Context, args []string) error {
	if err := wantArgs(args, 1, -1, "at least one container name"); err != nil {
		return err
	}
	rc, _, err := o.ctr.runc(ctx, false)
	if err != nil {
		return err
	}
	for _, name := range args {
		if _, err := container.Load(o.ctr.dir, name); err != nil {
			return err
		}
		if err := stopContainer(ctx, rc, name, o.timeout); err != nil {
			return err
		}
		fmt.Fprintf(o.out, "stopped %s\n", name)
	}
	return nil
}

// stopContainer sends SIGTERM to the container's init and SIGKILL to all
// of it after timeout (at once with timeout 0).
func stopContainer(ctx context.Context, rc *container.Runc, name string, timeout time.Duration) error {
	st, err := rc.State(ctx, name)
	if err != nil || st.Status == "stopped" {
		return nil
	}
	gone := func() bool { return syscall.Kill(st.PID, 0) != nil }
	if timeout > 0 {
		rc.Kill(ctx, name, "TERM")
		deadline := time.Now().Add(timeout)
		for !gone() && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !gone() {
		if err := rc.Kill(ctx, name, "KILL"); err != nil && !gone() {
			return err
		}
		for i := 0; i < 200 && !gone(); i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !gone() {
		return fmt.Errorf("container %s (pid %d) did not exit after SIGKILL", name, st.PID)
	}
	return nil
}
