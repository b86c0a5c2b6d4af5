package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/gpuwarm/gpuwarm/internal/proctree"
)

// Locks keep gc from deleting chunks that a concurrent pack or snapshot has
// found present (and so did not upload) but not yet referenced from a
// published manifest. The rule, which needs only read-after-write
// consistency from the store (S3 has it):
//
//   - A writer (pack, snapshot, profile recording) puts a "write" lock before
//     it checks which chunks exist, refreshes it while it works, and deletes
//     it after its manifest and tag are published. If a gc lock exists it
//     waits for it to go.
//   - gc puts a "gc" lock first, then lists the locks: if any fresh write
//     lock exists it removes its own lock and fails. Otherwise it computes
//     what is referenced and deletes the rest, refreshing its lock.
//
// Both put their own lock before looking for the other's, so at least one of
// them sees the other. A lock not refreshed for StaleAfter is ignored, so a
// crashed process cannot block gc forever; a lock whose holder provably died
// (same machine, boot and PID namespace; its PID gone or reused) is deleted
// at once, saying so.

// StaleAfter is the age at which a lock is ignored.
const StaleAfter = 10 * time.Minute

// LockKind says who holds a lock.
type LockKind string

const (
	WriteLock LockKind = "write"
	GCLock    LockKind = "gc"
)

// LockHandle is a held lock.
type LockHandle struct {
	s      Store
	h      Handle
	stop   chan struct{}
	wg     sync.WaitGroup
	closed sync.Once
}

type lockBody struct {
	Kind LockKind  `json:"kind"`
	Host string    `json:"host"`
	PID  int       `json:"pid"`
	Time time.Time `json:"time"`
	// Where the PID means something: the boot, the PID namespace, and the
	// process's start time (so that a reused PID is not taken for it).
	Boot  string `json:"boot,omitempty"`
	PIDNS string `json:"pid_ns,omitempty"`
	Start uint64 `json:"start,omitempty"`
}

// self describes this process for its locks.
func selfBody(k LockKind) lockBody {
	host, _ := os.Hostname()
	return lockBody{Kind: k, Host: host, PID: os.Getpid(), Time: time.Now().UTC(),
		Boot: bootID(), PIDNS: pidNS(), Start: startTime(os.Getpid())}
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

func pidNS() string {
	s, _ := os.Readlink("/proc/self/ns/pid")
	return s
}

// startTime is a process's start time in clock ticks after boot, 0 if it
// does not exist.
func startTime(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	st, ok := proctree.Parse(pid, string(b))
	if !ok {
		return 0
	}
	return st.Start
}

// deadHolder reports whether the lock's holder provably no longer runs: it
// ran on this machine, in this boot and PID namespace, and its PID is gone
// or now names a process started at another time. A lock from anywhere
// else is left to StaleAfter.
func (b lockBody) deadHolder() bool {
	host, _ := os.Hostname()
	if b.Host != host || b.Boot == "" || b.Boot != bootID() || b.PIDNS != pidNS() || b.PID <= 0 {
		return false
	}
	return startTime(b.PID) != b.Start
}

// ErrLocked is returned when the other kind of lock is held.
var ErrLocked = errors.New("store is locked")

// AcquireLock takes a lock of kind k, waiting up to wait for a conflicting
// lock to go away.
func AcquireLock(ctx context.Context, s Store, k LockKind, wait time.Duration) (*LockHandle, error) {
	var rnd [6]byte
	rand.Read(rnd[:])
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, host)
	if len(host) > 40 {
		host = host[:40]
	}
	name := fmt.Sprintf("%s-%s-%d-%s", k, host, os.Getpid(), hex.EncodeToString(rnd[:]))
	l := &LockHandle{s: s, h: Handle{Kind: Lock, Name: name}, stop: make(chan struct{})}
	deadline := time.Now().Add(wait)
	for {
		if err := l.put(ctx, k); err != nil {
			return nil, fmt.Errorf("take %s lock in %s: %w", k, s.Location(), err)
		}
		holder, err := conflicting(ctx, s, k, name)
		if err != nil {
			l.s.Delete(ctx, l.h)
			return nil, err
		}
		if holder == "" {
			break
		}
		if k == GCLock || time.Now().After(deadline) {
			l.s.Delete(ctx, l.h)
			return nil, fmt.Errorf("%w: %s holds a conflicting lock in %s; retry later (locks older than %v are ignored)", ErrLocked, holder, s.Location(), StaleAfter)
		}
		// A writer backs off and retries while gc runs.
		l.s.Delete(ctx, l.h)
		select {
		case <-time.After(2 * time.Second):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	l.wg.Add(1)
	go l.refresh(k)
	return l, nil
}

func (l *LockHandle) put(ctx context.Context, k LockKind) error {
	b, _ := json.Marshal(selfBody(k))
	return l.s.Put(ctx, l.h, b)
}

func (l *LockHandle) refresh(k LockKind) {
	defer l.wg.Done()
	t := time.NewTicker(StaleAfter / 4)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			l.put(ctx, k)
			cancel()
		}
	}
}

// Release deletes the lock.
func (l *LockHandle) Release(ctx context.Context) error {
	var err error
	l.closed.Do(func() {
		close(l.stop)
		l.wg.Wait()
		err = l.s.Delete(ctx, l.h)
	})
	return err
}

// conflicting returns the name of a fresh lock that conflicts with kind k.
func conflicting(ctx context.Context, s Store, k LockKind, self string) (string, error) {
	var holder string
	err := s.List(ctx, Lock, func(in Info) error {
		if in.Name == self {
			return nil
		}
		b, err := ReadAll(ctx, s, Handle{Kind: Lock, Name: in.Name})
		if err != nil {
			return nil // gone meanwhile
		}
		var body lockBody
		if json.Unmarshal(b, &body) != nil || time.Since(body.Time) > StaleAfter {
			return nil
		}
		if body.deadHolder() {
			slog.Warn("taking over a lock whose holder is dead", "lock", in.Name, "pid", body.PID, "host", body.Host, "store", s.Location())
			s.Delete(ctx, Handle{Kind: Lock, Name: in.Name})
			return nil
		}
		if k == GCLock || body.Kind == GCLock {
			holder = fmt.Sprintf("%s (pid %d on %s, %s)", in.Name, body.PID, body.Host, body.Kind)
		}
		return nil
	})
	return holder, err
}
