package main

import (
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// containerGPUs returns the spec edit that makes GPUs visible in a
// container, and the GPUs it names.
func containerGPUs(list string) (func(*specs.Spec) error, []string, error) {
	if list == "" {
		return nil, nil, nil
	}
	return nil, nil, usagef("--gpus with --image: not yet")
}
