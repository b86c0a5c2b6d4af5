package cache

import (
	"runtime"
	"time"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"

	"github.com/gpuwarm/gpuwarm/internal/rofile"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// What the disk tier promises a passthrough open: the file was hashed by
// this daemon (or written by it from verified bytes) and is unchanged since
// (same inode, size and ctime). The journal (verified.go) only says which
// files an earlier daemon of this boot handed to the kernel, so which are
// worth hashing again ahead of demand: this daemon trusts none of them until
// it has hashed them itself, because a block can change beneath the
// filesystem (a raw write to the device, a storage fault) without a write
// through it that would move the file's ctime.
//
// The journaled files are re-hashed in the background from the start, most
// recently used first, one at a time, at low CPU priority and when the
// mount is quiet (as the disk tier's writes wait). An open that comes
// first hashes its file itself, as it does any file this daemon has not
// verified. A file that does not hash to its name is dropped, counted as
// corrupt and logged, and fetched again when next read. Hashing also reads
// the file into the page cache, from where the passthrough opens that
// follow are served.
//
// What remains outside the promise: a block that changes beneath the
// filesystem after this daemon hashed it is served by passthrough as the
// filesystem returns it (the kernel, not the daemon, reads it).

// recheckGate is held by tests to look at a tier before its rechecks run.
var recheckGate = func() {}

// startRecheck re-hashes the entries marked recheck, in LRU order (most
// recent first).
func (d *diskTier) startRecheck() {
	d.mu.Lock()
	var ids []digest.ID
	for el := d.lru.Front(); el != nil; el = el.Next() {
		if e := el.Value.(*diskEntry); e.recheck {
			ids = append(ids, e.id)
		}
	}
	d.unchecked = int64(len(ids))
	d.mu.Unlock()
	d.rechecked = make(chan struct{})
	if len(ids) == 0 {
		close(d.rechecked)
		return
	}
	d.log.Info("disk tier: re-hashing the files an earlier daemon handed to the kernel before handing them out again", "files", len(ids))
	d.recheckers.Add(1)
	go func() {
		defer d.recheckers.Done()
		defer close(d.rechecked)
		runtime.LockOSThread()
		unix.Setpriority(unix.PRIO_PROCESS, 0, 10)
		recheckGate()
		for _, id := range ids {
			d.waitQuiet(time.Now())
			if d.closed.Load() {
				return
			}
			d.recheck(id)
		}
		d.log.Info("disk tier: every journaled file re-hashed", "files", len(ids))
	}()
}

// recheck hashes one entry still marked recheck: trusted for passthrough
// if it matches, dropped if not.
func (d *diskTier) recheck(id digest.ID) {
	e, ok := d.peek(id)
	if !ok || !e.recheck {
		return // gone, or done already
	}
	f, err := rofile.Open(d.path(id, e.sum))
	if err != nil {
		d.markRechecked(id, e, fileStamp{}, false)
		d.drop(id, e)
		return
	}
	defer f.Close()
	stamp, stamped := stampOf(f)
	h := xxhash.New()
	n, err := hashFile(h, f)
	good := err == nil && stamped && h.Sum64() == e.sum && n == e.size
	d.markRechecked(id, e, stamp, good)
	if !good {
		d.corruptFound.Add(1)
		d.log.Warn("disk tier: a file an earlier daemon handed to the kernel no longer holds its chunk; dropped, to be fetched again", "file", d.path(id, e.sum), "err", err)
		d.drop(id, e)
	}
}

func (d *diskTier) markRechecked(id digest.ID, e diskEntry, stamp fileStamp, good bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	el, ok := d.entries[id]
	if !ok || el.Value.(*diskEntry).sum != e.sum || !el.Value.(*diskEntry).recheck {
		return
	}
	x := el.Value.(*diskEntry)
	x.recheck = false
	d.unchecked--
	if good {
		x.verified, x.unread = stamp, false
		d.rechecks++
	}
}
