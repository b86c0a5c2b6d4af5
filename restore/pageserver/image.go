package pageserver

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"google.golang.org/protobuf/proto"
)

// CRIU image magics (criu/include/magic.h).
const (
	imgCommonMagic = 0x54564319
	pagemapMagic   = 0x56084025
)

// Pagemap entry flags (criu/include/pagemap.h).
const (
	PEParent  = 1 << 0
	PELazy    = 1 << 1
	PEPresent = 1 << 2
)

// PageSize is the page size of the images (x86-64).
const PageSize = 4096

// Entry is one pagemap entry: nrPages pages from Vaddr.
type Entry struct {
	Vaddr   uint64
	NrPages uint64
	Flags   uint32
}

// End is the address past the entry.
func (e Entry) End() uint64 { return e.Vaddr + e.NrPages*PageSize }

// Pagemap is a decoded pagemap image: which pages file holds the data and
// the entries, in address order. Present entries' pages lie back to back in
// the pages file, in entry order.
type Pagemap struct {
	PagesID uint32
	Entries []Entry
}

// ErrBadImage is wrapped by every pagemap decoding failure.
var ErrBadImage = errors.New("bad pagemap image")

// MaxEntries bounds a decoded pagemap.
const MaxEntries = 1 << 24

// DecodePagemap parses a CRIU pagemap image.
func DecodePagemap(b []byte) (*Pagemap, error) {
	if len(b) < 8 || binary.LittleEndian.Uint32(b) != imgCommonMagic || binary.LittleEndian.Uint32(b[4:]) != pagemapMagic {
		return nil, fmt.Errorf("%w: missing pagemap magic", ErrBadImage)
	}
	b = b[8:]
	next := func() ([]byte, error) {
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: truncated entry size", ErrBadImage)
		}
		n := binary.LittleEndian.Uint32(b)
		if uint64(n) > uint64(len(b)-4) {
			return nil, fmt.Errorf("%w: entry of %d bytes past the end", ErrBadImage, n)
		}
		e := b[4 : 4+n]
		b = b[4+n:]
		return e, nil
	}
	raw, err := next()
	if err != nil {
		return nil, err
	}
	var head pagemap.PagemapHead
	if err := proto.Unmarshal(raw, &head); err != nil {
		return nil, fmt.Errorf("%w: head: %v", ErrBadImage, err)
	}
	pm := &Pagemap{PagesID: head.GetPagesId()}
	var prevEnd uint64
	for len(b) > 0 {
		if len(pm.Entries) >= MaxEntries {
			return nil, fmt.Errorf("%w: more than %d entries", ErrBadImage, MaxEntries)
		}
		raw, err := next()
		if err != nil {
			return nil, err
		}
		var pe pagemap.PagemapEntry
		if err := proto.Unmarshal(raw, &pe); err != nil {
			return nil, fmt.Errorf("%w: entry %d: %v", ErrBadImage, len(pm.Entries), err)
		}
		e := Entry{Vaddr: pe.GetVaddr(), NrPages: uint64(pe.GetCompatNrPages()), Flags: pe.GetFlags()}
		if pe.NrPages != nil {
			e.NrPages = pe.GetNrPages()
		}
		if pe.Flags == nil {
			e.Flags = PEPresent
			if pe.GetInParent() {
				e.Flags = PEParent
			}
		}
		if e.Vaddr%PageSize != 0 || e.NrPages == 0 || e.NrPages > 1<<36 || e.Vaddr < prevEnd || e.End() < e.Vaddr {
			return nil, fmt.Errorf("%w: entry %d (%#x, %d pages) unaligned, empty, overlapping or out of order", ErrBadImage, len(pm.Entries), e.Vaddr, e.NrPages)
		}
		prevEnd = e.End()
		pm.Entries = append(pm.Entries, e)
	}
	return pm, nil
}

// Encode writes the pagemap image as CRIU does.
func (pm *Pagemap) Encode() []byte {
	b := make([]byte, 8, 64+24*len(pm.Entries))
	binary.LittleEndian.PutUint32(b, imgCommonMagic)
	binary.LittleEndian.PutUint32(b[4:], pagemapMagic)
	put := func(m proto.Message) {
		raw, err := proto.Marshal(m)
		if err != nil {
			panic(err) // only required fields, always set
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(raw)))
		b = append(b, raw...)
	}
	put(&pagemap.PagemapHead{PagesId: proto.Uint32(pm.PagesID)})
	for _, e := range pm.Entries {
		// As CRIU 4 writes it: the 32-bit count, and the 64-bit one only
		// when the count does not fit.
		pe := &pagemap.PagemapEntry{Vaddr: proto.Uint64(e.Vaddr), Flags: proto.Uint32(e.Flags)}
		if e.NrPages <= 0xffffffff {
			pe.CompatNrPages = proto.Uint32(uint32(e.NrPages))
		} else {
			pe.CompatNrPages = proto.Uint32(0)
			pe.NrPages = proto.Uint64(e.NrPages)
		}
		put(pe)
	}
	return b
}

// PresentBytes is the size of the pages file the pagemap describes.
func (pm *Pagemap) PresentBytes() uint64 {
	var n uint64
	for _, e := range pm.Entries {
		if e.Flags&PEPresent != 0 {
			n += e.NrPages * PageSize
		}
	}
	return n
}
