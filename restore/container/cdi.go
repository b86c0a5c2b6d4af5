package container

import (
	"fmt"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	cdi "tags.cncf.io/container-device-interface/specs-go"
)

// ApplyCDI makes devices (names of cs's devices) visible in s, with the
// edits cs applies to every container of its kind: device nodes created
// and allowed in the device cgroup, mounts bound in, environment set (a
// PATH-like variable named by libDir's LD_LIBRARY_PATH is extended, not
// replaced). This is the part of CDI's container-edits semantics gpuwarm's
// GPU specs use (no hooks, no intel RDT).
func ApplyCDI(s *specs.Spec, cs *cdi.Spec, devices []string, libDir string) error {
	edits := []cdi.ContainerEdits{cs.ContainerEdits}
	for _, name := range devices {
		found := false
		for _, d := range cs.Devices {
			if d.Name == name {
				edits = append(edits, d.ContainerEdits)
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("no device %s=%s on this worker", cs.Kind, name)
		}
	}
	for _, e := range edits {
		for _, n := range e.DeviceNodes {
			if n.Type != "c" && n.Type != "b" {
				return fmt.Errorf("device %s: type %q", n.Path, n.Type)
			}
			d := specs.LinuxDevice{Path: n.Path, Type: n.Type, Major: n.Major, Minor: n.Minor, FileMode: n.FileMode}
			s.Linux.Devices = append(s.Linux.Devices, d)
			maj, min := n.Major, n.Minor
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: n.Type, Major: &maj, Minor: &min, Access: "rwm"})
		}
		for _, m := range e.Mounts {
			s.Mounts = append(s.Mounts, specs.Mount{Source: m.HostPath, Destination: m.ContainerPath, Type: "bind", Options: m.Options})
		}
		s.Process.Env = mergeEnv(s.Process.Env, e.Env)
	}
	if libDir != "" {
		found := false
		for i, kv := range s.Process.Env {
			if v, ok := strings.CutPrefix(kv, "LD_LIBRARY_PATH="); ok {
				s.Process.Env[i] = "LD_LIBRARY_PATH=" + libDir + ":" + v
				found = true
			}
		}
		if !found {
			s.Process.Env = append(s.Process.Env, "LD_LIBRARY_PATH="+libDir)
		}
	}
	return nil
}

// StripGPUs removes what ApplyCDI added for NVIDIA GPUs (device nodes
// /dev/nvidia*, mounts under libDir), so that a restore can apply this
// worker's GPUs to a snapshot's config.
func StripGPUs(s *specs.Spec, libDir string) {
	type mm struct{ major, minor int64 }
	removed := map[mm]bool{}
	devs := s.Linux.Devices[:0]
	for _, d := range s.Linux.Devices {
		if strings.HasPrefix(d.Path, "/dev/nvidia") {
			removed[mm{d.Major, d.Minor}] = true
			continue
		}
		devs = append(devs, d)
	}
	s.Linux.Devices = devs
	rules := s.Linux.Resources.Devices[:0]
	for _, r := range s.Linux.Resources.Devices {
		if r.Allow && r.Major != nil && r.Minor != nil && removed[mm{*r.Major, *r.Minor}] {
			continue
		}
		rules = append(rules, r)
	}
	s.Linux.Resources.Devices = rules
	ms := s.Mounts[:0]
	for _, m := range s.Mounts {
		if !(libDir != "" && filepath.Dir(m.Destination) == libDir) {
			ms = append(ms, m)
		}
	}
	s.Mounts = ms
}
