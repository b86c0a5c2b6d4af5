package uring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The FUSE-over-io_uring ABI (include/uapi/linux/fuse.h, Linux 6.14+).
const (
	cmdRegister       = 1
	cmdCommitAndFetch = 2

	inOutHeaderSize = 128 // fuse_uring_req_header.in_out
	opInOutSize     = 128 // fuse_uring_req_header.op_in
	headerSize      = inOutHeaderSize + opInOutSize + 32
	entInOutOffset  = inOutHeaderSize + opInOutSize

	inHeaderSize  = 40
	outHeaderSize = 16
	minReadBuffer = 8192

	opInit = 26
)

// Opcodes always answered on the queue's own thread (unless the
// filesystem answers WouldWait): it answers them from memory (see the
// package documentation). Others (READ,
// LOOKUP, READDIR...) are too, unless one of them took longer than
// SlowAnswer on this queue in the last SlowWindow: then they are answered
// by goroutines, so that one waiting on the network does not hold up the
// requests queued behind it on the same CPU.
const (
	SlowAnswer = time.Millisecond
	SlowWindow = 100 * time.Millisecond
)

var inlineOps = map[uint32]bool{
	3:  true, // GETATTR
	5:  true, // READLINK
	14: true, // OPEN
	17: true, // STATFS
	18: true, // RELEASE
	22: true, // GETXATTR
	23: true, // LISTXATTR
	25: true, // FLUSH
	27: true, // OPENDIR
	29: true, // RELEASEDIR
	34: true, // ACCESS
}

// AnswersFromMemory reports whether the filesystem answers requests of
// this FUSE opcode from memory, or else WouldWait (GETATTR, OPEN,
// RELEASE...): a thread answering requests in turn may always answer them
// itself; others (READ, LOOKUP, READDIR...) it hands to goroutines for a
// while after one was slow.
func AnswersFromMemory(opcode uint32) bool { return inlineOps[opcode] }

// Options tune Serve.
type Options struct {
	// MaxWrite is the connection's max_write (the mount's MaxWrite): with
	// max_pages, it sizes the largest payload the kernel puts in a ring
	// entry.
	MaxWrite int
	// EntriesPerQueue is how many requests each CPU's queue holds at once
	// (if 0: 4, fewer on machines of more than 32 CPUs, at least 2). Each
	// entry has a payload buffer as large as the largest request (1 MiB
	// for a MaxWrite of 1 MiB), resident only as far as replies fill it.
	EntriesPerQueue int
	// Primed says that ps has already answered the connection's INIT: it
	// is the /dev/fuse server's own (see fusefs), so that an INTERRUPT,
	// which the kernel sends through /dev/fuse, finds the request it is
	// for among those answered here. Otherwise Serve hands ps a copy of
	// the kernel's INIT first.
	Primed bool
	Logger *slog.Logger
}

// Server answers a FUSE connection's requests through io_uring queues,
// one per possible CPU.
type Server struct {
	queues   []*queue
	wg       sync.WaitGroup
	log      *slog.Logger
	requests atomic.Int64
	async    atomic.Int64
}

// Serve sets up the queues on fd (a /dev/fuse descriptor of a connection
// whose INIT negotiated FUSE_OVER_IO_URING; fd stays the caller's) and
// answers through ps the requests the kernel sends through them. init is
// what the kernel sent in its INIT request (fuse.Server.KernelSettings):
// ps learns the connection's protocol from it. Serve returns once every
// queue is registered: the kernel then sends requests (all but FORGET and
// INTERRUPT, which still come through fd) through the rings.
//
// Once INIT has negotiated io_uring, the kernel holds every request until
// all the queues are registered, or until a registration fails. So if Serve
// fails, it makes one fail on purpose: the connection then goes on through
// fd alone, as if io_uring had not been negotiated.
func Serve(fd int, ps *fuse.ProtocolServer, init *fuse.InitIn, opt Options) (*Server, error) {
	if init.Flags64()&fuse.CAP_OVER_IO_URING == 0 {
		return nil, errors.New("the kernel does not offer FUSE over io_uring on this connection (Linux 6.14 or later with the fuse module's enable_uring parameter set)")
	}
	s, err := serve(fd, ps, init, opt)
	if err != nil {
		if aerr := abandon(fd); aerr != nil {
			return nil, fmt.Errorf("%w; and the kernel could not be told to go on without the rings (%v): %w", err, aerr, ErrStuck)
		}
		return nil, err
	}
	return s, nil
}

