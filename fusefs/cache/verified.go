package cache

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/gpuwarm/gpuwarm/manifest/digest"
)

// A passthrough open hands the kernel a disk-tier file to read directly,
// with no check of its own, so the file must be known to hold the chunk's
// bytes: either this cache wrote it (from bytes verified against their
// SHA-256, hashed into the file's name as they were written) or hashed it
// back. Either way the entry keeps the file's identity (diskEntry.verified:
// inode, size, ctime; any write moves ctime) and an unchanged file is not
// hashed again while this cache runs.
//
// The journal lists those files for the next daemon of the same boot (an
// upgrade, a crash): it does not trust them (a block can change beneath
// the filesystem without moving a ctime) but re-hashes them in the
// background, ahead of demand, before handing them to the kernel again
// (recheck.go). Hashing them inside the opens instead made warm-disk
// sequential reads 0.66-0.67x native on the 16-core benchmark host.
// A new boot (a new boot_id) starts with no list: the page cache is cold
// then anyway, and files are hashed as they are opened.
//
// Format: a text file, "gpuwarm-verified 1 <boot_id>" and then one line
// per file, "<sha256> <xxh64> <inode> <size> <ctime ns>". It is rewritten
// with the live records at each start and when it has grown to twice
// their number (temp file + rename), and appended to otherwise; a torn
// last line (a crash mid-append) is skipped, as is every line of a journal
// of another boot or of no known format.

const (
	journalName  = "verified"
	journalMagic = "gpuwarm-verified 1"
)

// bootID names the running boot; "" (unreadable) turns the journal off.
var bootID = func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

type verifiedRec struct {
	id    digest.ID
	sum   uint64
	stamp fileStamp
}

func (r verifiedRec) line() string {
	return fmt.Sprintf("%s %016x %d %d %d\n", r.id, r.sum, r.stamp.ino, r.stamp.size, r.stamp.ctime)
}

// parseJournal returns the records of a journal written during boot. It
// allocates nothing per line: a daemon reads the journal of a full disk
// tier (tens of thousands of lines) before it mounts.
func parseJournal(b []byte, boot string) []verifiedRec {
	head, rest, ok := bytes.Cut(b, []byte("\n"))
	if !ok || boot == "" || string(head) != journalMagic+" "+boot {
		return nil
	}
	out := make([]verifiedRec, 0, bytes.Count(rest, []byte("\n")))
	for len(rest) > 0 {
		var line []byte
		line, rest, ok = bytes.Cut(rest, []byte("\n"))
		if !ok {
			break // torn
		}
		var f [5][]byte
		n := 0
		for n <= len(f) {
			line = bytes.TrimLeft(line, " ")
			if len(line) == 0 {
				break
			}
			i := bytes.IndexByte(line, ' ')
			if i < 0 {
				i = len(line)
			}
			if n < len(f) {
				f[n] = line[:i]
			}
			n++
			line = line[i:]
		}
		if n != len(f) {
			continue
		}
		var r verifiedRec
		if len(f[0]) != 2*digest.Size || len(f[1]) != 16 {
			continue
		}
		if _, err := hex.Decode(r.id[:], f[0]); err != nil {
			continue
		}
		sum, ok1 := parseUint(f[1], 16)
		ino, ok2 := parseInt(f[2])
		size, ok3 := parseInt(f[3])
		ctime, ok4 := parseInt(f[4])
		if !ok1 || !ok2 || !ok3 || !ok4 || size < 0 {
			continue
		}
		r.sum, r.stamp = sum, fileStamp{ino: ino, size: size, ctime: ctime}
		out = append(out, r)
	}
	return out
}

// parseUint parses b, digits of base 10 or 16 (either case), refusing
// overflow.
func parseUint(b []byte, base uint64) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		var d uint64
		switch {
		case '0' <= c && c <= '9':
			d = uint64(c - '0')
		case base == 16 && 'a' <= c && c <= 'f':
			d = uint64(c-'a') + 10
		case base == 16 && 'A' <= c && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		if v > (math.MaxUint64-d)/base {
			return 0, false
		}
		v = v*base + d
	}
	return v, true
}

