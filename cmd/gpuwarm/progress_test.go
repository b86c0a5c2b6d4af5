package main

import (
	"strings"
	"testing"
	"time"
)

func TestProgressLine(t *testing.T) {
	p := &progress{label: "warm x", start: time.Now().Add(-2 * time.Second)}
	l := p.line(1<<30, 4<<30)
	for _, want := range []string{"warm x: 1.1 GB of 4.3 GB (25%)", "536.9 MB/s", "6s left"} {
		if !strings.Contains(l, want) {
			t.Fatalf("%q lacks %q", l, want)
		}
	}
	if l := p.line(5<<20, 0); strings.Contains(l, "left") || strings.Contains(l, "%") {
		t.Fatalf("unknown total: %q", l)
	}
	// Not a terminal (go test's stderr is a file or pipe): nothing drawn.
	q := newProgress(nil, false, "x")
	q.update(1, 2)
	if q.shown {
		t.Fatal("drew a progress line on a non-terminal")
	}
}