// ErrStuck (wrapped) says that the kernel still holds the connection's
// requests for rings that will not come: the connection must be aborted.
var ErrStuck = errors.New("its requests wait for the rings until the connection is aborted")

// Preflight checks that this process can set up rings (io_uring may be
// disabled: the kernel.io_uring_disabled sysctl, seccomp) before a mount
// negotiates io_uring.
func Preflight() error {
	r, err := newRing(2)
	if err != nil {
		return err
	}
	r.close()
	_, err = possibleCPUs()
	return err
}

// abandon has the kernel give up waiting for the queues: a REGISTER for a
// queue that does not exist fails, and a failed REGISTER turns io_uring off
// for the connection.
func abandon(fd int) error {
	// The ring is single-issuer: entered only by the thread that made it
	// (EEXIST from any other).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := newRing(2)
	if err != nil {
		return err
	}
	defer r.close()
	s, cmd := r.next()
	s.opcode = opURingCmd
	s.fd = int32(fd)
	s.off = cmdRegister
	binary.LittleEndian.PutUint16(cmd[16:], 0xffff)
	if err := r.enter(false); err != nil {
		return err
	}
	res := int32(0)
	r.completions(func(c cqe) { res = c.res })
	if res >= 0 {
		return fmt.Errorf("a REGISTER for no queue did not fail (%d)", res)
	}
	return nil
}

func serve(fd int, ps *fuse.ProtocolServer, init *fuse.InitIn, opt Options) (*Server, error) {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if !opt.Primed {
		if err := prime(ps, init); err != nil {
			return nil, err
		}
	}
	ncpu, err := possibleCPUs()
	if err != nil {
		return nil, err
	}
	if opt.EntriesPerQueue <= 0 {
		// Each entry's payload buffer becomes resident as far as replies
		// fill it: at most 128 MiB of them in all (2 to 4 a queue).
		opt.EntriesPerQueue = min(4, max(2, 128/ncpu))
	}
	pages := (opt.MaxWrite + os.Getpagesize() - 1) / os.Getpagesize()
	payload := max(minReadBuffer, opt.MaxWrite, pages*os.Getpagesize())
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup of the FUSE descriptor: %w", err)
	}
	s := &Server{log: opt.Logger}
	var refs atomic.Int32
	refs.Store(int32(ncpu))
	ready := make(chan error, ncpu)
	for q := 0; q < ncpu; q++ {
		qu := &queue{s: s, id: q, fuseFd: dup, ps: ps, entries: opt.EntriesPerQueue, payload: payload}
		s.queues = append(s.queues, qu)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			qu.run(ready)
			if refs.Add(-1) == 0 {
				syscall.Close(dup)
			}
		}()
	}
	var first error
	for range ncpu {
		if err := <-ready; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		s.stop()
		s.wg.Wait()
		return nil, first
	}
	stop := make(chan struct{})
	go func() { s.wg.Wait(); close(stop) }()
	go s.watch(stop)
	return s, nil
}

// Wait waits until every queue has stopped: the connection ended (the
// mount went away). There is no stopping them before: once the kernel
// sends through the rings, requests of a CPU whose queue is gone would
// wait until the connection ends.
func (s *Server) Wait() { s.wg.Wait() }

// stop ends queues that failed to start alongside one that did not.
func (s *Server) stop() {
	for _, q := range s.queues {
		q.wake(true)
	}
}

// Requests counts the requests answered through the rings, and of them
// those answered by a goroutine instead of the queue's thread.
func (s *Server) Requests() (all, async int64) { return s.requests.Load(), s.async.Load() }

