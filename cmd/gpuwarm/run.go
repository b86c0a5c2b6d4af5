package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/restore"
)

func init() {
	register(spec{name: "run", args: "[--name N] -- CMD [ARG...]", help: "start a workload that can be snapshotted (fresh PID, IPC and UTS namespaces)",
		new: func() command { return &runOptions{} }})
}

type runOptions struct {
	cli
	name, logPath        string
	wait, hostPIDs, json bool
}

func (o *runOptions) flags(fs *flagSet) {
	fs.StringVar(&o.name, "name", "", "record the PID as `NAME` (for gpuwarm snapshot --name)")
	fs.StringVar(&o.logPath, "log", "", "append the workload's output to `FILE` (default /var/log/gpuwarm/NAME.log, or none)")
	fs.BoolVar(&o.wait, "wait", false, "wait for the workload to exit")
	fs.BoolVar(&o.hostPIDs, "host-pids", false, "stay in the host's PID namespace (CUDA workloads)")
	fs.BoolVar(&o.json, "json", false, "print the PID as JSON")
}

func (o *runOptions) run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("want a command after --")
	}
	if o.name != "" {
		if err := manifest.ValidTag(o.name); err != nil {
			return usagef("--name: %w", err)
		}
	}
	out := o.logPath
	if out == "" && o.name != "" {
		out = filepath.Join("/var/log/gpuwarm", o.name+".log")
	}
	var logf *os.File
	if out != "" {
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		logf = f
	}
	cmd, err := restore.Run(restore.RunOptions{Args: args, Env: os.Environ(), Stdout: logf, Stderr: logf, HostPIDs: o.hostPIDs})
	if err != nil {
		return err
	}
	pid := cmd.Process.Pid
	if o.name != "" {
		if err := os.MkdirAll(runDir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(runDir, o.name+".pid"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return err
		}
	}
	if o.json {
		printJSON(o.out, struct {
			PID  int    `json:"pid"`
			Name string `json:"name,omitempty"`
			Log  string `json:"log,omitempty"`
		}{pid, o.name, out})
	} else {
		fmt.Fprintln(o.out, pid)
	}
	if o.wait {
		return cmd.Wait()
	}
	cmd.Process.Release()
	return nil
}
