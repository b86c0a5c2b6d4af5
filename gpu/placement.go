package gpu

import (
	"fmt"
	"strconv"
	"strings"
)

// Placement is where a snapshot's GPU state goes on this worker.
//
// A snapshot records every GPU of the machine it was taken on and how much
// memory its processes held on each; only GPUs that held state are placed.
// By default each goes back to the GPU with the same UUID when this worker
// has it (a restore on the machine that took the snapshot), else to the GPU
// with the same index. A scheduler that assigned the restore particular
// GPUs names them (indices or UUIDs, one per GPU that held state, in index
// order). When any target differs from the GPU the state came from, the
// CUDA restore gets UUID pairs and the driver moves the state there.
//
// The driver wants a pair for every GPU the process could see when it was
// checkpointed, not only those it held memory on (an H200 pair refused a
// move of a process that saw two GPUs with CUDA_ERROR_INVALID_VALUE until
// both were paired). Which GPUs a process saw is not recorded by the
// driver, so Pairs maps every GPU of the snapshot's machine, the unused ones
// onto this worker's remaining GPUs, and Fallback pairs only the GPUs that
// held state (a process started with CUDA_VISIBLE_DEVICES narrowed).
type Placement struct {
	// Targets[k] is the index on this worker of the GPU that takes the
	// state the snapshot held on GPU Used[k].
	Used, Targets []int
	// Pairs for cuCheckpointProcessRestore; nil when nothing moves.
	// Fallback is tried when the driver refuses Pairs as invalid.
	Pairs, Fallback []GPUPair
}

// Candidates are the pair lists to try in order.
func (p *Placement) Candidates() [][]GPUPair {
	if p == nil || len(p.Pairs) == 0 {
		return nil
	}
	c := [][]GPUPair{p.Pairs}
	if len(p.Fallback) > 0 && len(p.Fallback) != len(p.Pairs) {
		c = append(c, p.Fallback)
	}
	return c
}

// String says where the state goes, "GPU 0 -> GPU 1 (GPU-…)".
func (p *Placement) String() string {
	if p == nil || len(p.Used) == 0 {
		return "no GPU state"
	}
	var parts []string
	for k, u := range p.Used {
		parts = append(parts, fmt.Sprintf("snapshot GPU %d -> GPU %d", u, p.Targets[k]))
	}
	return strings.Join(parts, ", ")
}

// Compatible decides, before anything starts, whether this worker can
// restore a snapshot taken with meta onto its default GPUs.
func Compatible(meta *Meta, inv *Inventory, invErr error) error {
	_, err := Place(meta, inv, invErr, nil)
	return err
}

// usedGPUs are the snapshot's GPUs that held state. Metadata without
// per-GPU figures counts every GPU as used.
func usedGPUs(meta *Meta) []int {
	var used []int
	for i := 0; i < meta.Count; i++ {
		if len(meta.PerGPUMemory) == meta.Count && meta.PerGPUMemory[i] == 0 {
			continue
		}
		used = append(used, i)
	}
	return used
}