// prime hands ps the kernel's INIT, as if it had come to ps, so that it
// parses requests for the protocol version and capabilities of the
// connection (its reply is dropped: the kernel had the real one).
func prime(ps *fuse.ProtocolServer, init *fuse.InitIn) error {
	in := *init
	in.Length = uint32(unsafe.Sizeof(in))
	in.Opcode = opInit
	in.Unique = 1
	b := unsafe.Slice((*byte)(unsafe.Pointer(&in)), unsafe.Sizeof(in))
	out := make([]byte, 4096)
	n, st := ps.HandleRequest([][]byte{b}, [][]byte{out})
	if !st.Ok() || n < outHeaderSize || int32(binary.LittleEndian.Uint32(out[4:])) != 0 {
		return fmt.Errorf("the protocol server refused the connection's INIT (%v)", st)
	}
	return nil
}

// possibleCPUs is the kernel's num_possible_cpus(): it makes one queue per
// possible CPU and puts a request on the queue of the CPU it was made on.
func possibleCPUs() (int, error) {
	b, err := os.ReadFile("/sys/devices/system/cpu/possible")
	if err != nil {
		return 0, fmt.Errorf("counting CPUs: %w", err)
	}
	return parseCPUList(string(b))
}

// parseCPUList returns one more than the highest CPU of a kernel CPU list
// ("0-15", "0,2-3").
func parseCPUList(list string) (int, error) {
	n := 0
	for _, r := range strings.Split(strings.TrimSpace(list), ",") {
		lo, hi, found := strings.Cut(r, "-")
		a, err1 := strconv.Atoi(lo)
		z := a
		var err2 error
		if found {
			z, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || z < a || z >= 1<<16 {
			return 0, fmt.Errorf("counting CPUs: cannot parse the CPU list %q", list)
		}
		n = max(n, z+1)
	}
	return n, nil
}

// queue serves one CPU's ring entries from a thread of its own, pinned to
// that CPU: the request's process sleeps there while the thread answers.
type queue struct {
	s       *Server
	id      int
	fuseFd  int
	ps      *fuse.ProtocolServer
	entries int
	payload int

	r     *ring
	mem   []byte
	ents  []entry
	evfd  int
	evbuf []byte

	slowUntil time.Time // answer what may wait in goroutines until then

	// busySince is when the queue's thread began answering a request
	// (unix nanoseconds; 0 while it is not), busyOp that request's opcode:
	// the watchdog reports a thread held up long.
	busySince atomic.Int64
	busyOp    atomic.Uint32

	mu       sync.Mutex
	done     []int // entries answered by goroutines, to commit
	stopping bool
	inflight sync.WaitGroup
	live     int // entries the kernel holds or we answer
}

type entry struct {
	header  []byte
	payload []byte
	in      []byte // a copy of the request's payload (names), which
	// the reply may overwrite in place
	inHeader [inHeaderSize]byte // a copy of the request's header, likewise
	opSize   int                // the size of its op_in part
	// The command last sent for the entry, to send again if interrupted.
	lastCmd    uint32
	lastCommit uint64
	iov        []byte // two struct iovec, read by the kernel at REGISTER
}

// WouldWait is what a filesystem answers, on a queue's thread
// (OnQueueThread), a request it cannot answer without waiting (on the
// network, a disk, a lock held long): the queue then has a goroutine ask
// again, and answers the requests behind it meanwhile. It never reaches
// the kernel. (It is the kernel's ERESTARTSYS, which no FUSE reply means.)
const WouldWait = syscall.Errno(512)

// queueThreads holds the thread IDs of the queues' threads, nQueueThreads
// counts them (no system call to ask while there are none).
var (
	queueThreads  sync.Map
	nQueueThreads atomic.Int32
)

// OnQueueThread reports whether the caller runs on a queue's thread: a
// request it answers holds up the requests made on that CPU until it is
// answered. A filesystem answers WouldWait there rather than wait.
func OnQueueThread() bool {
	if nQueueThreads.Load() == 0 {
		return false
	}
	_, ok := queueThreads.Load(unix.Gettid())
	return ok
}

const evTag = ^uint64(0)

// EnterQueueThread marks the calling goroutine's OS thread, which it must
// have locked (runtime.LockOSThread), as a queue's thread until the
// returned function is called: OnQueueThread reports true on it. For
// another transport whose thread answers requests in turn (a /dev/fuse
// poller), so that the filesystem answers WouldWait there too.
func EnterQueueThread() (leave func()) {
	tid := unix.Gettid()
	queueThreads.Store(tid, true)
	nQueueThreads.Add(1)
	return func() {
		queueThreads.Delete(tid)
		nQueueThreads.Add(-1)
	}
}

func (q *queue) run(ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread, pinned, ends with it
	defer EnterQueueThread()()
	var set unix.CPUSet
	set.Set(q.id)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		q.s.log.Debug("fuse ring queue runs unpinned", "cpu", q.id, "err", err)
	}
	if err := q.setup(); err != nil {
		q.teardown()
		ready <- fmt.Errorf("FUSE ring queue %d: %w", q.id, err)
		return
	}
	ready <- nil
	q.loop()
	q.inflight.Wait()
	q.teardown()
}

