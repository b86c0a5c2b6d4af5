package container

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// SpecOptions describe a container's OCI runtime configuration.
type SpecOptions struct {
	Name   string
	Rootfs string     // the overlay's mount point
	Image  *v1.Config // the image's run config (nil: none)
	// Args replace the image's command (docker run IMAGE ARGS...: with an
	// entrypoint, they are its arguments).
	Args    []string
	Env     []string // K=V, over the image's
	Mounts  []Bind
	Memory  int64   // bytes; 0: no limit
	CPUs    float64 // 0: no limit
	OwnNet  string  // a network namespace of its own: its path (NewNetNS)
	Devices []specs.LinuxDevice
	// Edit, if set, changes the spec last (GPU injection).
	Edit func(*specs.Spec) error
}

// Bind is a host path mounted into the container (-v HOST:CTR[:ro]).
type Bind struct {
	Host, Container string
	ReadOnly        bool
}

// ParseBind parses -v HOST:CTR[:ro|rw].
func ParseBind(s string) (Bind, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Bind{}, fmt.Errorf("volume %q: want HOST:CONTAINER[:ro]", s)
	}
	b := Bind{Host: parts[0], Container: parts[1]}
	if !filepath.IsAbs(b.Host) || !filepath.IsAbs(b.Container) {
		return Bind{}, fmt.Errorf("volume %q: both paths must be absolute", s)
	}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			b.ReadOnly = true
		case "rw":
		default:
			return Bind{}, fmt.Errorf("volume %q: the mode must be ro or rw", s)
		}
	}
	if _, err := os.Stat(b.Host); err != nil {
		return Bind{}, fmt.Errorf("volume %q: %w", s, err)
	}
	return b, nil
}

