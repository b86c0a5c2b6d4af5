package pageserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync/atomic"
)

// PageSource reads bytes of a snapshot's pages file.
type PageSource interface {
	ReadPages(ctx context.Context, pagesID uint32, off int64, dst []byte) error
}

// Served is a pagemap the Sender can answer for, with each present entry's
// offset in its pages file.
type Served struct {
	pm      *Pagemap
	offsets []int64 // per entry; -1 when not present
}

// NewServed indexes a pagemap.
func NewServed(pm *Pagemap) *Served {
	s := &Served{pm: pm, offsets: make([]int64, len(pm.Entries))}
	var off int64
	for i, e := range pm.Entries {
		if e.Flags&PEPresent != 0 {
			s.offsets[i] = off
			off += int64(e.NrPages) * PageSize
		} else {
			s.offsets[i] = -1
		}
	}
	return s
}

// Locate maps [vaddr, vaddr+n pages) to the pages file: the offset and how
// many pages from vaddr lie in one present entry.
func (s *Served) Locate(vaddr, n uint64) (off int64, pages uint64, err error) {
	es := s.pm.Entries
	i := sort.Search(len(es), func(i int) bool { return es[i].End() > vaddr })
	if i == len(es) || es[i].Vaddr > vaddr {
		return 0, 0, fmt.Errorf("%w: address %#x is outside the pagemap", ErrProtocol, vaddr)
	}
	if s.offsets[i] < 0 {
		return 0, 0, fmt.Errorf("%w: address %#x has no pages in the image (flags %#x)", ErrProtocol, vaddr, es[i].Flags)
	}
	if vaddr%PageSize != 0 {
		return 0, 0, fmt.Errorf("%w: unaligned address %#x", ErrProtocol, vaddr)
	}
	pages = min(n, (es[i].End()-vaddr)/PageSize)
	return s.offsets[i] + int64(vaddr-es[i].Vaddr), pages, nil
}

// MaxReplyPages bounds the pages of one reply (16 MiB).
const MaxReplyPages = 4096

// Observer is told about every page range served (profiles).
type Observer func(pagesID uint32, off int64, n int)

// Sender is the restore side's page server: it answers PS_IOV_GET from a
// snapshot's pages.
type Sender struct {
	maps    map[uint64]*Served // by dst_id
	src     PageSource
	log     *slog.Logger
	Observe Observer

	Requests, Bytes atomic.Int64
}

// NewSender serves the given pagemaps (keyed by dst_id) from src.
func NewSender(maps map[uint64]*Pagemap, src PageSource, log *slog.Logger) *Sender {
	if log == nil {
		log = slog.Default()
	}
	s := &Sender{maps: make(map[uint64]*Served, len(maps)), src: src, log: log}
	for dst, pm := range maps {
		s.maps[dst] = NewServed(pm)
	}
	return s
}

// Serve answers one connection until the peer closes it.
func (s *Sender) Serve(ctx context.Context, rw io.ReadWriter) error {
	c := &conn{rw: rw}
	var buf []byte
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := c.readHeader()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch h.Command() {
		case CmdGet:
			// A GET's dst_id is the task's virtual pid itself, not an
			// encoded pagemap id (criu/page-xfer.c: pstree_item_by_virt).
			sv, ok := s.maps[EncodeDst(TypePID, h.DstID)]
			if !ok {
				return fmt.Errorf("%w: request for pages of unknown pid %d", ErrProtocol, h.DstID)
			}
			if h.NrPages == 0 {
				return fmt.Errorf("%w: request for 0 pages", ErrProtocol)
			}
			// Like CRIU's own server, answer at most up to the end of the
			// entry holding vaddr, and bound one reply's memory.
			off, n, err := sv.Locate(h.Vaddr, min(h.NrPages, MaxReplyPages))
			if err != nil {
				return err
			}
			size := int(n) * PageSize
			if cap(buf) < size {
				buf = make([]byte, size)
			}
			buf = buf[:size]
			if err := s.src.ReadPages(ctx, sv.pm.PagesID, off, buf); err != nil {
				return fmt.Errorf("read pages %#x+%d of pid %d: %w", h.Vaddr, n, h.DstID, err)
			}
			if s.Observe != nil {
				s.Observe(sv.pm.PagesID, off, size)
			}
			if err := c.writeHeader(Header{Cmd: PEPresent<<16 | CmdAddF, NrPages: n, Vaddr: h.Vaddr, DstID: h.DstID}); err != nil {
				return err
			}
			if _, err := rw.Write(buf); err != nil {
				return err
			}
			s.Requests.Add(1)
			s.Bytes.Add(int64(size))
		case CmdClose, CmdForceClose:
			return c.writeInt32(0)
		default:
			return fmt.Errorf("%w: unexpected command %#x from a restore", ErrProtocol, h.Cmd)
		}
	}
}