func (q *queue) setup() error {
	var err error
	if q.r, err = newRing(uint32(2 * (q.entries + 1))); err != nil {
		return err
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	q.mu.Lock()
	q.evfd = evfd
	q.mu.Unlock()
	// One mapping: per entry a 512-byte slot (header, then iovecs), then
	// the payloads, then the eventfd's 8 bytes.
	slots := 512 * q.entries
	slots = (slots + os.Getpagesize() - 1) / os.Getpagesize() * os.Getpagesize()
	size := slots + q.entries*q.payload + os.Getpagesize()
	if q.mem, err = unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return fmt.Errorf("mmap of %d bytes of ring buffers: %w", size, err)
	}
	q.evbuf = q.mem[size-os.Getpagesize() : size-os.Getpagesize()+8]
	for i := 0; i < q.entries; i++ {
		e := entry{
			header:  q.mem[512*i : 512*i+headerSize],
			iov:     q.mem[512*i+headerSize : 512*i+headerSize+32],
			payload: q.mem[slots+i*q.payload : slots+(i+1)*q.payload],
		}
		putIovec(e.iov[0:16], e.header)
		putIovec(e.iov[16:32], e.payload)
		q.ents = append(q.ents, e)
	}
	for i := range q.ents {
		q.command(i, cmdRegister, 0)
	}
	q.armEventfd()
	if err := q.r.enter(false); err != nil {
		return err
	}
	// A refused REGISTER completes at once; an accepted one completes
	// when the kernel has a request for the entry.
	var failed error
	var pending []cqe
	q.r.completions(func(c cqe) {
		if c.userData != evTag && c.res < 0 && failed == nil {
			failed = fmt.Errorf("REGISTER: %w", syscall.Errno(-c.res))
		}
		pending = append(pending, c)
	})
	if failed != nil {
		return failed
	}
	q.live = q.entries
	for _, c := range pending {
		q.complete(c)
	}
	return nil
}

func putIovec(dst, b []byte) {
	binary.LittleEndian.PutUint64(dst[0:], uint64(uintptr(unsafe.Pointer(&b[0]))))
	binary.LittleEndian.PutUint64(dst[8:], uint64(len(b)))
}

// sqe returns the next submission entry, submitting what is queued first
// if the ring is full.
func (q *queue) sqe() (*sqe, []byte) {
	s, cmd := q.r.next()
	for s == nil {
		q.r.enter(false)
		s, cmd = q.r.next()
	}
	return s, cmd
}

// command queues a REGISTER or COMMIT_AND_FETCH for entry i.
func (q *queue) command(i int, op uint32, commitID uint64) {
	q.ents[i].lastCmd, q.ents[i].lastCommit = op, commitID
	s, cmd := q.sqe()
	s.opcode = opURingCmd
	s.fd = int32(q.fuseFd)
	s.off = uint64(op)
	s.userData = uint64(i)
	if op == cmdRegister {
		s.addr = uint64(uintptr(unsafe.Pointer(&q.ents[i].iov[0])))
		s.len = 2
	}
	binary.LittleEndian.PutUint64(cmd[0:], 0) // flags
	binary.LittleEndian.PutUint64(cmd[8:], commitID)
	binary.LittleEndian.PutUint16(cmd[16:], uint16(q.id))
}