// Place decides where a snapshot's GPU state goes (see Placement) and
// refuses, with ErrIncompatible and a message saying what to do, a worker
// that cannot take it: no driver, too few GPUs, another GPU model, an older
// driver or too little free memory on a target GPU. want names the target
// GPUs (indices or UUIDs); empty means the default placement. A want that
// does not fit the snapshot is an error without ErrIncompatible: the caller
// asked for something impossible.
func Place(meta *Meta, inv *Inventory, invErr error, want []string) (*Placement, error) {
	if meta == nil || meta.Count == 0 {
		if len(want) > 0 {
			return nil, fmt.Errorf("GPUs %v were asked for, but the snapshot holds no GPU state", want)
		}
		return &Placement{}, nil
	}
	used := usedGPUs(meta)
	if invErr != nil || inv == nil {
		return nil, fmt.Errorf("%w: the snapshot holds GPU state on %d x %s, and this worker has no usable GPU: %v", ErrIncompatible, len(used), meta.Model, invErr)
	}
	if olderVersion(inv.Driver, meta.Driver) {
		return nil, fmt.Errorf("%w: the snapshot was taken with NVIDIA driver %s, this worker has the older %s: upgrade the driver", ErrIncompatible, meta.Driver, inv.Driver)
	}
	p := &Placement{Used: used}
	switch {
	case len(want) > 0:
		if len(want) != len(used) {
			return nil, fmt.Errorf("%d GPUs asked for (%s), but the snapshot holds GPU state on %d: name one GPU per snapshot GPU %v", len(want), strings.Join(want, ","), len(used), used)
		}
		seen := map[int]bool{}
		for _, w := range want {
			i, err := findGPU(inv, w)
			if err != nil {
				return nil, err
			}
			if seen[i] {
				return nil, fmt.Errorf("GPU %s asked for twice: name distinct GPUs", w)
			}
			seen[i] = true
			p.Targets = append(p.Targets, i)
		}
	default:
		if len(inv.GPUs) < len(used) {
			return nil, fmt.Errorf("%w: the snapshot holds GPU state on %d x %s, this worker has %d GPUs", ErrIncompatible, len(used), meta.Model, len(inv.GPUs))
		}
		byUUID := true
		for _, u := range used {
			i := -1
			if u < len(meta.UUIDs) {
				i = indexOfUUID(inv, meta.UUIDs[u])
			}
			byUUID = byUUID && i >= 0
			p.Targets = append(p.Targets, i)
		}
		if !byUUID {
			p.Targets = p.Targets[:0]
			for _, u := range used {
				if u >= len(inv.GPUs) {
					return nil, fmt.Errorf("%w: the snapshot held state on its GPU %d, this worker has %d GPUs: name the GPUs to restore onto", ErrIncompatible, u, len(inv.GPUs))
				}
				p.Targets = append(p.Targets, u)
			}
		}
	}
	moves := false
	for k, u := range used {
		g := inv.GPUs[p.Targets[k]]
		if g.Name != meta.Model {
			return nil, fmt.Errorf("%w: the snapshot was taken on %s, GPU %d here is %s: restore on a worker with %s", ErrIncompatible, meta.Model, g.Index, g.Name, meta.Model)
		}
		if u < len(meta.PerGPUMemory) && g.MemoryFree < meta.PerGPUMemory[u] {
			return nil, fmt.Errorf("%w: GPU %d needs %.1f GB free to restore, has %.1f GB: stop other GPU work first", ErrIncompatible, g.Index,
				float64(meta.PerGPUMemory[u])/1e9, float64(g.MemoryFree)/1e9)
		}
		if u >= len(meta.UUIDs) || meta.UUIDs[u] == "" {
			if p.Targets[k] != u {
				return nil, fmt.Errorf("%w: the snapshot does not record the UUID of its GPU %d, so its state cannot be moved to GPU %d", ErrIncompatible, u, p.Targets[k])
			}
			continue // same index, nothing to pair
		}
		old, err := ParseUUID(meta.UUIDs[u])
		if err != nil {
			return nil, fmt.Errorf("%w: the snapshot's GPU %d: %v", ErrIncompatible, u, err)
		}
		cur, err := ParseUUID(g.UUID)
		if err != nil {
			return nil, fmt.Errorf("this worker's GPU %d: %v", g.Index, err)
		}
		moves = moves || old != cur
		p.Pairs = append(p.Pairs, GPUPair{Old: old, New: cur})
	}
	if !moves {
		p.Pairs = nil
		return p, nil
	}
	p.Fallback = p.Pairs
	if full := fullPairs(meta, inv, p); full != nil {
		p.Pairs = full
	}
	return p, nil
}

// fullPairs maps every GPU of the snapshot's machine: those that held
// state onto their targets, the others, in index order, onto this worker's
// GPUs that take no state. Nil when this worker has too few GPUs or a UUID
// is unreadable.
func fullPairs(meta *Meta, inv *Inventory, p *Placement) []GPUPair {
	if len(meta.UUIDs) < meta.Count || len(inv.GPUs) < meta.Count {
		return nil
	}
	dst := make([]int, meta.Count)
	taken := map[int]bool{}
	for i := range dst {
		dst[i] = -1
	}
	for k, u := range p.Used {
		dst[u] = p.Targets[k]
		taken[p.Targets[k]] = true
	}
	next := 0
	for i := range dst {
		if dst[i] >= 0 {
			continue
		}
		for taken[next] {
			next++
		}
		dst[i] = next
		taken[next] = true
	}
	var pairs []GPUPair
	for i, j := range dst {
		old, err1 := ParseUUID(meta.UUIDs[i])
		cur, err2 := ParseUUID(inv.GPUs[j].UUID)
		if err1 != nil || err2 != nil {
			return nil
		}
		pairs = append(pairs, GPUPair{Old: old, New: cur})
	}
	return pairs
}

// findGPU resolves an index ("1") or a UUID ("GPU-…", or its unique prefix).
func findGPU(inv *Inventory, w string) (int, error) {
	if n, err := strconv.Atoi(w); err == nil {
		if n < 0 || n >= len(inv.GPUs) {
			return 0, fmt.Errorf("GPU %d asked for, this worker has GPUs 0-%d", n, len(inv.GPUs)-1)
		}
		return n, nil
	}
	found := -1
	for i, g := range inv.GPUs {
		if strings.HasPrefix(strings.ToLower(g.UUID), strings.ToLower(w)) && len(w) >= 8 {
			if found >= 0 {
				return 0, fmt.Errorf("GPU %q matches more than one GPU: give more of its UUID", w)
			}
			found = i
		}
	}
	if found < 0 {
		return 0, fmt.Errorf("no GPU %q on this worker: give an index or a UUID that `gpuwarm gpus` lists", w)
	}
	return found, nil
}

func indexOfUUID(inv *Inventory, uuid string) int {
	for i, g := range inv.GPUs {
		if g.UUID == uuid {
			return i
		}
	}
	return -1
}

// Find resolves an index ("1") or a UUID ("GPU-…", or a unique prefix of
// 8 characters or more) to a GPU index on this worker.
func (inv *Inventory) Find(w string) (int, error) { return findGPU(inv, w) }
