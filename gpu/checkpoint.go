package gpu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gpuwarm/gpuwarm/internal/proctree"
)

// MetaAnnotation holds a snapshot's Meta as JSON.
const MetaAnnotation = "gpuwarm.gpu"

// Tree returns root and its descendants.
func Tree(root int) []int { return proctree.Tree(root) }

// mapsGPU reports whether pid has an NVIDIA device open or mapped.
func mapsGPU(pid int) bool {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid)); err == nil && strings.Contains(string(b), "/dev/nvidia") {
		return true
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if t, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && strings.HasPrefix(t, "/dev/nvidia") {
			return true
		}
	}
	return false
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	s := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}

// Checkpointer moves the GPU state of a process tree into host memory
// before a dump and back after it.
type Checkpointer struct {
	LockTimeout time.Duration
	pids        []int
	meta        *Meta
	// Times of the phases, for reports.
	LockTime, CheckpointTime time.Duration
}

// CUDAProcesses finds the processes of the tree that hold CUDA state, and
// fails, naming them, on processes that use the GPU but cannot be
// checkpointed.
func CUDAProcesses(root int) ([]int, error) {
	var cuda []int
	var bad []string
	for _, pid := range Tree(root) {
		st, err := State(pid)
		if err == nil && (st == Running || st == Locked) {
			cuda = append(cuda, pid)
			continue
		}
		if errors.Is(err, ErrNoDriver) {
			if mapsGPU(pid) {
				return nil, fmt.Errorf("process %d (%s) uses an NVIDIA GPU but %v", pid, cmdline(pid), err)
			}
			continue
		}
		if err == nil && st == Checkpointed {
			return nil, fmt.Errorf("process %d (%s) is already CUDA-checkpointed: restore it first (gpuwarm restore does)", pid, cmdline(pid))
		}
		if mapsGPU(pid) {
			why := "it holds GPU device handles outside a CUDA context the driver can checkpoint"
			if err != nil {
				why = err.Error()
			}
			bad = append(bad, fmt.Sprintf("process %d (%s): %s", pid, cmdline(pid), why))
		}
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("cannot snapshot: processes map NVIDIA devices but cannot be CUDA-checkpointed:\n  %s\n  (torch.compile's worker pool is a common one: set TORCHINDUCTOR_COMPILE_THREADS=1, or let the pool exit before the snapshot)", strings.Join(bad, "\n  "))
	}
	return cuda, nil
}

// Before locks and checkpoints every CUDA process of the tree at root. A
// tree without CUDA processes is left alone (Meta is nil). On failure every
// process it touched is restored and unlocked.
func (c *Checkpointer) Before(ctx context.Context, root int) error {
	pids, err := CUDAProcesses(root)
	if err != nil || len(pids) == 0 {
		return err
	}
	if c.LockTimeout <= 0 {
		c.LockTimeout = 30 * time.Second
	}
	inv, invErr := ReadInventory()
	meta := &Meta{Processes: pids}
	if invErr == nil && len(inv.GPUs) > 0 {
		meta.Model, meta.Count, meta.MemoryTotal = inv.GPUs[0].Name, len(inv.GPUs), inv.GPUs[0].MemoryTotal
		meta.Compute, meta.Driver, meta.CUDA = inv.GPUs[0].Compute, inv.Driver, inv.CUDA
		meta.PerGPUMemory = make([]uint64, len(inv.GPUs))
		for i, g := range inv.GPUs {
			meta.UUIDs = append(meta.UUIDs, g.UUID)
			for _, p := range g.Processes {
				for _, pid := range pids {
					if p.PID == pid {
						meta.PerGPUMemory[i] += p.Memory
						meta.MemoryBytes += p.Memory
					}
				}
			}
		}
	}
	t := time.Now()
	var locked []int
	for _, pid := range pids {
		if err := Lock(pid, c.LockTimeout); err != nil {
			for _, p := range locked {
				Unlock(p)
			}
			return fmt.Errorf("snapshot: %w", err)
		}
		locked = append(locked, pid)
	}
	c.LockTime = time.Since(t)
	t = time.Now()
	if err := parallel(pids, Checkpoint); err != nil {
		c.undo(pids)
		return fmt.Errorf("snapshot: %w", err)
	}
	c.CheckpointTime = time.Since(t)
	c.pids, c.meta = pids, meta
	return nil
}