func (q *queue) armEventfd() {
	s, _ := q.sqe()
	s.opcode = opRead
	s.fd = int32(q.evfd)
	s.addr = uint64(uintptr(unsafe.Pointer(&q.evbuf[0])))
	s.len = 8
	s.off = ^uint64(0) // the current position (eventfds have none)
	s.userData = evTag
}

// wake has the queue's thread look at answers goroutines finished, and,
// if stop, end.
func (q *queue) wake(stop bool) {
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	q.mu.Lock()
	defer q.mu.Unlock()
	if stop {
		q.stopping = true
	}
	if q.evfd > 0 {
		unix.Write(q.evfd, one[:])
	}
}

func (q *queue) loop() {
	for {
		if err := q.r.enter(true); err != nil {
			if errors.Is(err, syscall.ENOMEM) {
				time.Sleep(time.Millisecond) // the kernel is short of memory for a moment
				continue
			}
			// Requests made on this CPU now wait until the mount goes.
			q.s.log.Error("FUSE ring queue stops: requests made on its CPU will wait until the mount is unmounted", "cpu", q.id, "err", err)
			return
		}
		q.r.completions(q.complete)
		q.mu.Lock()
		stop := q.stopping
		q.mu.Unlock()
		if stop || q.live == 0 {
			return
		}
	}
}

func (q *queue) complete(c cqe) {
	if c.userData == evTag {
		q.mu.Lock()
		done := q.done
		q.done = nil
		q.mu.Unlock()
		for _, i := range done {
			q.commit(i)
		}
		q.armEventfd()
		return
	}
	i := int(c.userData)
	e := &q.ents[i]
	if c.res < 0 {
		q.failed(i, e, syscall.Errno(-c.res))
		return
	}
	q.s.requests.Add(1)
	if !q.load(e) {
		q.commit(i)
		return
	}
	op := binary.LittleEndian.Uint32(e.inHeader[4:])
	t := time.Now()
	if inline := inlineOps[op]; inline || t.After(q.slowUntil) {
		q.busyOp.Store(op)
		q.busySince.Store(t.UnixNano())
		answered := q.answer(e, true)
		q.busySince.Store(0)
		if answered {
			q.commit(i)
			if end := time.Now(); !inline && end.Sub(t) > SlowAnswer {
				q.slowUntil = end.Add(SlowWindow)
			}
			return
		}
	}
	q.async(i, e)
}

// failed handles a REGISTER or COMMIT_AND_FETCH of entry i that the
// kernel refused. The connection ending (ENOTCONN...) retires the entry;
// a command interrupted before the kernel acted on it (EINTR, EAGAIN) is
// sent again. Anything else (the kernel found no request for the commit)
// leaves the kernel's entry unusable: a new one is registered on the same
// buffers, so that the queue keeps its depth (requests made on this CPU
// wait for a free entry).
func (q *queue) failed(i int, e *entry, errno syscall.Errno) {
	switch errno {
	case syscall.ENOTCONN, syscall.ECONNABORTED, syscall.ENODEV, syscall.ECANCELED:
		q.live--
	case syscall.EINTR, syscall.EAGAIN:
		q.command(i, e.lastCmd, e.lastCommit)
	default:
		if e.lastCmd == cmdRegister {
			q.s.log.Error("FUSE ring queue entry refused; the queue has one entry less (requests made on its CPU wait for the others)", "cpu", q.id, "err", errno)
			q.live--
			if q.live == 0 {
				q.s.log.Error("FUSE ring queue has no entry left: requests made on its CPU wait until the mount goes; remount without --fuse-uring", "cpu", q.id)
			}
			return
		}
		q.s.log.Error("FUSE ring commit refused; registering the entry again", "cpu", q.id, "commit", e.lastCommit, "err", errno)
		q.command(i, cmdRegister, 0)
	}
}

// watch reports, until the server stops, a queue whose thread has been
// answering one request for over a second: every request made on its CPU
// meanwhile waits behind it (a filesystem that should have answered
// WouldWait).
func (s *Server) watch(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	reported := make([]int64, len(s.queues))
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		now := time.Now().UnixNano()
		for k, q := range s.queues {
			since := q.busySince.Load()
			if since == 0 || since == reported[k] || now-since < int64(time.Second) {
				continue
			}
			reported[k] = since
			s.log.Warn("FUSE ring queue's thread held up by one request: requests made on its CPU wait behind it",
				"cpu", q.id, "opcode", q.busyOp.Load(), "for", time.Duration(now-since).Round(time.Millisecond))
		}
	}
}

