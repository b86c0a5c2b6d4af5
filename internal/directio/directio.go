// Package directio writes and reads files with O_DIRECT: data moves
// between memory the process already has and the device, without passing
// through page-cache pages the kernel would first have to allocate (on the
// benchmark VM, allocating them was the largest cost of packing and of
// filling the disk cache).
//
// O_DIRECT wants block-aligned memory, offsets and lengths: callers write
// from block-aligned memory (Pad copies into some); the whole blocks go
// with O_DIRECT and the rest of the last one through the page cache
// (WriteTail). A filesystem that refuses O_DIRECT answers
// EINVAL (errors.Is(err, syscall.EINVAL)); callers then fall back to
// ordinary I/O.
package directio

import (
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Align is the block size buffers, offsets and lengths are aligned to.
const Align = 4096

// Round rounds n up to whole blocks.
func Round(n int) int { return (n + Align - 1) &^ (Align - 1) }

// Aligned returns the largest block-aligned sub-slice of raw that starts
// within its first block, of length n (raw must have n+Align bytes).
func Aligned(raw []byte, n int) []byte {
	off := int(uintptr(unsafe.Pointer(unsafe.SliceData(raw))) & (Align - 1))
	if off != 0 {
		off = Align - off
	}
	return raw[off : off+n]
}

// IsAligned reports whether b starts on a block boundary.
func IsAligned(b []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))%Align == 0
}

var scratch = sync.Pool{New: func() any { return new([]byte) }}

// Pad returns data copied into an aligned scratch buffer padded with zeros
// to whole blocks, and the function that gives the buffer back.
func Pad(data []byte) (padded []byte, done func()) {
	n := Round(len(data))
	sp := scratch.Get().(*[]byte)
	if cap(*sp) < n+Align {
		*sp = make([]byte, n+Align)
	}
	padded = Aligned((*sp)[:cap(*sp)], n)
	copy(padded, data)
	clear(padded[len(data):])
	return padded, func() { scratch.Put(sp) }
}

// OpenNew creates name for O_DIRECT writes; a variable so that tests can
// stand in a filesystem that refuses them.
var OpenNew = func(name string, perm uint32) (int, error) {
	return unix.Open(name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_DIRECT|unix.O_CLOEXEC, perm)
}

// WriteNew creates name and writes data to it, which must start on a block
// boundary (IsAligned; Pad makes a copy that does): its whole blocks with
// O_DIRECT, the rest with WriteTail. If sync, it syncs the file. On failure
// name is removed.
func WriteNew(name string, data []byte, perm uint32, sync bool) error {
	fd, err := OpenNew(name, perm)
	if err != nil {
		return &os.PathError{Op: "open", Path: name, Err: err}
	}
	full := len(data) &^ (Align - 1)
	err = WriteAll(fd, data[:full])
	if err == nil {
		err = WriteTail(fd, data[full:], int64(full))
	}
	if err == nil && sync {
		err = unix.Fsync(fd)
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return &os.PathError{Op: "write", Path: name, Err: err}
	}
	return nil
}

// WriteTail writes tail, the part of a file after its last whole block,
// at off through the page cache: O_DIRECT is turned off for fd first. An
// O_DIRECT write is whole blocks, and writing the last block padded and
// truncating the file back made ext4 free the padding's block again: 3% of
// a pack's CPU, one extra system call per file.
func WriteTail(fd int, tail []byte, off int64) error {
	if len(tail) == 0 {
		return nil
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	if fl&unix.O_DIRECT != 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_DIRECT); err != nil {
			return err
		}
	}
	for len(tail) > 0 {
		n, err := unix.Pwrite(fd, tail, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		tail, off = tail[n:], off+int64(n)
	}
	return nil
}

// WriteAll writes all of b to fd.
func WriteAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
