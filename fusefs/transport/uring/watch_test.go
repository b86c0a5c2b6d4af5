package uring

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	bu "github.com/gpuwarm/gpuwarm/testing/benchutil"
)

// TestWatchReportsHeldQueue: a queue thread held up by one request for
// over a second is reported once, with its CPU and opcode; an idle one is
// not.
func TestWatchReportsHeldQueue(t *testing.T) {
	var logs bu.LockedBuffer
	s := &Server{log: slog.New(slog.NewTextHandler(&logs, nil))}
	held, idle := &queue{s: s, id: 3}, &queue{s: s, id: 4}
	s.queues = []*queue{held, idle}
	held.busyOp.Store(14)
	held.busySince.Store(time.Now().Add(-2 * time.Second).UnixNano())
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { s.watch(stop); close(done) }()
	time.Sleep(2300 * time.Millisecond) // two ticks
	close(stop)
	<-done
	out := logs.String()
	if n := strings.Count(out, "held up"); n != 1 {
		t.Fatalf("%d reports, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "cpu=3") || !strings.Contains(out, "opcode=14") {
		t.Fatalf("report lacks the CPU or the opcode:\n%s", out)
	}
}
