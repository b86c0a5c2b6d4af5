package lazypages

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gpuwarm/gpuwarm/restore/pageserver"
)

// restoreFinished is what CRIU sends when the restore is done ("RSTF").
const restoreFinished = 0x52535446

// SocketName is the socket `criu restore --lazy-pages` connects to, in its
// work directory.
const SocketName = "lazy-pages.socket"

// Span is a byte range of a pages file.
type Span struct {
	PagesID uint32
	Off     int64
	Len     int64
}

// Options tune a Server.
type Options struct {
	// Images is the directory with the snapshot's CRIU images (pagemaps and
	// mm images of the tasks).
	Images string
	// Source reads the pages files (the block cache, or the mount).
	Source pageserver.PageSource
	// Workers copy memory ahead of demand in parallel; default 8.
	Workers int
	// UnitSize is the most one copy moves, and where units are cut in the
	// pages file (the chunk size of page chunks); default 1 MiB.
	UnitSize int64
	// First lists pages-file spans to fill before all others, in order (a
	// prefetch profile's chunks).
	First []Span
	// OnTouch is called on the first page fault in each unit: the order in
	// which the restored program uses its memory.
	OnTouch func(pagesID uint32, off int64, n int)
	// FillDelay holds back the fill ahead of demand for this long after the
	// restore: while recording a profile, only the program's own faults
	// should bring memory in, or the recorded order is the daemon's.
	FillDelay time.Duration
	Logger    *slog.Logger
}

// Stats count the daemon's work.
type Stats struct {
	Tasks       int
	Units       int
	Faults      int64 // page-fault messages
	FaultCopies int64 // units copied because a fault asked for them
	ZeroPages   int64
	Bytes       int64         // copied into the processes
	AheadBytes  int64         // of Bytes, copied before any fault asked
	RestoreDone time.Duration // since Listen: CRIU said the restore was done
	FirstFault  time.Duration // since Listen
	LastFault   time.Duration // since Listen
	Finished    time.Duration // since Listen: every lazy page in place
}

// Server is one restore's lazy-pages daemon.
type Server struct {
	opt   Options
	log   *slog.Logger
	l     *net.UnixListener
	start time.Time

	mu       sync.Mutex
	procs    []*proc
	queue    []*unit // background order
	qnext    int
	finished bool // CRIU sent RESTORE_FINISHED
	failed   error

	faults, faultCopies, zero, bytes, ahead atomic.Int64
	firstFault, lastFault, restoreDone      atomic.Int64
	faultSem                                chan struct{}
	copies, readers                         sync.WaitGroup
	bufs                                    sync.Pool
	finishedAt                              time.Duration
	fillNow                                 chan struct{} // closed by FillNow
	fillOnce                                sync.Once
}

// Listen creates the socket CRIU's restore connects to.
func Listen(sock string, opt Options) (*Server, error) {
	if opt.Workers <= 0 {
		opt.Workers = 8
	}
	if opt.UnitSize <= 0 {
		opt.UnitSize = 1 << 20
	}
	opt.UnitSize = (opt.UnitSize + pageSize - 1) / pageSize * pageSize
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	os.Remove(sock)
	l, err := listenUnix(sock)
	if err != nil {
		return nil, fmt.Errorf("lazy pages: %w", err)
	}
	s := &Server{opt: opt, log: opt.Logger, l: l, start: time.Now(), fillNow: make(chan struct{})}
	s.bufs.New = func() any { b := make([]byte, opt.UnitSize); return &b }
	return s, nil
}

// FillNow ends a FillDelay early: the fill ahead of demand starts now (at
// once if the restore is done, else when it is). Recording ends with it.
func (s *Server) FillNow() { s.fillOnce.Do(func() { close(s.fillNow) }) }

// unit states
const (
	pending int32 = iota
	copying
	done
	dropped
)

type unit struct {
	p       *proc
	start   uint64 // current address (moves with mremap)
	end     uint64
	pagesID uint32
	off     int64
	state   int32 // guarded by p.mu
	touched bool
}

