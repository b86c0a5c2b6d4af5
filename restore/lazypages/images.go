package lazypages

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/gpuwarm/gpuwarm/restore/pageserver"
	"google.golang.org/protobuf/proto"
)

const (
	pageSize       = pageserver.PageSize
	imgCommonMagic = 0x54564319
	mmMagic        = 0x57492820
)

// ErrBadImage is wrapped by every failure to read a task's images.
var ErrBadImage = errors.New("bad CRIU image")

// VMA is one mapping of a task at dump time.
type VMA struct{ Start, End uint64 }

// DecodeMM returns the VMAs of an mm-PID.img, sorted by address.
func DecodeMM(b []byte) ([]VMA, error) {
	if len(b) < 12 || binary.LittleEndian.Uint32(b) != imgCommonMagic || binary.LittleEndian.Uint32(b[4:]) != mmMagic {
		return nil, fmt.Errorf("%w: missing mm magic", ErrBadImage)
	}
	n := binary.LittleEndian.Uint32(b[8:])
	if uint64(n) > uint64(len(b)-12) {
		return nil, fmt.Errorf("%w: mm entry of %d bytes in a %d-byte image", ErrBadImage, n, len(b))
	}
	var e mm.MmEntry
	if err := proto.Unmarshal(b[12:12+n], &e); err != nil {
		return nil, fmt.Errorf("%w: mm entry: %v", ErrBadImage, err)
	}
	vmas := make([]VMA, 0, len(e.Vmas))
	for _, v := range e.Vmas {
		if v.GetEnd() <= v.GetStart() || v.GetStart()%pageSize != 0 || v.GetEnd()%pageSize != 0 {
			return nil, fmt.Errorf("%w: vma %#x-%#x", ErrBadImage, v.GetStart(), v.GetEnd())
		}
		vmas = append(vmas, VMA{v.GetStart(), v.GetEnd()})
	}
	sort.Slice(vmas, func(i, j int) bool { return vmas[i].Start < vmas[j].Start })
	for i := 1; i < len(vmas); i++ {
		if vmas[i].Start < vmas[i-1].End {
			return nil, fmt.Errorf("%w: vmas %#x and %#x overlap", ErrBadImage, vmas[i-1].Start, vmas[i].Start)
		}
	}
	return vmas, nil
}

// Unit is the daemon's piece of work: a run of lazy pages inside one VMA
// whose bytes lie in one chunk of the pages file.
type Unit struct {
	Start, End uint64 // addresses at dump time
	PagesID    uint32
	Off        int64 // offset of Start's page in the pages file
}

// Units cuts a task's lazy pages into units: lazy present entries of its
// pagemap, split at VMA bounds and wherever the pages file crosses a
// multiple of unitSize.
func Units(pm *pageserver.Pagemap, vmas []VMA, unitSize int64) ([]Unit, error) {
	var out []Unit
	var off int64
	v := 0
	for _, e := range pm.Entries {
		if e.Flags&pageserver.PEPresent == 0 {
			if e.Flags&pageserver.PELazy != 0 {
				return nil, fmt.Errorf("%w: lazy pages at %#x are not in the image (dumped for a remote page server?)", ErrBadImage, e.Vaddr)
			}
			continue
		}
		entryOff := off
		off += int64(e.NrPages) * pageSize
		if e.Flags&pageserver.PELazy == 0 {
			continue
		}
		start, end := e.Vaddr, e.End()
		for start < end {
			for v < len(vmas) && vmas[v].End <= start {
				v++
			}
			if v == len(vmas) || vmas[v].Start > start {
				return nil, fmt.Errorf("%w: lazy pages at %#x lie outside every VMA", ErrBadImage, start)
			}
			o := entryOff + int64(start-e.Vaddr)
			stop := min(end, vmas[v].End, start+uint64(unitSize-o%unitSize))
			out = append(out, Unit{Start: start, End: stop, PagesID: pm.PagesID, Off: o})
			start = stop
		}
	}
	return out, nil
}

// loadTask reads the lazy units of task pid from the images directory.
func loadTask(dir string, pid int, unitSize int64) ([]Unit, error) {
	pmb, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("pagemap-%d.img", pid)))
	if err != nil {
		return nil, fmt.Errorf("lazy pages of task %d: %w", pid, err)
	}
	pm, err := pageserver.DecodePagemap(pmb)
	if err != nil {
		return nil, fmt.Errorf("lazy pages of task %d: %w", pid, err)
	}
	mmb, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("mm-%d.img", pid)))
	if err != nil {
		return nil, fmt.Errorf("lazy pages of task %d: %w", pid, err)
	}
	vmas, err := DecodeMM(mmb)
	if err != nil {
		return nil, fmt.Errorf("lazy pages of task %d: %w", pid, err)
	}
	return Units(pm, vmas, unitSize)
}