func (q *queue) async(i int, e *entry) {
	q.s.async.Add(1)
	q.inflight.Add(1)
	go func() {
		defer q.inflight.Done()
		q.answer(e, false)
		q.mu.Lock()
		q.done = append(q.done, i)
		q.mu.Unlock()
		q.wake(false)
	}()
}

func (q *queue) commit(i int) {
	e := &q.ents[i]
	q.command(i, cmdCommitAndFetch, binary.LittleEndian.Uint64(e.header[entInOutOffset+8:]))
}

// load copies the request in e (its header, its payload) out of the
// places the reply is written to, and checks its sizes; false if they are
// impossible (then it has put an EIO reply in e).
func (q *queue) load(e *entry) bool {
	h := e.header
	length := int(binary.LittleEndian.Uint32(h[0:]))
	unique := binary.LittleEndian.Uint64(h[8:])
	payloadSize := int(binary.LittleEndian.Uint32(h[entInOutOffset+16:]))
	opSize := length - inHeaderSize - payloadSize
	if opSize < 0 || opSize > opInOutSize || payloadSize > len(e.payload) {
		q.s.log.Error("FUSE ring request with impossible sizes; answered EIO", "len", length, "payload", payloadSize)
		q.reply(e, unique, syscall.EIO, 0)
		return false
	}
	copy(e.inHeader[:], h[:inHeaderSize])
	e.opSize = opSize
	if cap(e.in) < payloadSize {
		e.in = make([]byte, payloadSize)
	}
	e.in = e.in[:payloadSize]
	copy(e.in, e.payload)
	return true
}

// answer has ps answer the request loaded in e, and puts the reply in e:
// the out header where the in header was, the rest in the payload buffer.
// On the queue's thread (onQueue) it returns false, with no reply, if the
// filesystem answered WouldWait: then a goroutine must ask again.
func (q *queue) answer(e *entry, onQueue bool) bool {
	h := e.header
	unique := binary.LittleEndian.Uint64(e.inHeader[8:])
	n, st := q.ps.HandleRequest(
		[][]byte{e.inHeader[:], h[inOutHeaderSize : inOutHeaderSize+e.opSize], e.in},
		[][]byte{h[:outHeaderSize], e.payload})
	if !st.Ok() || n < outHeaderSize {
		// Malformed, or a request that wants no reply: neither comes
		// through a ring; the kernel still waits for an answer.
		if st.Ok() {
			st = fuse.ENOSYS
		}
		q.reply(e, unique, syscall.Errno(st), 0)
		return true
	}
	if -int32(binary.LittleEndian.Uint32(h[4:])) == int32(WouldWait) {
		if onQueue {
			return false
		}
		// Off the queues' threads the filesystem must not: never to the kernel.
		q.s.log.Error("FUSE request answered WouldWait off a ring queue's thread; answered EIO", "opcode", binary.LittleEndian.Uint32(e.inHeader[4:]))
		q.reply(e, unique, syscall.EIO, 0)
		return true
	}
	binary.LittleEndian.PutUint32(h[entInOutOffset+16:], uint32(n-outHeaderSize))
	return true
}

func (q *queue) reply(e *entry, unique uint64, errno syscall.Errno, payload int) {
	h := e.header
	binary.LittleEndian.PutUint32(h[0:], uint32(outHeaderSize+payload))
	binary.LittleEndian.PutUint32(h[4:], uint32(-int32(errno)))
	binary.LittleEndian.PutUint64(h[8:], unique)
	binary.LittleEndian.PutUint32(h[entInOutOffset+16:], uint32(payload))
}

func (q *queue) teardown() {
	if q.r != nil {
		q.r.close() // cancels what the kernel still holds
	}
	q.mu.Lock()
	if q.evfd > 0 {
		syscall.Close(q.evfd)
		q.evfd = -1
	}
	q.mu.Unlock()
	if q.mem != nil {
		unix.Munmap(q.mem)
	}
}