type proc struct {
	pid  int
	fd   int
	file *os.File
	mu   sync.Mutex
	us   []*unit // sorted by start, disjoint
	gone bool
}

// find returns the unit holding addr (p.mu held).
func (p *proc) find(addr uint64) *unit {
	i := sort.Search(len(p.us), func(i int) bool { return p.us[i].end > addr })
	if i < len(p.us) && p.us[i].start <= addr {
		return p.us[i]
	}
	return nil
}

// split cuts the unit holding addr so that a unit starts at addr; the new
// piece of a unit being copied is pending again (the copy in flight may or
// may not cover it; copying twice is harmless). p.mu held.
func (p *proc) split(addr uint64) *unit {
	i := sort.Search(len(p.us), func(i int) bool { return p.us[i].end > addr })
	if i == len(p.us) || p.us[i].start >= addr {
		return nil
	}
	u := p.us[i]
	n := &unit{p: p, start: addr, end: u.end, pagesID: u.pagesID, off: u.off + int64(addr-u.start), state: u.state, touched: u.touched}
	if n.state == copying {
		n.state = pending
	}
	u.end = addr
	p.us = append(p.us, nil)
	copy(p.us[i+2:], p.us[i+1:])
	p.us[i+1] = n
	return n
}

// within returns the units inside [start, end) after cutting at both ends.
func (p *proc) within(start, end uint64) (in []*unit, cut []*unit) {
	if n := p.split(start); n != nil {
		cut = append(cut, n)
	}
	if n := p.split(end); n != nil {
		cut = append(cut, n)
	}
	for _, u := range p.us {
		if u.start >= start && u.end <= end {
			in = append(in, u)
		}
	}
	return in, cut
}

// Serve runs the daemon: it takes the userfaultfds from CRIU's restore,
// answers faults and fills memory until every lazy page is in place (then
// it closes the descriptors, so the processes run on their own) or ctx
// ends, or something fails (a page that cannot be read, a broken
// handshake): then the caller must kill the restored tree.
func (s *Server) Serve(ctx context.Context) (err error) {
	defer s.l.Close()
	defer func() {
		s.copies.Wait()
		s.mu.Lock()
		for _, p := range s.procs {
			if p.file != nil {
				p.file.Close()
			}
		}
		s.finishedAt = time.Since(s.start)
		s.mu.Unlock()
		s.readers.Wait()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { s.l.Close() })
	defer stop()
	conn, err := s.l.AcceptUnix()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("lazy pages: waiting for criu restore: %w", err)
	}
	s.l.Close()
	stopConn := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopConn()
	defer conn.Close()
	if err := s.handshake(ctx, conn); err != nil {
		s.fail(err)
		return s.failure()
	}
	s.restoreDone.Store(int64(time.Since(s.start)))
	if s.opt.FillDelay > 0 {
		t := time.NewTimer(s.opt.FillDelay)
		select {
		case <-t.C:
		case <-s.fillNow:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		t.Stop()
	}
	// Fill everything else in parallel, then sweep for units that moved or
	// were cut while copying, until none is left.
	for {
		var g sync.WaitGroup
		for range s.opt.Workers {
			g.Add(1)
			go func() {
				defer g.Done()
				s.background(ctx)
			}()
		}
		g.Wait()
		if err := s.failure(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		left, busy := s.requeue()
		if left == 0 && busy == 0 {
			break
		}
		if left == 0 {
			time.Sleep(time.Millisecond) // fault copies still running
		}
	}
	s.copies.Wait()
	return s.failure()
}

func (s *Server) fail(err error) {
	s.mu.Lock()
	if s.failed == nil {
		s.failed = err
	}
	s.mu.Unlock()
}

func (s *Server) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

// handshake receives a (pid, uffd) per task until CRIU says the restore is
// done. Faults are served from the moment a descriptor arrives.
func (s *Server) handshake(ctx context.Context, conn *net.UnixConn) error {
	var b [4]byte
	oob := make([]byte, syscall.CmsgSpace(4))
	for {
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return errors.New("lazy pages: criu restore closed the socket before it finished (see its log)")
			}
			return fmt.Errorf("lazy pages: reading from criu restore: %w", err)
		}
		v := binary.LittleEndian.Uint32(b[:])
		if v == restoreFinished {
			s.mu.Lock()
			s.finished = true
			s.mu.Unlock()
			return nil
		}
		pid := int(int32(v))
		if pid < 0 {
			continue // a zombie: no memory
		}
		if pid == 0 || pid > 1<<22 {
			return fmt.Errorf("lazy pages: criu restore sent task %d: not a pid", pid)
		}
		var one [1]byte
		_, oobn, _, _, err := conn.ReadMsgUnix(one[:], oob)
		if err != nil {
			return fmt.Errorf("lazy pages: receiving the userfaultfd of task %d: %w", pid, err)
		}
		fd, err := parseFD(oob[:oobn])
		if err != nil {
			return fmt.Errorf("lazy pages: task %d: %w", pid, err)
		}
		if err := s.addTask(ctx, pid, fd); err != nil {
			syscall.Close(fd)
			return err
		}
	}
}

