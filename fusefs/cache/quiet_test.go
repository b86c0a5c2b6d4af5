package cache

import (
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	idle, all, cpus, ok := parseProcStat([]byte("cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\ncpu1 1 2 3 4 5 6 7 8 9 10\nintr 1 2\n"))
	if !ok || idle != 1020 || all != 1181 || cpus != 2 {
		t.Fatalf("idle %d all %d cpus %d ok %v; want 1020 1181 2 true", idle, all, cpus, ok)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5", "cpu 1 2 x 4 5\ncpu0 1 2 3 4 5", "intr 1 2 3 4 5", "cpu 1 2", "cpu 1 2 3 4 5\nintr 1"} {
		if _, _, _, ok := parseProcStat([]byte(bad)); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestCPUMeter(t *testing.T) {
	var m cpuMeter
	m.idleCPUs()
	time.Sleep(2 * cpuInterval)
	idle, ok := m.idleCPUs()
	if !ok || idle < 0 || idle > float64(1024) {
		t.Fatalf("idle CPUs %v, ok %v", idle, ok)
	}
}

// A write held back only because the CPUs are busy waits at most
// maxCPUWait; one held back by the cache's own activity waits on.
func TestWaitQuietBounds(t *testing.T) {
	d := &diskTier{queue: make(chan pendingWrite, 8)}
	returns := func(at time.Time) bool {
		done := make(chan struct{})
		go func() { d.waitQuiet(at); close(done) }()
		select {
		case <-done:
			return true
		case <-time.After(4 * quietPeriod):
			d.closed.Store(true) // let it go
			<-done
			d.closed.Store(false)
			return false
		}
	}
	d.busy = func() (time.Duration, bool) { return quietPeriod, true }
	if returns(time.Now()) {
		t.Fatal("a fresh write did not wait for busy CPUs")
	}
	if !returns(time.Now().Add(-maxCPUWait - time.Second)) {
		t.Fatalf("a write queued over %v ago still waited for busy CPUs", maxCPUWait)
	}
	d.busy = func() (time.Duration, bool) { return quietPeriod, false }
	if returns(time.Now().Add(-maxCPUWait - time.Second)) {
		t.Fatal("an old write did not wait for the busy cache")
	}
	d.busy = func() (time.Duration, bool) { return 0, false }
	if !returns(time.Now()) {
		t.Fatal("a write waited although all was quiet")
	}
}

// FuzzProcStat: any bytes parse without panicking, and a parse that
// succeeds found CPUs.
func FuzzProcStat(f *testing.F) {
	f.Add([]byte("cpu  100 5 50 1000 20 3 2 1 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"))
	f.Add([]byte("cpu 1 2 3 4 5\ncpu0 1 2 3 4 5\ncpu1 1 2 3 4 5\n"))
	f.Add([]byte("cpu 18446744073709551615 1 1 1 1\ncpu0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		idle, all, cpus, ok := parseProcStat(b)
		if ok && cpus <= 0 {
			t.Fatalf("idle %d all %d cpus %d", idle, all, cpus)
		}
	})
}