// After puts the GPU state back when the processes still run (the dump
// failed, or --leave-running).
func (c *Checkpointer) After(ctx context.Context, dumpErr error, leaveRunning bool) error {
	if len(c.pids) == 0 || (dumpErr == nil && !leaveRunning) {
		return nil
	}
	return c.undo(c.pids)
}

func (c *Checkpointer) undo(pids []int) error {
	var errs []error
	for _, pid := range pids {
		if st, err := State(pid); err == nil && st == Checkpointed {
			if err := Restore(pid); err != nil {
				errs = append(errs, err)
			}
		}
		if st, err := State(pid); err == nil && st == Locked {
			if err := Unlock(pid); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Meta returns what was checkpointed (nil without CUDA processes).
func (c *Checkpointer) Meta() *Meta { return c.meta }

// Annotation encodes meta for the snapshot image.
func (m *Meta) Annotation() string {
	b, _ := json.Marshal(m)
	return string(b)
}

// ParseMeta decodes a snapshot's GPU annotation ("" means no GPU state).
func ParseMeta(s string) (*Meta, error) {
	if s == "" {
		return nil, nil
	}
	var m Meta
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("snapshot GPU metadata %.60q: %w", s, err)
	}
	if m.Count < 0 || m.Count > 1024 || len(m.PerGPUMemory) > 1024 {
		return nil, fmt.Errorf("snapshot GPU metadata out of range: %d GPUs", m.Count)
	}
	return &m, nil
}

// RestoreTree restores and unlocks every checkpointed CUDA process of the
// restored tree at root, one process at a time (restoring a parent and its
// CUDA child at once failed on an H200 with CUDA_ERROR_OPERATING_SYSTEM).
// It returns the processes and the time taken. candidates are GPU pair
// lists (see Placement.Candidates): each process is restored with the first
// the driver accepts; none restores in place.
func RestoreTree(ctx context.Context, root int, candidates [][]GPUPair) (pids []int, d time.Duration, err error) {
	for _, pid := range Tree(root) {
		if st, err := State(pid); err == nil && (st == Checkpointed || st == Locked) {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		return nil, 0, fmt.Errorf("the restored tree of pid %d has no checkpointed CUDA process, though the snapshot recorded GPU state", root)
	}
	t := time.Now()
	var toRestore []int
	for _, pid := range pids {
		if st, _ := State(pid); st == Checkpointed {
			toRestore = append(toRestore, pid)
		}
	}
	for _, pid := range toRestore {
		if err := restoreOntoAny(pid, candidates); err != nil {
			return pids, time.Since(t), err
		}
	}
	if err := parallel(pids, Unlock); err != nil {
		return pids, time.Since(t), err
	}
	return pids, time.Since(t), nil
}

// restoreOntoAny tries each pair list in turn while the driver calls the
// arguments invalid (the process saw other GPUs than the list pairs).
func restoreOntoAny(pid int, candidates [][]GPUPair) error {
	if len(candidates) == 0 {
		return RestoreOnto(pid, nil)
	}
	var err error
	for _, pairs := range candidates {
		err = RestoreOnto(pid, pairs)
		var ce *CUDAError
		if err == nil || !errors.As(err, &ce) || ce.Code != 1 { // CUDA_ERROR_INVALID_VALUE
			return err
		}
	}
	return fmt.Errorf("%w (the driver refused every GPU mapping tried: the process must have seen other GPUs than this worker can pair; restore on a worker with as many GPUs as the snapshot's machine, or start workloads with CUDA_VISIBLE_DEVICES narrowed to the GPUs they use)", err)
}

func parallel(pids []int, f func(int) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(pids))
	for i, pid := range pids {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f(pid) }()
	}
	wg.Wait()
	return errors.Join(errs...)
}
