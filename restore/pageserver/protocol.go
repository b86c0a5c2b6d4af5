// Package pageserver implements gpuwarm's side of CRIU's page-server
// protocol, both directions:
//
//   - Receiver takes the pages of a dump (`criu dump --page-server`) and
//     streams them into the store as content-addressed chunks, so a snapshot
//     never needs a staging copy of its memory on disk.
//   - Sender answers the page requests of CRIU's lazy-pages daemon
//     (`criu lazy-pages --page-server`) from a snapshot's pages, read through
//     the block cache, so a lazily restored process faults its memory in
//     from the worker's cache.
//
// The wire format is CRIU's (criu/page-xfer.c): a fixed header
//
//	u32 cmd (low 16 bits command, high 16 bits pagemap flags)
//	nr_pages, u64 vaddr, u64 dst_id (pagemap type in the low 8 bits, id above)
//
// followed, for pages that are present, by nr_pages*4096 bytes. CRIU has
// sent nr_pages as u32 (24-byte header) and, later, as u64 after 4 bytes of
// padding (32-byte header); the first header of a connection tells which.
package pageserver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

var debugHeaders = os.Getenv("GPUWARM_PS_DEBUG") != ""

// Commands.
const (
	CmdAdd        = 1
	CmdHole       = 2
	CmdOpen       = 3
	CmdOpen2      = 4
	CmdParent     = 5
	CmdAddF       = 6
	CmdGet        = 7
	CmdClose      = 0x1023
	CmdForceClose = 0x1024
)

// Pagemap types in dst_id.
const (
	TypePID   = 1
	TypeShmem = 2
)

// MaxPagesPerRequest bounds one header's page count (64 GiB).
const MaxPagesPerRequest = 1 << 24

// Header is one protocol header.
type Header struct {
	Cmd     uint32
	NrPages uint64
	Vaddr   uint64
	DstID   uint64
}

// Command is the command part of Cmd.
func (h Header) Command() uint32 { return h.Cmd & 0xffff }

// Flags is the pagemap-flags part of Cmd.
func (h Header) Flags() uint32 { return h.Cmd >> 16 }

// Layout is the header encoding of one connection.
type Layout int

const (
	LayoutUnknown Layout = iota
	Layout32             // u32 nr_pages, 24 bytes
	Layout64             // u64 nr_pages after padding, 32 bytes
)

// Size is the header size in bytes.
func (l Layout) Size() int {
	if l == Layout64 {
		return 32
	}
	return 24
}

// ErrProtocol is wrapped by every malformed-input error.
var ErrProtocol = errors.New("page-server protocol error")

// DecodeType splits dst_id into a pagemap type and id, accepting the
// legacy type numbers older CRIUs sent.
func DecodeType(dst uint64) (typ int, id uint64, err error) {
	switch dst & 0xff {
	case 10, 11, 16, 17, TypePID:
		return TypePID, dst >> 8, nil
	case 27, 28, 29, 32, 33, 34, TypeShmem:
		return TypeShmem, dst >> 8, nil
	}
	return 0, 0, fmt.Errorf("%w: unknown pagemap type %d in dst_id %#x", ErrProtocol, dst&0xff, dst)
}

// EncodeDst builds a dst_id.
func EncodeDst(typ int, id uint64) uint64 { return id<<8 | uint64(typ) }

// PagemapName is the image file a dst_id's pagemap lives in.
func PagemapName(dst uint64) (string, error) {
	typ, id, err := DecodeType(dst)
	if err != nil {
		return "", err
	}
	if typ == TypeShmem {
		return fmt.Sprintf("pagemap-shmem-%d.img", id), nil
	}
	return fmt.Sprintf("pagemap-%d.img", id), nil
}

// conn reads and writes headers of one layout.
type conn struct {
	rw     io.ReadWriter
	layout Layout
	buf    [32]byte
}

