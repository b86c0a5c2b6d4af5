package uring

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The io_uring ABI this package needs (include/uapi/linux/io_uring.h):
// one ring per queue, 128-byte submission entries (the FUSE command
// carries 24 bytes in the entry's command area), one thread that submits.

const (
	setupSQE128       = 1 << 10
	setupSingleIssuer = 1 << 12
	setupDeferTaskrun = 1 << 13
	featSingleMmap    = 1 << 0
	enterGetEvents    = 1 << 0

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	opRead     = 22
	opURingCmd = 46

	sqeSize = 128
	cqeSize = 16
)

type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type params struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  sqringOffsets
	cqOff                                                                  cqringOffsets
}

// sqe is the first 64 bytes of a submission entry; the other 64 of a
// 128-byte entry (and cmd, from byte 48) are the command area.
type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64 // uring_cmd: cmd_op in the low 32 bits
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
}

type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// ring is an io_uring instance. It is used by one thread only, the one
// that made it (the ring is set up single-issuer: the kernel refuses, with
// EEXIST, an enter from another thread), so it needs no lock; its user
// locks its goroutine to that thread.
type ring struct {
	fd       int
	sqMem    []byte
	cqMem    []byte
	sqes     []byte
	sqHead   *uint32
	sqTail   *uint32
	sqMask   uint32
	sqArray  unsafe.Pointer
	cqHead   *uint32
	cqTail   *uint32
	cqMask   uint32
	cqes     unsafe.Pointer
	entries  uint32
	unsubmit uint32 // entries queued since the last enter
}

func newRing(entries uint32) (*ring, error) {
	var p params
	p.flags = setupSQE128 | setupSingleIssuer | setupDeferTaskrun
	fd, _, errno := syscall.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &ring{fd: int(fd), entries: p.sqEntries}
	fail := func(what string, err error) (*ring, error) {
		r.close()
		return nil, fmt.Errorf("io_uring %s: %w", what, err)
	}
	sqLen := int(p.sqOff.array + p.sqEntries*4)
	cqLen := int(p.cqOff.cqes + p.cqEntries*cqeSize)
	if p.features&featSingleMmap != 0 {
		sqLen = max(sqLen, cqLen)
	}
	var err error
	if r.sqMem, err = unix.Mmap(r.fd, offSQRing, sqLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fail("mmap of the submission ring", err)
	}
	if p.features&featSingleMmap != 0 {
		r.cqMem = r.sqMem
	} else if r.cqMem, err = unix.Mmap(r.fd, offCQRing, cqLen, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fail("mmap of the completion ring", err)
	}
	if r.sqes, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fail("mmap of the submission entries", err)
	}
	sq := unsafe.Pointer(&r.sqMem[0])
	cq := unsafe.Pointer(&r.cqMem[0])
	r.sqHead = (*uint32)(unsafe.Add(sq, p.sqOff.head))
	r.sqTail = (*uint32)(unsafe.Add(sq, p.sqOff.tail))
	r.sqMask = *(*uint32)(unsafe.Add(sq, p.sqOff.ringMask))
	r.sqArray = unsafe.Add(sq, p.sqOff.array)
	r.cqHead = (*uint32)(unsafe.Add(cq, p.cqOff.head))
	r.cqTail = (*uint32)(unsafe.Add(cq, p.cqOff.tail))
	r.cqMask = *(*uint32)(unsafe.Add(cq, p.cqOff.ringMask))
	r.cqes = unsafe.Add(cq, p.cqOff.cqes)
	return r, nil
}

// next returns a cleared submission entry and its command area, or nil
// if the submission ring is full (the caller enters the ring first). The
// kernel reads entries only in enter (no polling thread), so the entry is
// queued before the caller fills it.
func (r *ring) next() (*sqe, []byte) {
	tail := *r.sqTail
	if tail-atomic.LoadUint32(r.sqHead) >= r.entries {
		return nil, nil
	}
	i := tail & r.sqMask
	b := r.sqes[int(i)*sqeSize : int(i+1)*sqeSize]
	clear(b)
	*(*uint32)(unsafe.Add(r.sqArray, 4*i)) = i
	atomic.StoreUint32(r.sqTail, tail+1)
	r.unsubmit++
	return (*sqe)(unsafe.Pointer(&b[0])), b[48:]
}

// enter submits what is queued and, if wait, waits for a completion. It
// may return early (a signal, or completions to reap before more entries
// can be submitted): the caller looks at the completions and comes back.
func (r *ring) enter(wait bool) error {
	var min, flags uintptr
	if wait {
		min, flags = 1, enterGetEvents
	}
	n, _, errno := syscall.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(r.unsubmit), min, flags, 0, 0)
	switch errno {
	case 0:
		r.unsubmit -= uint32(n)
	case syscall.EINTR, syscall.EAGAIN, syscall.EBUSY:
	default:
		return fmt.Errorf("io_uring_enter: %w", errno)
	}
	return nil
}

// completions calls f for each completion ready, and frees them.
func (r *ring) completions(f func(c cqe)) {
	head := *r.cqHead
	tail := atomic.LoadUint32(r.cqTail)
	for ; head != tail; head++ {
		c := *(*cqe)(unsafe.Add(r.cqes, uintptr(head&r.cqMask)*cqeSize))
		f(c)
	}
	atomic.StoreUint32(r.cqHead, head)
}

func (r *ring) close() {
	if r.sqes != nil {
		unix.Munmap(r.sqes)
	}
	if r.cqMem != nil && len(r.cqMem) > 0 && &r.cqMem[0] != &r.sqMem[0] {
		unix.Munmap(r.cqMem)
	}
	if r.sqMem != nil {
		unix.Munmap(r.sqMem)
	}
	syscall.Close(r.fd)
}
