package gpu

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	cdi "tags.cncf.io/container-device-interface/specs-go"
)

// What a container needs to use the host's GPUs, as the NVIDIA Container
// Toolkit's CDI specs describe it: the control device nodes, one node per
// GPU, and the driver's user-space libraries (libcuda, libnvidia-ml, the
// PTX JIT, ...), which must match the kernel driver and so come from the
// host, never from the image. ContainerEdits builds a CDI spec from NVML
// and the loader's library list; restore/container applies it to the
// container's OCI config.

// CDIKind is the CDI kind gpuwarm's GPU spec uses.
const CDIKind = "gpuwarm.dev/gpu"

// ContainerLibDir is where the driver's libraries appear in a container
// (the directory GPU images conventionally search; LD_LIBRARY_PATH names
// it), so that the image's own library directories stay untouched.
const ContainerLibDir = "/usr/local/nvidia/lib64"

// controlNodes are the driver's device nodes every CUDA process opens.
var controlNodes = []string{"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}

// CDISpec describes this worker's GPUs as a CDI spec: one device per GPU
// (named by its index), and the control nodes, libraries and environment
// every GPU container gets, from the worker's inventory.
func CDISpec(inv *Inventory) (*cdi.Spec, error) {
	spec := &cdi.Spec{Version: cdi.CurrentVersion, Kind: CDIKind}
	for _, g := range inv.GPUs {
		if g.Minor < 0 {
			return nil, fmt.Errorf("GPU %d: NVML gives no device minor number", g.Index)
		}
		node, err := deviceNode(fmt.Sprintf("/dev/nvidia%d", g.Minor))
		if err != nil {
			return nil, fmt.Errorf("GPU %d: %w", g.Index, err)
		}
		spec.Devices = append(spec.Devices, cdi.Device{Name: fmt.Sprint(g.Index), ContainerEdits: cdi.ContainerEdits{DeviceNodes: []*cdi.DeviceNode{node}}})
	}
	for _, p := range controlNodes {
		node, err := deviceNode(p)
		if err != nil {
			if p == "/dev/nvidia-uvm-tools" {
				continue // optional (profilers)
			}
			return nil, fmt.Errorf("%w (is nvidia-uvm loaded? nvidia-modprobe -u -c=0 creates the nodes)", err)
		}
		spec.ContainerEdits.DeviceNodes = append(spec.ContainerEdits.DeviceNodes, node)
	}
	libs, err := DriverLibraries(inv.Driver)
	if err != nil {
		return nil, err
	}
	for _, l := range libs {
		spec.ContainerEdits.Mounts = append(spec.ContainerEdits.Mounts, &cdi.Mount{HostPath: l.Host,
			ContainerPath: filepath.Join(ContainerLibDir, l.Name), Options: []string{"ro", "nosuid", "nodev", "rbind", "rprivate"}})
	}
	spec.ContainerEdits.Env = []string{"NVIDIA_DRIVER_VERSION=" + inv.Driver}
	return spec, nil
}

func deviceNode(path string) (*cdi.DeviceNode, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("GPU device node %s: %w", path, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFCHR {
		return nil, fmt.Errorf("GPU device node %s is not a character device", path)
	}
	major, minor := int64(unix.Major(uint64(st.Rdev))), int64(unix.Minor(uint64(st.Rdev)))
	mode := os.FileMode(0o666)
	return &cdi.DeviceNode{Path: path, Type: "c", Major: major, Minor: minor, FileMode: &mode, Permissions: "rwm"}, nil
}

// Library is a driver library to make visible: the host file and the
// name it has in the container (the versioned file, its soname link, and
// the unversioned development link each get one).
type Library struct{ Host, Name string }

// DriverLibraries finds the driver's user-space libraries: every
// lib*.so.VERSION of the driver's version in the directory the loader
// resolves libcuda.so.1 from, plus the names that link to them there
// (libcuda.so.1 -> libcuda.so.580.159.04).
func DriverLibraries(driver string) ([]Library, error) {
	dir, err := libcudaDir()
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	suffix := ".so." + driver
	real := map[string]bool{}
	var out []Library
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), suffix) && e.Type().IsRegular() {
			real[e.Name()] = true
			out = append(out, Library{Host: filepath.Join(dir, e.Name()), Name: e.Name()})
		}
	}
	if !real["libcuda"+suffix] {
		return nil, fmt.Errorf("no libcuda%s in %s: the driver's libraries do not match the loaded driver %s", suffix, dir, driver)
	}
	for _, e := range ents {
		if e.Type()&os.ModeSymlink == 0 {
			continue
		}
		t, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if real[filepath.Base(t)] {
			// Mount the file itself under the link's name: a bind mount
			// follows the link.
			out = append(out, Library{Host: filepath.Join(dir, filepath.Base(t)), Name: e.Name()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// libcudaDir is the directory the dynamic loader finds libcuda.so.1 in
// (its cache, as ldconfig -p prints it; else the usual places).
func libcudaDir() (string, error) {
	for _, ldconfig := range []string{"/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"} {
		out, err := exec.Command(ldconfig, "-p").Output()
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if !strings.HasPrefix(line, "libcuda.so.1 ") || !strings.Contains(line, "x86-64") && !strings.Contains(line, "AArch64") {
				continue
			}
			if _, p, ok := strings.Cut(line, "=> "); ok {
				if real, err := filepath.EvalSymlinks(strings.TrimSpace(p)); err == nil {
					return filepath.Dir(real), nil
				}
			}
		}
		break
	}
	for _, d := range []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/aarch64-linux-gnu"} {
		if _, err := os.Stat(filepath.Join(d, "libcuda.so.1")); err == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("%w: libcuda.so.1 is not in the loader's cache (ldconfig -p) or the usual library directories", ErrNoDriver)
}
