package poll

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gpuwarm/gpuwarm/fusefs/transport/uring"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FUSE wire sizes and opcodes (linux/fuse.h).
const (
	inHeaderSize  = 40 // len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
	outHeaderSize = 16 // len, error, unique
	readInSize    = 40 // fh, offset, size, read_flags, lock_owner, flags, padding

	opForget      = 2
	opRead        = 15
	opInterrupt   = 36
	opBatchForget = 42
)

const (
	// asyncReadSize: reads of this much or more are answered by goroutines.
	asyncReadSize = 256 << 10
	// stuckAfter: the watchdog reports a request held this long on the thread.
	stuckAfter = time.Second
)

// Options tune Serve.
type Options struct {
	// MaxWrite is the connection's max_write (the mount's MaxWrite): it
	// sizes the buffers of requests and of replies (a read's reply is at
	// most max_read, which gpuwarm sets to the same).
	MaxWrite int
	// Spin is the longest the thread goes on reading after a request
	// before it sleeps (see the package documentation); 0: it sleeps at
	// once, as go-fuse's readers do, but answers on one thread still.
	Spin   time.Duration
	Logger *slog.Logger
}

// Server answers a connection's requests until it ends.
type Server struct {
	fd      int
	ps      *fuse.ProtocolServer
	opt     Options
	log     *slog.Logger
	bufSize int
	bufs    sync.Pool
	// inflight counts the goroutines answering requests.
	inflight sync.WaitGroup
	done     chan struct{}
	stop     chan struct{}

	requests, async, caught atomic.Int64
	slowUntil               time.Time // the thread's alone
	busySince               atomic.Int64
	busyOp                  atomic.Uint32
}

// Serve starts answering the requests of the FUSE connection open on fd
// (INIT already answered, by go-fuse's Server). The descriptor is made
// non-blocking until Stopped: go-fuse's own readers must not read it
// meanwhile.
func Serve(fd int, ps *fuse.ProtocolServer, opt Options) (*Server, error) {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.MaxWrite <= 0 {
		return nil, errors.New("fuse poll thread: Options.MaxWrite must be the connection's max_write")
	}
	// A descriptor of its own: go-fuse closes fd once its Serve returns,
	// while goroutines here may still be answering.
	own, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fuse poll thread: dup /dev/fuse: %w", err)
	}
	if err := unix.SetNonblock(own, true); err != nil {
		unix.Close(own)
		return nil, fmt.Errorf("fuse poll thread: make /dev/fuse non-blocking: %w", err)
	}
	s := &Server{fd: own, ps: ps, opt: opt, log: opt.Logger, bufSize: opt.MaxWrite + 64<<10,
		done: make(chan struct{}), stop: make(chan struct{})}
	go s.run()
	go s.watch()
	return s, nil
}

// Stopped is closed once the thread has stopped reading requests: the
// connection has ended (or reading it failed, which is logged). The
// descriptor is blocking again then; go-fuse's Serve should run next, to
// cancel what goroutines here still answer (its requests are the
// protocol server's) and to run the filesystem's OnUnmount (or, after a
// failure, to serve on).
func (s *Server) Stopped() <-chan struct{} { return s.stop }

// Wait returns once the thread has stopped and every request taken is
// answered.
func (s *Server) Wait() { <-s.done }

// Requests counts the requests answered, those of them handed to
// goroutines, and those read while the thread polled (each a sleep and
// wakeup saved).
func (s *Server) Requests() (all, async, caught int64) {
	return s.requests.Load(), s.async.Load(), s.caught.Load()
}

func (s *Server) buf() []byte {
	if b, ok := s.bufs.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, s.bufSize)
}

func (s *Server) putBuf(b []byte) {
	b = b[:cap(b)]
	s.bufs.Put(&b)
}

func (s *Server) run() {
	runtime.LockOSThread()
	leave := uring.EnterQueueThread()
	s.loop()
	leave()
	runtime.UnlockOSThread()
	if err := unix.SetNonblock(s.fd, false); err != nil {
		s.log.Error("make /dev/fuse blocking again", "err", err)
	}
	close(s.stop)
	s.inflight.Wait()
	unix.Close(s.fd)
	close(s.done)
}

func (s *Server) loop() {
	in, out := s.buf(), s.buf()
	pfd := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
	window := s.opt.Spin
	last := time.Now() // when the last answer went
	slept := false
	for {
		n, err := unix.Read(s.fd, in)
		switch err {
		case nil:
		case unix.EAGAIN:
			if window > 0 && time.Since(last) < window {
				continue
			}
			if _, err := unix.Poll(pfd, -1); err != nil && err != unix.EINTR {
				s.log.Error("poll /dev/fuse: the polling thread stops (go-fuse's readers take over)", "err", err)
				return
			}
			slept = true
			continue
		case unix.EINTR, unix.ENOENT: // ENOENT: interrupted before it was read
			continue
		case unix.ENODEV, unix.ECONNABORTED: // unmounted, aborted
			return
		default:
			s.log.Error("read /dev/fuse: the polling thread stops (go-fuse's readers take over)", "err", err)
			return
		}
		now := time.Now()
		if slept {
			window = adapt(window, s.opt.Spin, now.Sub(last))
			slept = false
		} else {
			s.caught.Add(1)
		}
		s.handle(in[:n], out, now)
		last = time.Now()
	}
}

