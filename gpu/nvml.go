package gpu

import (
	"errors"
	"fmt"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// GPU is one device as NVML reports it.
type GPU struct {
	Index       int       `json:"index"`
	UUID        string    `json:"uuid"`
	Name        string    `json:"name"`
	MemoryTotal uint64    `json:"memory_total"`
	MemoryUsed  uint64    `json:"memory_used"`
	MemoryFree  uint64    `json:"memory_free"`
	Compute     string    `json:"compute_capability"`
	Minor       int       `json:"minor"` // its device node is /dev/nvidiaMINOR; -1: unknown
	Processes   []GPUProc `json:"processes,omitempty"`
}

// GPUProc is a process using a GPU.
type GPUProc struct {
	PID    int    `json:"pid"`
	Memory uint64 `json:"memory"`
}

// Inventory is the worker's GPUs and driver.
type Inventory struct {
	Driver string `json:"driver_version"`
	CUDA   int    `json:"cuda_driver_version"`
	GPUs   []GPU  `json:"gpus"`
}

// CUDAString formats the CUDA version as 13.0.
func (inv *Inventory) CUDAString() string {
	return fmt.Sprintf("%d.%d", inv.CUDA/1000, inv.CUDA%1000/10)
}

// ProcessMemory is the GPU memory pid uses, summed over GPUs.
func (inv *Inventory) ProcessMemory(pid int) uint64 {
	var n uint64
	for _, g := range inv.GPUs {
		for _, p := range g.Processes {
			if p.PID == pid {
				n += p.Memory
			}
		}
	}
	return n
}

func nvmlErr(op string, r nvml.Return) error {
	if r == nvml.SUCCESS {
		return nil
	}
	return fmt.Errorf("%s: %s", op, nvml.ErrorString(r))
}

// Inventory reads the GPUs through NVML.
func ReadInventory() (inv *Inventory, err error) {
	defer func() {
		// go-nvml panics when libnvidia-ml cannot be loaded at all.
		if r := recover(); r != nil {
			inv, err = nil, fmt.Errorf("%w: %v", ErrNoDriver, r)
		}
	}()
	if r := nvml.Init(); r != nvml.SUCCESS {
		if r == nvml.ERROR_LIBRARY_NOT_FOUND || r == nvml.ERROR_DRIVER_NOT_LOADED || r == nvml.ERROR_NO_PERMISSION {
			return nil, fmt.Errorf("%w: NVML: %s (is the NVIDIA driver installed and loaded?)", ErrNoDriver, nvml.ErrorString(r))
		}
		return nil, fmt.Errorf("%w: NVML init: %s", ErrNoDriver, nvml.ErrorString(r))
	}
	defer nvml.Shutdown()
	inv = &Inventory{}
	var r nvml.Return
	if inv.Driver, r = nvml.SystemGetDriverVersion(); r != nvml.SUCCESS {
		return nil, nvmlErr("driver version", r)
	}
	if inv.CUDA, r = nvml.SystemGetCudaDriverVersion(); r != nvml.SUCCESS {
		return nil, nvmlErr("CUDA version", r)
	}
	n, r := nvml.DeviceGetCount()
	if r != nvml.SUCCESS {
		return nil, nvmlErr("device count", r)
	}
	for i := 0; i < n; i++ {
		d, r := nvml.DeviceGetHandleByIndex(i)
		if r != nvml.SUCCESS {
			return nil, nvmlErr(fmt.Sprintf("device %d", i), r)
		}
		g := GPU{Index: i, Minor: -1}
		if m, r := d.GetMinorNumber(); r == nvml.SUCCESS {
			g.Minor = m
		}
		g.UUID, _ = d.GetUUID()
		g.Name, _ = d.GetName()
		if m, r := d.GetMemoryInfo(); r == nvml.SUCCESS {
			g.MemoryTotal, g.MemoryUsed, g.MemoryFree = m.Total, m.Used, m.Free
		}
		if maj, min, r := d.GetCudaComputeCapability(); r == nvml.SUCCESS {
			g.Compute = fmt.Sprintf("%d.%d", maj, min)
		}
		if ps, r := d.GetComputeRunningProcesses(); r == nvml.SUCCESS {
			for _, p := range ps {
				g.Processes = append(g.Processes, GPUProc{PID: int(p.Pid), Memory: p.UsedGpuMemory})
			}
		}
		inv.GPUs = append(inv.GPUs, g)
	}
	return inv, nil
}

// Meta is what a snapshot records about the GPUs it was taken on.
type Meta struct {
	Model        string   `json:"model"`
	Count        int      `json:"count"`
	MemoryTotal  uint64   `json:"memory_total"`
	UUIDs        []string `json:"uuids"`
	Compute      string   `json:"compute_capability"`
	Driver       string   `json:"driver_version"`
	CUDA         int      `json:"cuda_driver_version"`
	Processes    []int    `json:"processes"`     // pids checkpointed (at dump)
	MemoryBytes  uint64   `json:"memory_bytes"`  // GPU memory checkpointed
	PerGPUMemory []uint64 `json:"per_gpu_bytes"` // by index, for free-memory checks
}

// ErrIncompatible says a GPU snapshot cannot be restored on this worker.
var ErrIncompatible = errors.New("GPU snapshot incompatible with this worker")

func olderVersion(have, want string) bool {
	hp, wp := strings.Split(have, "."), strings.Split(want, ".")
	for i := 0; i < len(hp) && i < len(wp); i++ {
		var h, w int
		fmt.Sscan(hp[i], &h)
		fmt.Sscan(wp[i], &w)
		if h != w {
			return h < w
		}
	}
	return len(hp) < len(wp)
}
