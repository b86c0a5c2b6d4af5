package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gpuwarm/gpuwarm/gpu"
	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/pack"
	"github.com/gpuwarm/gpuwarm/restore/container"
	"github.com/gpuwarm/gpuwarm/restore/weights"
)

// runContainer starts image o.image from the mount as container o.name:
// the image's root read-only under a writable overlay, its entrypoint and
// command (or args), through runc, detached.
func (o *runOptions) runContainer(ctx context.Context, args []string) (err error) {
	if o.name == "" {
		return usagef("--image needs --name: the container's name (for snapshot --name, ps, stop, rm)")
	}
	if err := container.ValidName(o.name); err != nil {
		return usagef("--name: %w", err)
	}
	if o.hostPIDs {
		return usagef("--host-pids is for bare processes: a container has its own PID namespace, CUDA ones included")
	}
	mem, err := container.ParseMemory(o.memory)
	if err != nil {
		return usagef("--memory: %w", err)
	}
	if o.cpus < 0 {
		return usagef("--cpus %g: want a positive number", o.cpus)
	}
	var binds []container.Bind
	for _, v := range o.volumes {
		b, err := container.ParseBind(v)
		if err != nil {
			return usagef("-v: %w", err)
		}
		binds = append(binds, b)
	}
	for _, e := range o.env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return usagef("-e %q: want K=V", e)
		}
	}
	rc, _, err := o.ctr.runc(ctx, false)
	if err != nil {
		return err
	}
	id, lower, err := imageOnMount(o.mount, o.image)
	if err != nil {
		return err
	}
	cfg, err := o.imageRunConfig(ctx, id)
	if err != nil {
		return err
	}
	logPath := o.logPath
	if logPath == "" {
		logPath = filepath.Join("/var/log/gpuwarm", o.name+".log")
	}
	gpuEdit, gpuList, err := containerGPUs(o.gpus, gpu.ReadInventory)
	if err != nil {
		return err
	}
	rec := container.Record{Name: o.name, Image: o.image, ImageID: id.String(), Mount: o.mount, GPUs: gpuList,
		Memory: mem, CPUs: o.cpus, OwnNet: o.ownNet, Log: logPath, Created: time.Now().UTC()}
	c, err := container.Prepare(o.ctr.dir, rec, lower, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			c.Remove(context.WithoutCancel(ctx), rc)
		}
	}()
	netns := ""
	if o.ownNet {
		netns = container.NetNSPath(o.name)
		if err := container.NewNetNS(netns); err != nil {
			return err
		}
	}
	env := []string(o.env)
	var imageEnv []string // none for an image packed from a directory
	if cfg != nil {
		imageEnv = cfg.Env
	}
	if !hasEnv(imageEnv, weights.EnvSocket) && !hasEnv(env, weights.EnvSocket) {
		// gpuwarm makes the socket, when it needs the workload, inside
		// the container's own root filesystem.
		env = append(env, weights.EnvSocket+"="+containerWeightsSocket)
	}
	s, err := container.Spec(container.SpecOptions{Name: o.name, Rootfs: c.Rootfs(), Image: cfg, Args: args, Env: env,
		Mounts: binds, Memory: mem, CPUs: o.cpus, OwnNet: netns, Edit: gpuEdit})
	if err != nil {
		return err
	}
	// What runc's CRIU is told when it checkpoints this container.
	conf, err := c.CRIUConfig(false)
	if err != nil {
		return err
	}
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations["org.criu.config"] = conf
	if err := c.WriteSpec(s); err != nil {
		return err
	}
	stdout, stderr, err := logPipes(logPath)
	if err != nil {
		return err
	}
	pid, err := c.Start(ctx, rc, container.Stdio{Stdout: stdout, Stderr: stderr})
	stdout.Close()
	stderr.Close()
	if err != nil {
		return err
	}
	if o.json {
		printJSON(o.out, struct {
			PID   int    `json:"pid"`
			Name  string `json:"name"`
			Image string `json:"image"`
			Log   string `json:"log"`
		}{pid, o.name, id.String(), logPath})
	} else {
		fmt.Fprintln(o.out, pid)
	}
	if o.wait {
		for syscall.Kill(pid, 0) == nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// imageRunConfig reads an image's OCI run config (Env, Entrypoint, Cmd,
// WorkingDir, User) from its manifest; a directory pack has none.
func (o *runOptions) imageRunConfig(ctx context.Context, id digest.ID) (*v1.Config, error) {
	st, err := o.store.open(ctx)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ix, err := manifest.Load(ctx, st, id)
	if err != nil {
		return nil, err
	}
	if k := ix.Annotations["gpuwarm.kind"]; k == "snapshot" {
		return nil, fmt.Errorf("image %s is a snapshot: gpuwarm restore runs it", id)
	}
	cfg, ok, err := pack.ImageConfig(ix.Annotations)
	if err != nil || !ok {
		return nil, err
	}
	return &cfg, nil
}
