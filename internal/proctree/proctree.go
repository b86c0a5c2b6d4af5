// Package proctree reads the process table from /proc: a process tree's
// members and each process's state, parent and start time. The snapshot,
// restore and GPU layers share it, and it imports nothing of gpuwarm.
package proctree

import (
	"os"
	"sort"
	"strconv"
	"strings"
)

// Stat is one process's /proc/PID/stat.
type Stat struct {
	PID   int
	State string // R, S, D, Z, T, ...
	PPID  int
	Start uint64 // clock ticks after boot
}

// List returns every process's stat; processes that exit while it reads
// are left out.
func List() []Stat {
	var out []Stat
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if s, ok := Parse(pid, string(b)); ok {
			out = append(out, s)
		}
	}
	return out
}

// Parse parses the text of /proc/PID/stat. The command name may hold
// spaces and parentheses, so fields are split after its last ')'.
func Parse(pid int, s string) (Stat, bool) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Stat{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return Stat{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil {
		return Stat{}, false
	}
	return Stat{PID: pid, State: f[0], PPID: ppid, Start: start}, true
}

// Tree returns root followed by its descendants (sorted by PID).
func Tree(root int) []int {
	children := map[int][]int{}
	for _, p := range List() {
		children[p.PPID] = append(children[p.PPID], p.PID)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	sort.Ints(out[1:])
	return out
}
