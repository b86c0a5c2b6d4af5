package cache

import (
	"bytes"
	"os"
	"strconv"
	"sync"
	"time"
)

// Background disk-tier writes wait for a quiet moment. "Quiet" is judged
// three ways: no store read in flight, no reader served for quietPeriod
// (chunk reads, and lookups and opens the mount reports through Active),
// and at least one CPU of the machine idle. The last catches what the
// cache cannot see: a program reading pages the kernel already holds
// (a replay put them in its page cache), or a restore's own CPU work.

// quietPeriod is how long the cache must have been idle before queued
// disk-tier writes go ahead.
const quietPeriod = 50 * time.Millisecond

// maxCPUWait bounds how long a write waits only because the machine's CPUs
// are busy: a worker whose CPUs stay busy (a training job) still fills its
// disk tier.
const maxCPUWait = 3 * time.Second

// Active tells the cache that a reader is being served without asking it
// for a chunk (a lookup or an open of the mount): background disk writes
// hold back as they do while chunks are read.
func (c *Cache) Active() { c.active.Store(time.Now().UnixNano()) }

// busy says how much longer background work should wait for the cache to
// be quiet (zero or less: go ahead), and whether only the CPUs are busy.
func (c *Cache) busy() (wait time.Duration, cpuOnly bool) {
	if c.fetching.Load() > 0 {
		return quietPeriod, false
	}
	if d := time.Duration(c.active.Load() + int64(quietPeriod) - time.Now().UnixNano()); d > 0 {
		return d, false
	}
	if idle, ok := c.cpu.idleCPUs(); ok && idle < 1 {
		return quietPeriod, true
	}
	return 0, false
}

// cpuMeter measures how many of the machine's CPUs were idle, from
// /proc/stat, over the last interval of at least cpuInterval.
type cpuMeter struct {
	mu        sync.Mutex
	at        time.Time
	idle, all uint64
	last      float64
	ok        bool
	broken    bool
}

const cpuInterval = 100 * time.Millisecond

func (m *cpuMeter) idleCPUs() (float64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.broken || time.Since(m.at) < cpuInterval {
		return m.last, m.ok
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		m.broken = true
		return 0, false
	}
	idle, all, cpus, ok := parseProcStat(b)
	if !ok {
		m.broken = true
		return 0, false
	}
	if !m.at.IsZero() && all > m.all {
		m.last = float64(idle-m.idle) / float64(all-m.all) * float64(cpus)
		m.ok = true
	}
	m.at, m.idle, m.all = time.Now(), idle, all
	return m.last, m.ok
}

// parseProcStat reads /proc/stat: the idle (idle + iowait) and total ticks
// of its "cpu" line, summed over the machine's CPUs, and how many CPUs
// ("cpuN" lines) that is (not runtime.NumCPU, which counts only the CPUs
// this process may run on).
func parseProcStat(b []byte) (idle, all uint64, cpus int, ok bool) {
	line, rest, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 5 || string(f[0]) != "cpu" {
		return 0, 0, 0, false
	}
	// user nice system idle iowait irq softirq steal (guest time is
	// already counted in user and nice).
	for i := 1; i < len(f) && i <= 8; i++ {
		v, err := strconv.ParseUint(string(f[i]), 10, 64)
		if err != nil {
			return 0, 0, 0, false
		}
		all += v
		if i == 4 || i == 5 {
			idle += v
		}
	}
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		if len(line) > 3 && bytes.HasPrefix(line, []byte("cpu")) && line[3] >= '0' && line[3] <= '9' {
			cpus++
		}
	}
	return idle, all, cpus, cpus > 0
}