func parseFD(oob []byte) (int, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return -1, fmt.Errorf("no userfaultfd in the message: %w", err)
	}
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds[1:] {
			syscall.Close(fd)
		}
		if len(fds) > 0 {
			return fds[0], nil
		}
	}
	return -1, errors.New("no userfaultfd in the message")
}

func (s *Server) addTask(ctx context.Context, pid, fd int) error {
	us, err := loadTask(s.opt.Images, pid, s.opt.UnitSize)
	if err != nil {
		return fmt.Errorf("lazy pages: %w", err)
	}
	p := &proc{pid: pid, fd: fd}
	for _, u := range us {
		p.us = append(p.us, &unit{p: p, start: u.Start, end: u.End, pagesID: u.PagesID, off: u.Off})
	}
	s.log.Debug("lazy pages: task", "pid", pid, "units", len(p.us))
	s.adopt(ctx, p)
	return nil
}

// adopt starts serving p and queues its pending units.
func (s *Server) adopt(ctx context.Context, p *proc) {
	p.file = os.NewFile(uintptr(p.fd), fmt.Sprintf("userfaultfd:%d", p.pid))
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.queue = append(s.queue, s.order(p)...)
	s.mu.Unlock()
	s.readers.Add(1)
	go func() {
		defer s.readers.Done()
		s.events(ctx, p)
	}()
}

// order puts p's pending units in background order: those in the First
// spans (in their order), then the rest by address.
func (s *Server) order(p *proc) []*unit {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*unit
	seen := map[*unit]bool{}
	if len(s.opt.First) > 0 {
		byFile := map[uint32][]*unit{}
		for _, u := range p.us {
			byFile[u.pagesID] = append(byFile[u.pagesID], u)
		}
		for _, l := range byFile {
			sort.Slice(l, func(i, j int) bool { return l[i].off < l[j].off })
		}
		for _, sp := range s.opt.First {
			l := byFile[sp.PagesID]
			i := sort.Search(len(l), func(i int) bool { return l[i].off+int64(l[i].end-l[i].start) > sp.Off })
			for ; i < len(l) && l[i].off < sp.Off+sp.Len; i++ {
				if !seen[l[i]] && l[i].state == pending {
					seen[l[i]] = true
					out = append(out, l[i])
				}
			}
		}
	}
	for _, u := range p.us {
		if !seen[u] && u.state == pending {
			out = append(out, u)
		}
	}
	return out
}