// adapt returns the next polling window after a request woke the thread
// gap after the last answer: wider (up to max) if it came within max, a
// burst the thread slept through; else narrower, down to none.
func adapt(cur, max, gap time.Duration) time.Duration {
	if gap <= max {
		if cur == 0 {
			return max / 8
		}
		return min(2*cur, max)
	}
	if cur /= 2; cur < max/16 {
		return 0
	}
	return cur
}

// handle answers req on the thread, or hands it to a goroutine.
func (s *Server) handle(req, out []byte, now time.Time) {
	if len(req) < inHeaderSize {
		s.log.Error("FUSE request shorter than its header; dropped", "len", len(req))
		return
	}
	s.requests.Add(1)
	op := binary.LittleEndian.Uint32(req[4:])
	fromMemory := uring.AnswersFromMemory(op) || op == opForget || op == opBatchForget || op == opInterrupt
	inline := fromMemory
	if !inline {
		big := op == opRead && len(req) >= inHeaderSize+readInSize &&
			binary.LittleEndian.Uint32(req[inHeaderSize+16:]) >= asyncReadSize
		// After an answer on the thread took over uring.SlowAnswer,
		// such requests go to goroutines for uring.SlowWindow, as on
		// the rings' queues.
		inline = !big && !now.Before(s.slowUntil)
	}
	if inline {
		s.busyOp.Store(op)
		s.busySince.Store(now.UnixNano())
		n, st := s.ps.HandleRequest([][]byte{req}, [][]byte{out})
		s.busySince.Store(0)
		if !(st.Ok() && n >= outHeaderSize && wouldWait(out)) {
			s.reply(op, req, out, n, st)
			if end := time.Now(); !fromMemory && end.Sub(now) > uring.SlowAnswer {
				s.slowUntil = end.Add(uring.SlowWindow)
			}
			return
		}
	}
	// A goroutine answers: the request is copied out of the buffer the
	// next read fills.
	cp := append([]byte(nil), req...)
	s.async.Add(1)
	s.inflight.Add(1)
	go func() {
		defer s.inflight.Done()
		out := s.buf()
		defer s.putBuf(out)
		n, st := s.ps.HandleRequest([][]byte{cp}, [][]byte{out})
		if st.Ok() && n >= outHeaderSize && wouldWait(out) {
			s.log.Error("FUSE request answered WouldWait off the polling thread; answered EIO", "opcode", op)
			n, st = 0, fuse.EIO
		}
		s.reply(op, cp, out, n, st)
	}()
}

func wouldWait(out []byte) bool {
	return -int32(binary.LittleEndian.Uint32(out[4:])) == int32(uring.WouldWait)
}

// reply writes the answer HandleRequest put in out (n bytes), or an error
// answer for a request it could not take; nothing for one that wants no
// answer (FORGET).
func (s *Server) reply(op uint32, req, out []byte, n int, st fuse.Status) {
	if st.Ok() {
		if n > 0 {
			s.write(op, out[:n])
		}
		return
	}
	var h [outHeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], outHeaderSize)
	binary.LittleEndian.PutUint32(h[4:], uint32(-int32(st)))
	copy(h[8:], req[8:16])
	s.write(op, h[:])
}

func (s *Server) write(op uint32, b []byte) {
	for {
		_, err := unix.Write(s.fd, b)
		switch err {
		case nil, unix.ENOENT, unix.ENODEV, unix.ECONNABORTED:
			// ENOENT: the request was interrupted and is gone; the others:
			// the connection is.
			return
		case unix.EINTR:
			continue
		default:
			s.log.Error("write /dev/fuse: an answer was lost", "opcode", op, "err", err)
			return
		}
	}
}

// watch logs, until the thread stops, a request that has held it for over
// stuckAfter: every request meanwhile waits behind it (a filesystem that
// should have answered WouldWait).
func (s *Server) watch() {
	t := time.NewTicker(stuckAfter / 2)
	defer t.Stop()
	var reported int64
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		since := s.busySince.Load()
		if since == 0 || since == reported || time.Now().UnixNano()-since < int64(stuckAfter) {
			continue
		}
		reported = since
		s.log.Warn("FUSE polling thread held up by one request: every request to the mount waits behind it",
			"opcode", s.busyOp.Load(), "for", time.Since(time.Unix(0, since)).Round(time.Millisecond))
	}
}
