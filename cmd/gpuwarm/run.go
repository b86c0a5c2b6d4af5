package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/restore"
	"github.com/gpuwarm/gpuwarm/restore/weights"
)

func init() {
	register(spec{name: "run", args: "[--image TAG] [--name N] [-- CMD [ARG...]]", help: "start a workload that can be snapshotted: a container of an image, or a bare process tree",
		new: func() command { return &runOptions{} }})
}

type runOptions struct {
	cli
	name, logPath        string
	wait, hostPIDs, json bool
	// Containers (--image).
	image, mount, memory, gpus string
	cpus                       float64
	env, volumes               multiFlag
	ownNet                     bool
	ctr                        containerFlags
	store                      storeFlags
}

func (o *runOptions) flags(fs *flagSet) {
	fs.StringVar(&o.name, "name", "", "record the PID as `NAME` (for gpuwarm snapshot --name)")
	fs.StringVar(&o.logPath, "log", "", "append the workload's output to `FILE` (default /var/log/gpuwarm/NAME.log, or none)")
	fs.BoolVar(&o.wait, "wait", false, "wait for the workload to exit")
	fs.BoolVar(&o.hostPIDs, "host-pids", false, "stay in the host's PID namespace (CUDA workloads)")
	fs.BoolVar(&o.json, "json", false, "print the PID as JSON")
	fs.StringVar(&o.image, "image", "", "run image `TAG` from the mount as a container (runc) instead of a bare process")
	mountFlag(fs, &o.mount, "gpuwarm mount `DIR` that presents the image")
	fs.StringVar(&o.memory, "memory", "", "with --image: memory limit `SIZE` (e.g. 8G)")
	fs.Float64Var(&o.cpus, "cpus", 0, "with --image: CPU limit in `CPUS` (e.g. 4 or 0.5)")
	fs.Var(&o.env, "e", "with --image: set `K=V` in the container (repeatable)")
	fs.Var(&o.volumes, "v", "with --image: bind `HOST:CTR[:ro]` into the container (repeatable)")
	fs.BoolVar(&o.ownNet, "net-own", false, "with --image: a network namespace of its own (loopback only) instead of the host's")
	fs.StringVar(&o.gpus, "gpus", "", "with --image: GPUs the container sees: `LIST` of indices or UUIDs, or all")
	o.ctr.register(fs)
	o.store.register(fs)
}

func (o *runOptions) run(ctx context.Context, args []string) error {
	if o.image != "" {
		return o.runContainer(ctx, args)
	}
	if len(args) == 0 {
		return usagef("want a command after --, or --image")
	}
	if o.memory != "" || o.cpus != 0 || len(o.env) > 0 || len(o.volumes) > 0 || o.ownNet || o.gpus != "" {
		return usagef("--memory, --cpus, -e, -v, --net-own and --gpus are for containers: add --image")
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
	cmd, err := restore.Run(restore.RunOptions{Args: args, Env: weightsEnv(os.Environ(), o.name), Stdout: logf, Stderr: logf, HostPIDs: o.hostPIDs})
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

// containerWeightsSocket is a container's weights socket, in its namespace.
const containerWeightsSocket = "/run/gpuwarm/weights.sock"

func hasEnv(env []string, k string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, k+"=") {
			return true
		}
	}
	return false
}

// weightsEnv names the socket a weights library (restore/weights) polls for
// gpuwarm, unless the environment names one already.
func weightsEnv(env []string, name string) []string {
	if hasEnv(env, weights.EnvSocket) {
		return env
	}
	if name == "" {
		var b [6]byte
		rand.Read(b[:])
		name = hex.EncodeToString(b[:])
	}
	return append(env, weights.EnvSocket+"="+filepath.Join("/run/gpuwarm/weights", name+".sock"))
}