// background copies queued units until the queue is empty.
func (s *Server) background(ctx context.Context) {
	for ctx.Err() == nil && s.failure() == nil {
		s.mu.Lock()
		if s.qnext >= len(s.queue) {
			s.mu.Unlock()
			return
		}
		u := s.queue[s.qnext]
		s.qnext++
		s.mu.Unlock()
		if s.claim(u) {
			if n, err := s.fill(ctx, u); err != nil {
				s.fail(err)
				return
			} else {
				s.ahead.Add(n)
			}
		}
	}
}

// requeue queues every unit still pending; it says how many it queued and
// how many are being copied.
func (s *Server) requeue() (left, busy int) {
	s.mu.Lock()
	procs := append([]*proc(nil), s.procs...)
	s.mu.Unlock()
	var q []*unit
	for _, p := range procs {
		p.mu.Lock()
		for _, u := range p.us {
			switch u.state {
			case pending:
				q = append(q, u)
			case copying:
				busy++
			}
		}
		p.mu.Unlock()
	}
	s.mu.Lock()
	s.queue, s.qnext = q, 0
	s.mu.Unlock()
	return len(q), busy
}

// claim marks u as being copied if nobody copies it yet.
func (s *Server) claim(u *unit) bool {
	p := u.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if u.state != pending || p.gone {
		return false
	}
	u.state = copying
	return true
}

// fill copies a claimed unit into the process and returns the bytes moved.
func (s *Server) fill(ctx context.Context, u *unit) (int64, error) {
	p := u.p
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	for attempt := 0; ; attempt++ {
		p.mu.Lock()
		if u.state != copying || p.gone { // dropped while we were away
			p.mu.Unlock()
			return 0, nil
		}
		start, n, id, off := u.start, int(u.end-u.start), u.pagesID, u.off
		p.mu.Unlock()
		buf := (*bp)[:n]
		if err := s.opt.Source.ReadPages(ctx, id, off, buf); err != nil {
			return 0, fmt.Errorf("lazy pages: task %d: pages-%d.img at %d (+%d): %w", p.pid, id, off, n, err)
		}
		err := copyPages(p.fd, start, buf)
		switch {
		case err == nil:
			p.mu.Lock()
			if u.state == copying {
				u.state = done
			}
			p.mu.Unlock()
			s.bytes.Add(int64(n))
			return int64(n), nil
		case errors.Is(err, errGone):
			s.exited(p)
			return 0, nil
		case (errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EINVAL)) && attempt < 10000 && ctx.Err() == nil && s.failure() == nil:
			// The address space is changing (an event not read yet) or the
			// range moved: look again once the event is handled.
			time.Sleep(time.Millisecond)
		default:
			p.mu.Lock()
			gone := u.state == dropped
			p.mu.Unlock()
			if gone {
				return 0, nil
			}
			return 0, fmt.Errorf("lazy pages: task %d: copy %d bytes to %#x: %w", p.pid, n, start, err)
		}
	}
}

func (s *Server) exited(p *proc) {
	p.mu.Lock()
	p.gone = true
	for _, u := range p.us {
		u.state = dropped
	}
	p.mu.Unlock()
}

// events reads p's userfaultfd until it is closed.
func (s *Server) events(ctx context.Context, p *proc) {
	buf := make([]byte, msgSize*64)
	for {
		n, err := p.file.Read(buf)
		if err != nil || n == 0 {
			return
		}
		for i := 0; i+msgSize <= n; i += msgSize {
			if err := s.event(ctx, p, decodeMsg(buf[i:i+msgSize])); err != nil {
				s.fail(err)
				return
			}
		}
	}
}

func (s *Server) event(ctx context.Context, p *proc, m msg) error {
	switch m.event {
	case eventPagefault:
		return s.fault(ctx, p, m.b&^(pageSize-1))
	case eventFork:
		return s.fork(ctx, p, int(uint32(m.a)))
	case eventRemap:
		s.remap(p, m.a, m.b, m.c)
		return nil
	case eventRemove, eventUnmap:
		if m.event == eventRemove {
			// The VMA stays: stop faults there being reported, they are
			// ordinary zero-fill faults now.
			if err := unregister(p.fd, m.a, m.b-m.a); errors.Is(err, errGone) {
				s.exited(p)
				return nil
			} else if err != nil {
				return fmt.Errorf("lazy pages: task %d: unregister %#x-%#x: %w", p.pid, m.a, m.b, err)
			}
		}
		p.mu.Lock()
		in, _ := p.within(m.a, m.b)
		for _, u := range in {
			u.state = dropped
		}
		p.mu.Unlock()
		return nil
	}
	return fmt.Errorf("lazy pages: task %d: unexpected userfaultfd event %#x", p.pid, m.event)
}

