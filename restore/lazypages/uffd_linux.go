package lazypages

import (
	"encoding/binary"
	"errors"
	"syscall"
	"unsafe"
)

// userfaultfd ABI (include/uapi/linux/userfaultfd.h).
const (
	uffdAPI = 0xAA

	ioctlAPI        = 0xC018AA3F // UFFDIO_API, struct uffdio_api
	ioctlRegister   = 0xC020AA00 // UFFDIO_REGISTER, struct uffdio_register
	ioctlUnregister = 0x8010AA01 // UFFDIO_UNREGISTER, struct uffdio_range
	ioctlWake       = 0x8010AA02 // UFFDIO_WAKE, struct uffdio_range
	ioctlCopy       = 0xC028AA03 // UFFDIO_COPY, struct uffdio_copy
	ioctlZeropage   = 0xC020AA04 // UFFDIO_ZEROPAGE, struct uffdio_zeropage

	registerModeMissing = 1

	eventPagefault = 0x12
	eventFork      = 0x13
	eventRemap     = 0x14
	eventRemove    = 0x15
	eventUnmap     = 0x16

	msgSize = 32 // sizeof(struct uffd_msg)

	sysUserfaultfd = 323 // x86-64
)

// msg is a decoded struct uffd_msg.
type msg struct {
	event uint8
	a, b  uint64 // pagefault: flags, address; remap: from, to; remove: start, end; fork: ufd in a
	c     uint64 // remap: len
}

func decodeMsg(b []byte) msg {
	return msg{
		event: b[0],
		a:     binary.LittleEndian.Uint64(b[8:]),
		b:     binary.LittleEndian.Uint64(b[16:]),
		c:     binary.LittleEndian.Uint64(b[24:]),
	}
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}

type uffdRange struct{ start, len uint64 }

type uffdCopy struct {
	dst, src, len, mode uint64
	copied              int64
}

type uffdZero struct {
	rng      uffdRange
	mode     uint64
	zeropage int64
}

// errGone says the target process exited (its mm is gone).
var errGone = errors.New("process exited")

// copyPages fills [dst, dst+len(src)) with src. Pages that are already
// present are skipped (another copy got there first). It returns errGone
// when the process has exited, syscall.EAGAIN when the address space is
// changing under an unread event (retry after reading it) and
// syscall.ENOENT when the range is no longer registered.
func copyPages(fd int, dst uint64, src []byte) error {
	for len(src) > 0 {
		c := uffdCopy{dst: dst, src: uint64(uintptr(unsafe.Pointer(&src[0]))), len: uint64(len(src))}
		err := ioctl(fd, ioctlCopy, unsafe.Pointer(&c))
		if err == nil {
			return nil
		}
		switch {
		case c.copied > 0:
			n := uint64(c.copied) // partial: go on after what landed
			dst, src = dst+n, src[n:]
		case c.copied == -int64(syscall.EEXIST) || errors.Is(err, syscall.EEXIST):
			dst, src = dst+pageSize, src[pageSize:] // present already
		case errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOSPC):
			return errGone
		default:
			return err
		}
	}
	return nil
}

func zeroPage(fd int, addr uint64) error {
	z := uffdZero{rng: uffdRange{addr, pageSize}}
	err := ioctl(fd, ioctlZeropage, unsafe.Pointer(&z))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.EEXIST):
		return wake(fd, addr, pageSize)
	case errors.Is(err, syscall.ESRCH) || errors.Is(err, syscall.ENOSPC):
		return errGone
	}
	return err
}

func wake(fd int, addr, n uint64) error {
	r := uffdRange{addr, n}
	return ioctl(fd, ioctlWake, unsafe.Pointer(&r))
}

func unregister(fd int, addr, n uint64) error {
	r := uffdRange{addr, n}
	err := ioctl(fd, ioctlUnregister, unsafe.Pointer(&r))
	if errors.Is(err, syscall.ENOMEM) {
		return errGone
	}
	return err
}

// Non-cooperative event features, as CRIU asks for them.
const (
	FeatureEventFork   = 1 << 1
	FeatureEventRemap  = 1 << 2
	FeatureEventRemove = 1 << 3
	FeatureEventUnmap  = 1 << 6
)

// Open returns a new userfaultfd (non-blocking, close-on-exec) with the API
// handshake done, asking for the given event features. gpuwarm itself only
// receives CRIU's; this serves tests.
func Open(features uint64) (int, error) {
	fd, _, e := syscall.Syscall(sysUserfaultfd, uintptr(syscall.O_CLOEXEC|syscall.O_NONBLOCK), 0, 0)
	if e != 0 {
		return -1, e
	}
	api := struct{ api, features, ioctls uint64 }{api: uffdAPI, features: features}
	if err := ioctl(int(fd), ioctlAPI, unsafe.Pointer(&api)); err != nil {
		syscall.Close(int(fd))
		return -1, err
	}
	return int(fd), nil
}

// Register asks fd to report missing-page faults in [addr, addr+n).
func Register(fd int, addr, n uint64) error {
	reg := struct {
		rng          uffdRange
		mode, ioctls uint64
	}{rng: uffdRange{addr, n}, mode: registerModeMissing}
	return ioctl(fd, ioctlRegister, unsafe.Pointer(&reg))
}
