// Package histo is a fixed-bucket latency histogram that hot paths update
// with atomic adds, and that exporters (Prometheus, .stats) read as a
// snapshot. It keeps metrics libraries out of the packages that count.
package histo

import (
	"math"
	"sort"
	"sync/atomic"
	"time"
)

// Bounds are the upper bounds, in seconds, of the buckets every gpuwarm
// latency histogram uses: 50 µs to about 100 s, a factor of about 2.5
// apart (FUSE requests are tens of microseconds, store fetches
// milliseconds, restores seconds).
var Bounds = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100}

// Histogram counts observations into Bounds' buckets (the last one open).
type Histogram struct {
	counts [21]atomic.Uint64 // len(Bounds)+1
	sumNs  atomic.Uint64
}

// Observe records one duration.
func (h *Histogram) Observe(d time.Duration) {
	s := d.Seconds()
	i := sort.SearchFloat64s(Bounds, s)
	h.counts[i].Add(1)
	if d > 0 {
		h.sumNs.Add(uint64(d))
	}
}

// Since records the time since start.
func (h *Histogram) Since(start time.Time) { h.Observe(time.Since(start)) }

// Snapshot is a histogram's state: Counts per bucket (not cumulative; the
// last is above every bound), the sum of observations in seconds.
type Snapshot struct {
	Counts []uint64 `json:"counts"`
	Sum    float64  `json:"sum_seconds"`
	Count  uint64   `json:"count"`
}

// Snapshot reads the histogram.
func (h *Histogram) Snapshot() Snapshot {
	s := Snapshot{Counts: make([]uint64, len(h.counts))}
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
		s.Count += s.Counts[i]
	}
	s.Sum = float64(h.sumNs.Load()) / 1e9
	return s
}

// Cumulative returns the Prometheus form: upper bound -> observations at
// or below it.
func (s Snapshot) Cumulative() map[float64]uint64 {
	out := make(map[float64]uint64, len(Bounds))
	var n uint64
	for i, b := range Bounds {
		if i < len(s.Counts) {
			n += s.Counts[i]
		}
		out[b] = n
	}
	return out
}

// Quantile estimates quantile q (0..1) by linear interpolation within the
// bucket it falls in; NaN for an empty histogram.
func (s Snapshot) Quantile(q float64) float64 {
	if s.Count == 0 {
		return math.NaN()
	}
	rank := q * float64(s.Count)
	var seen float64
	for i, c := range s.Counts {
		if seen+float64(c) >= rank && c > 0 {
			lo := 0.0
			if i > 0 {
				lo = Bounds[i-1]
			}
			if i >= len(Bounds) {
				return Bounds[len(Bounds)-1]
			}
			return lo + (Bounds[i]-lo)*(rank-seen)/float64(c)
		}
		seen += float64(c)
	}
	return Bounds[len(Bounds)-1]
}

// Add folds another snapshot in (restores reported by other processes).
func (h *Histogram) Add(s Snapshot) {
	for i := range h.counts {
		if i < len(s.Counts) {
			h.counts[i].Add(s.Counts[i])
		}
	}
	if s.Sum > 0 {
		h.sumNs.Add(uint64(s.Sum * 1e9))
	}
}
