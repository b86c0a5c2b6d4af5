package histo

import (
	"testing"
	"time"
)

func TestHistogram(t *testing.T) {
	var h Histogram
	for _, d := range []time.Duration{30 * time.Microsecond, 2 * time.Millisecond, 2 * time.Millisecond, 3 * time.Second, 1000 * time.Second} {
		h.Observe(d)
	}
	s := h.Snapshot()
	if s.Count != 5 || s.Counts[0] != 1 || s.Counts[len(s.Counts)-1] != 1 {
		t.Fatalf("%+v", s)
	}
	c := s.Cumulative()
	if c[0.0025] != 3 || c[5] != 4 || c[100] != 4 {
		t.Fatalf("cumulative %v", c)
	}
	if q := s.Quantile(0.5); q < 0.001 || q > 0.0025 {
		t.Fatalf("median %v", q)
	}
	if s.Sum < 1003 || s.Sum > 1004 {
		t.Fatalf("sum %v", s.Sum)
	}
	var g Histogram
	g.Add(s)
	if g.Snapshot().Count != 5 {
		t.Fatal("Add")
	}
}