func (s *Server) fault(ctx context.Context, p *proc, addr uint64) error {
	s.faults.Add(1)
	now := int64(time.Since(s.start))
	s.firstFault.CompareAndSwap(0, now)
	s.lastFault.Store(now)
	p.mu.Lock()
	u := p.find(addr)
	var st int32 = -1
	first := false
	if u != nil {
		st = u.state
		first = !u.touched
		u.touched = true
		if st == pending {
			u.state = copying
		}
	}
	p.mu.Unlock()
	if first && s.opt.OnTouch != nil {
		s.opt.OnTouch(u.pagesID, u.off, int(u.end-u.start))
	}
	switch st {
	case -1, dropped:
		s.zero.Add(1)
		if err := zeroPage(p.fd, addr); err != nil && !errors.Is(err, errGone) && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("lazy pages: task %d: zero page at %#x: %w", p.pid, addr, err)
		}
	case done:
		wake(p.fd, addr, pageSize)
	case copying:
		// Whoever copies it wakes the faulting thread.
	case pending:
		// Never block this reader on a copy: a copy can wait (EAGAIN) for
		// an event behind this one in the queue. Fault copies are bounded by
		// the faulting threads: each waits for its page, and a unit is
		// copied once.
		s.faultCopies.Add(1)
		s.copies.Add(1)
		go func() {
			defer s.copies.Done()
			if _, err := s.fill(ctx, u); err != nil {
				s.fail(err)
			}
		}()
	}
	return nil
}

func (s *Server) fork(ctx context.Context, parent *proc, fd int) error {
	c := &proc{pid: parent.pid, fd: fd}
	parent.mu.Lock()
	for _, u := range parent.us {
		n := *u
		n.p = c
		if n.state == copying {
			n.state = pending
		}
		c.us = append(c.us, &n)
	}
	parent.mu.Unlock()
	s.adopt(ctx, c)
	return nil
}

func (s *Server) remap(p *proc, from, to, n uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	in, _ := p.within(from, from+n)
	for _, u := range in {
		u.start = u.start - from + to
		u.end = u.end - from + to
	}
	sort.Slice(p.us, func(i, j int) bool { return p.us[i].start < p.us[j].start })
}

// Stats returns the daemon's counters so far.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Tasks: len(s.procs), Faults: s.faults.Load(), FaultCopies: s.faultCopies.Load(), ZeroPages: s.zero.Load(),
		Bytes: s.bytes.Load(), AheadBytes: s.ahead.Load(), RestoreDone: time.Duration(s.restoreDone.Load()),
		FirstFault: time.Duration(s.firstFault.Load()), LastFault: time.Duration(s.lastFault.Load()), Finished: s.finishedAt}
	for _, p := range s.procs {
		st.Units += len(p.us)
	}
	return st
}

// listenUnix listens on the socket path sock, which may be longer than a
// socket address holds (108 bytes: a deep TMPDIR): then it binds through
// /proc/self/fd/N/NAME, N its directory, which names the same file.
func listenUnix(sock string) (*net.UnixListener, error) {
	if len(sock) < 100 {
		return net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	}
	dir, err := os.Open(filepath.Dir(sock))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), filepath.Base(sock)), Net: "unix"})
	if err != nil {
		return nil, err
	}
	// Unlink by the short name when closed would miss; the caller's work
	// directory is removed whole anyway.
	l.SetUnlinkOnClose(false)
	return l, nil
}