// parseInt parses a decimal int64, with an optional leading '-'.
func parseInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	u, ok := parseUint(b, 10)
	switch {
	case !ok:
		return 0, false
	case neg && u <= 1<<63:
		return int64(-u), true // -(1<<63) included
	case !neg && u < 1<<63:
		return int64(u), true
	}
	return 0, false
}

// journalMinCompact is the fewest lines a journal is compacted at.
var journalMinCompact = 4096

// journal appends verifications to dir/verified.
type journal struct {
	mu    sync.Mutex
	dir   string
	boot  string
	f     *os.File // nil: off
	lines int      // records in the file
	log   *slog.Logger
}

// openJournal reads dir's journal, keeps the records live says are still
// true (rewriting the file with just those), and opens it for appends.
// It returns the records kept. Failures turn the journal off (every
// passthrough open hashes its file once per daemon, as without one).
func openJournal(dir string, log *slog.Logger, live func(verifiedRec) bool) (*journal, []verifiedRec) {
	j := &journal{dir: dir, boot: bootID(), log: log}
	if j.boot == "" {
		return j, nil
	}
	old, _ := os.ReadFile(filepath.Join(dir, journalName))
	recs := parseJournal(old, j.boot)
	last := make(map[digest.ID]int, len(recs)) // a file verified twice: the later record
	for i, r := range recs {
		last[r.id] = i
	}
	var kept []verifiedRec
	for i, r := range recs {
		if last[r.id] == i && live(r) {
			kept = append(kept, r)
		}
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(recs) > 0 && len(kept) == len(recs) && bytes.HasSuffix(old, []byte("\n")) {
		// All still true (a restart with nothing evicted): append to it as
		// it is rather than write it again.
		if f, err := os.OpenFile(filepath.Join(dir, journalName), os.O_WRONLY|os.O_APPEND, 0); err == nil {
			j.f, j.lines = f, len(recs)
			return j, kept
		}
	}
	if !j.rewriteLocked(kept) {
		return j, nil
	}
	return j, kept
}

// rewriteLocked replaces the journal with recs (temp file + rename) and
// reopens it for appends; false turns the journal off.
func (j *journal) rewriteLocked(recs []verifiedRec) bool {
	if j.f != nil {
		j.f.Close()
		j.f = nil
	}
	var buf bytes.Buffer
	buf.WriteString(journalMagic + " " + j.boot + "\n")
	for _, r := range recs {
		buf.WriteString(r.line())
	}
	path := filepath.Join(j.dir, journalName)
	tmp := filepath.Join(j.dir, "tmp", journalName)
	err := os.WriteFile(tmp, buf.Bytes(), 0o600)
	if err == nil {
		if err = os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
		}
	}
	if err == nil {
		j.f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	}
	if err != nil {
		j.log.Warn("cannot write the disk cache's verification journal; files are hashed again after a restart", "err", err)
		return false
	}
	j.lines = len(recs)
	return true
}

// add records a file trusted for passthrough: one write per file the
// cache commits or hashes back (opens that find the file's stamp already
// trusted do not come here). It reports
// whether the file has grown past twice the live records it could hold
// (and at least 4096): time to compact.
func (j *journal) add(r verifiedRec, live int) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return false
	}
	if _, err := j.f.WriteString(r.line()); err != nil {
		j.log.Warn("cannot append to the disk cache's verification journal; it is off until the next start", "err", err)
		j.f.Close()
		j.f = nil
		return false
	}
	j.lines++
	return j.lines > max(journalMinCompact, 2*live)
}

// compact rewrites the journal with recs, the verifications still true. A
// verification added meanwhile may be lost: its file is hashed again
// after a restart, nothing worse.
func (j *journal) compact(recs []verifiedRec) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f != nil {
		j.rewriteLocked(recs)
	}
}

func (j *journal) close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f != nil {
		j.f.Close()
		j.f = nil
	}
}