// readHeader reads one header; io.EOF means the peer closed cleanly
// between headers.
func (c *conn) readHeader() (Header, error) {
	var h Header
	if _, err := io.ReadFull(c.rw, c.buf[:24]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return h, fmt.Errorf("%w: short header: %v", ErrProtocol, err)
		}
		return h, err
	}
	b := c.buf[:]
	if c.layout == LayoutUnknown {
		c.layout = detect(b[:24])
		if debugHeaders {
			fmt.Fprintf(os.Stderr, "pageserver: first header % x -> layout %d\n", b[:24], c.layout)
		}
	}
	if c.layout == Layout64 {
		if _, err := io.ReadFull(c.rw, c.buf[24:32]); err != nil {
			return h, fmt.Errorf("%w: short header: %v", ErrProtocol, err)
		}
		h = Header{Cmd: binary.LittleEndian.Uint32(b), NrPages: binary.LittleEndian.Uint64(b[8:]),
			Vaddr: binary.LittleEndian.Uint64(b[16:]), DstID: binary.LittleEndian.Uint64(b[24:])}
	} else {
		h = Header{Cmd: binary.LittleEndian.Uint32(b), NrPages: uint64(binary.LittleEndian.Uint32(b[4:])),
			Vaddr: binary.LittleEndian.Uint64(b[8:]), DstID: binary.LittleEndian.Uint64(b[16:])}
	}
	if h.NrPages > MaxPagesPerRequest {
		return h, fmt.Errorf("%w: %d pages in one request (limit %d)", ErrProtocol, h.NrPages, MaxPagesPerRequest)
	}
	return h, nil
}

// detect tells the layout from a connection's first 24 bytes. Every first
// command names a pagemap (dst_id != 0): with 32-bit counts dst_id is bytes
// 16-24; with 64-bit counts those bytes are the vaddr, zero for OPEN/PARENT,
// and bytes 4-8 are padding where a GET's non-zero 32-bit count would be.
//
// A session that closes before opening anything (a failed dump) is all
// zeros either way: answer it as 24 bytes; with 32, the 8 bytes left unread
// are drained when the peer hangs up.
func detect(b []byte) Layout {
	cmd := binary.LittleEndian.Uint32(b) & 0xffff
	if cmd == CmdClose || cmd == CmdForceClose {
		return Layout32
	}
	if cmd == CmdGet {
		return detectGet(b)
	}
	if binary.LittleEndian.Uint64(b[16:]) == 0 {
		return Layout64
	}
	return Layout32
}

// detectGet tells the layout of a GET (the first request of CRIU's
// lazy-pages daemon), whose 4 bytes of padding in the 64-bit layout CRIU
// 4.2 leaves uninitialised (seen non-zero). A GET names a task by pid
// (below 2^22) and a page-aligned address: with 32-bit counts bytes 8-16
// are the address and 16-24 the pid; with 64-bit counts 8-16 are the count
// and 16-24 the address.
func detectGet(b []byte) Layout {
	if binary.LittleEndian.Uint32(b[4:]) == 0 {
		return Layout64 // a 32-bit GET of no pages is no request
	}
	x, y := binary.LittleEndian.Uint64(b[8:]), binary.LittleEndian.Uint64(b[16:])
	aligned := func(v uint64) bool { return v != 0 && v%PageSize == 0 }
	switch {
	case aligned(y) && !aligned(x):
		return Layout64
	case aligned(x) && !aligned(y):
		return Layout32
	case aligned(x) && aligned(y):
		// A pid that is a multiple of 4096 and a count that is too.
		if x <= MaxPagesPerRequest && y >= 1<<22 {
			return Layout64
		}
	}
	return Layout32
}

func (c *conn) writeHeader(h Header) error {
	b := c.buf[:]
	clear(b)
	binary.LittleEndian.PutUint32(b, h.Cmd)
	if c.layout == Layout64 {
		binary.LittleEndian.PutUint64(b[8:], h.NrPages)
		binary.LittleEndian.PutUint64(b[16:], h.Vaddr)
		binary.LittleEndian.PutUint64(b[24:], h.DstID)
	} else {
		binary.LittleEndian.PutUint32(b[4:], uint32(h.NrPages))
		binary.LittleEndian.PutUint64(b[8:], h.Vaddr)
		binary.LittleEndian.PutUint64(b[16:], h.DstID)
	}
	_, err := c.rw.Write(b[:c.layout.Size()])
	return err
}

func (c *conn) writeInt32(v int32) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(v))
	_, err := c.rw.Write(b[:])
	return err
}