// ParseMemory parses a size with an optional K, M, G or T suffix (powers
// of 1024), as docker run --memory does.
func ParseMemory(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	num := strings.TrimSuffix(strings.ToUpper(s), "B")
	if n := len(num); n > 0 {
		switch num[n-1] {
		case 'K':
			mult, num = 1<<10, num[:n-1]
		case 'M':
			mult, num = 1<<20, num[:n-1]
		case 'G':
			mult, num = 1<<30, num[:n-1]
		case 'T':
			mult, num = 1<<40, num[:n-1]
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 || v*float64(mult) > math.MaxInt64/2 {
		return 0, fmt.Errorf("memory %q: want a positive size such as 512M or 8G", s)
	}
	b := int64(v * float64(mult))
	if b < 6<<20 {
		return 0, fmt.Errorf("memory %q: below runc's minimum of 6 MiB", s)
	}
	return b, nil
}

// cpuPeriod is the CFS period limits are expressed in (100 ms, as docker).
const cpuPeriod = 100000

// Spec builds the container's runtime configuration: the image's process
// (or the one asked for) as PID 1 of its own mount, PID, IPC and UTS
// namespaces, with its own /proc, /dev and /sys, the host's network unless
// OwnNet, and cgroup limits.
func Spec(o SpecOptions) (*specs.Spec, error) {
	cfg := o.Image
	if cfg == nil {
		cfg = &v1.Config{}
	}
	args := append(append([]string{}, cfg.Entrypoint...), cfg.Cmd...)
	if len(o.Args) > 0 {
		args = append(append([]string{}, cfg.Entrypoint...), o.Args...)
	}
	if len(args) == 0 {
		return nil, fmt.Errorf("container %s: the image names no command (no Entrypoint or Cmd): give one after --", o.Name)
	}
	env := mergeEnv(append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, cfg.Env...), o.Env)
	cwd := cfg.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	user, err := resolveUser(o.Rootfs, cfg.User)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", o.Name, err)
	}
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
		"CAP_KILL", "CAP_AUDIT_WRITE"}
	s := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: o.Rootfs},
		Process: &specs.Process{
			Args: args, Env: env, Cwd: cwd, User: user,
			Capabilities: &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			// The container's processes keep the privileges they start
			// with: no setuid escalation.
			NoNewPrivileges: true,
		},
		Hostname: o.Name,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: "/gpuwarm/" + o.Name,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			MaskedPaths: []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
				"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	if o.OwnNet != "" {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: o.OwnNet})
	} else {
		// The host's network: the host's name resolution too.
		for _, f := range []string{"/etc/resolv.conf", "/etc/hosts"} {
			if _, err := os.Stat(f); err == nil {
				s.Mounts = append(s.Mounts, specs.Mount{Destination: f, Type: "bind", Source: f, Options: []string{"rbind", "ro"}})
			}
		}
	}
	// The standard character devices every container has.
	for _, d := range []struct {
		path         string
		major, minor int64
	}{{"/dev/null", 1, 3}, {"/dev/zero", 1, 5}, {"/dev/full", 1, 7}, {"/dev/random", 1, 8}, {"/dev/urandom", 1, 9}, {"/dev/tty", 5, 0}} {
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &d.major, Minor: &d.minor, Access: "rwm"})
	}
	ptsMajor := int64(136)
	ptmx := int64(2)
	s.Linux.Resources.Devices = append(s.Linux.Resources.Devices,
		specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &ptsMajor, Access: "rwm"},
		specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &[]int64{5}[0], Minor: &ptmx, Access: "rwm"})
	for _, d := range o.Devices {
		s.Linux.Devices = append(s.Linux.Devices, d)
		maj, min := d.Major, d.Minor
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: d.Type, Major: &maj, Minor: &min, Access: "rwm"})
	}
	for _, b := range o.Mounts {
		opts := []string{"rbind", "rprivate"}
		if b.ReadOnly {
			opts = append(opts, "ro")
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: b.Container, Type: "bind", Source: b.Host, Options: opts})
	}
	if o.Memory > 0 {
		m := o.Memory
		s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &m}
	}
	if o.CPUs > 0 {
		quota := int64(o.CPUs * cpuPeriod)
		period := uint64(cpuPeriod)
		s.Linux.Resources.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if o.Edit != nil {
		if err := o.Edit(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// mergeEnv returns base with over's variables replacing or added.
func mergeEnv(base, over []string) []string {
	idx := map[string]int{}
	var out []string
	for _, kv := range append(append([]string{}, base...), over...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// resolveUser turns an image's User (name or uid, optionally :group) into
// IDs, reading the image's /etc/passwd and /etc/group for names.
func resolveUser(rootfs, user string) (specs.User, error) {
	if user == "" {
		return specs.User{}, nil
	}
	name, group, hasGroup := strings.Cut(user, ":")
	var u specs.User
	uid, err := strconv.ParseUint(name, 10, 32)
	if err == nil {
		u.UID = uint32(uid)
		if ent, ok := lookupDB(filepath.Join(rootfs, "etc/passwd"), name, 2); ok && len(ent) > 3 {
			if gid, err := strconv.ParseUint(ent[3], 10, 32); err == nil {
				u.GID = uint32(gid)
			}
		}
	} else {
		ent, ok := lookupDB(filepath.Join(rootfs, "etc/passwd"), name, 0)
		if !ok || len(ent) < 4 {
			return u, fmt.Errorf("the image's user %q is not in its /etc/passwd", name)
		}
		uid, err1 := strconv.ParseUint(ent[2], 10, 32)
		gid, err2 := strconv.ParseUint(ent[3], 10, 32)
		if err1 != nil || err2 != nil {
			return u, fmt.Errorf("the image's /etc/passwd entry for %q is malformed", name)
		}
		u.UID, u.GID = uint32(uid), uint32(gid)
	}
	if hasGroup {
		gid, err := strconv.ParseUint(group, 10, 32)
		if err != nil {
			ent, ok := lookupDB(filepath.Join(rootfs, "etc/group"), group, 0)
			if !ok || len(ent) < 3 {
				return u, fmt.Errorf("the image's group %q is not in its /etc/group", group)
			}
			if gid, err = strconv.ParseUint(ent[2], 10, 32); err != nil {
				return u, fmt.Errorf("the image's /etc/group entry for %q is malformed", group)
			}
		}
		u.GID = uint32(gid)
	}
	return u, nil
}

// lookupDB finds the line of a passwd-style file whose field col is key.
func lookupDB(path, key string, col int) ([]string, bool) {
	// The image's file, not what a symlink in it points to on the host.
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
		return nil, false
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) > col && fields[col] == key {
			return fields, true
		}
	}
	return nil, false
}
