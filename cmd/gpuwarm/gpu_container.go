package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/gpuwarm/gpuwarm/gpu"
	"github.com/gpuwarm/gpuwarm/restore/container"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// annGPUs, in a container's runtime config, lists the GPU indices it was
// given, so that a restore can give its new container the same ones (or
// those --gpus names).
const annGPUs = "gpuwarm.gpus"

// containerGPUs returns the spec edit that makes GPUs visible in a
// container (list: indices or UUIDs, comma-separated, or "all"), as the
// NVIDIA Container Toolkit's CDI specs do, and the indices it gives.
// inventory reads the worker's GPUs (a restore reads them once for this
// and its GPU checks).
func containerGPUs(list string, inventory func() (*gpu.Inventory, error)) (func(*specs.Spec) error, []string, error) {
	if list == "" {
		return nil, nil, nil
	}
	inv, err := inventory()
	if err != nil {
		return nil, nil, fmt.Errorf("--gpus: %w", err)
	}
	var names []string
	if list == "all" {
		for i := range inv.GPUs {
			names = append(names, strconv.Itoa(i))
		}
	} else {
		seen := map[int]bool{}
		for _, w := range splitList(list) {
			i, err := inv.Find(w)
			if err != nil {
				return nil, nil, usagef("--gpus: %w", err)
			}
			if seen[i] {
				return nil, nil, usagef("--gpus: GPU %d named twice", i)
			}
			seen[i] = true
			names = append(names, strconv.Itoa(i))
		}
	}
	if len(names) == 0 {
		return nil, nil, usagef("--gpus %q names no GPU", list)
	}
	cs, err := gpu.CDISpec(inv)
	if err != nil {
		return nil, nil, fmt.Errorf("--gpus: %w", err)
	}
	edit := func(s *specs.Spec) error {
		container.StripGPUs(s, gpu.ContainerLibDir)
		if err := container.ApplyCDI(s, cs, names, gpu.ContainerLibDir); err != nil {
			return err
		}
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[annGPUs] = strings.Join(names, ",")
		return nil
	}
	return edit, names, nil
}
