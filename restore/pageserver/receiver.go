package pageserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/gpuwarm/gpuwarm/manifest"
	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/digest"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"golang.org/x/sync/errgroup"
)

// Received is one pagemap a dump sent, with its pages already in the store.
type Received struct {
	DstID     uint64
	Name      string // pagemap-N.img or pagemap-shmem-N.img
	Pagemap   Pagemap
	PagesName string // pages-N.img
	Chunks    []manifest.Chunk
	Size      int64 // bytes of the pages file
}

// ReceiverOptions tune a Receiver.
type ReceiverOptions struct {
	ChunkSize int // default 1 MiB; a multiple of the page size
	Uploads   int // chunks hashed, compressed and uploaded at once; default GOMAXPROCS
	Logger    *slog.Logger
}

// Receiver is the dump side's page server: it turns the pages CRIU sends
// into chunks in a store. Memory use is bounded by (Uploads+1) chunks.
type Receiver struct {
	st  store.Store
	opt ReceiverOptions
	log *slog.Logger

	mu      sync.Mutex
	maps    []*Received
	nextID  uint32
	known   sync.Map // digest.ID: uploaded or present
	newB    atomic.Int64
	pageB   atomic.Int64
	layout  Layout
	slots   chan struct{}
	uploads errgroup.Group
	// Chunks go into one store batch (a file store syncs once, not per
	// chunk), committed when CRIU closes the session.
	batch store.Batch
}

// NewReceiver returns a receiver storing into st.
func NewReceiver(st store.Store, opt ReceiverOptions) *Receiver {
	if opt.ChunkSize <= 0 {
		opt.ChunkSize = 1 << 20
	}
	opt.ChunkSize = (opt.ChunkSize + PageSize - 1) / PageSize * PageSize
	if opt.Uploads <= 0 {
		opt.Uploads = max(4, runtime.GOMAXPROCS(0))
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	return &Receiver{st: st, opt: opt, log: opt.Logger, slots: make(chan struct{}, opt.Uploads), batch: store.NewBatch(st)}
}

// open is one pagemap being received.
type open struct {
	r   *Received
	buf []byte
}

// Serve handles one CRIU connection until it closes the session. It returns
// nil only if CRIU closed the session properly (PS_IOV_CLOSE) and every
// chunk reached the store.
func (r *Receiver) Serve(ctx context.Context, rw io.ReadWriter) (err error) {
	defer func() {
		if err != nil {
			r.uploads.Wait()
			r.batch.Abort()
		}
	}()
	c := &conn{rw: rw}
	var cur *open
	flush := func() error {
		if cur == nil {
			return nil
		}
		err := r.flushChunk(ctx, cur)
		cur = nil
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := c.readHeader()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: connection closed before PS_IOV_CLOSE: the dump did not finish", ErrProtocol)
			}
			return err
		}
		switch h.Command() {
		case CmdOpen, CmdOpen2:
			if err := flush(); err != nil {
				return err
			}
			if cur, err = r.open(h.DstID); err != nil {
				return err
			}
			if h.Command() == CmdOpen2 {
				if _, err := rw.Write([]byte{0}); err != nil { // no parent images
					return err
				}
			}
		case CmdParent:
			if err := c.writeInt32(0); err != nil {
				return err
			}
		case CmdAdd, CmdAddF, CmdHole:
			flags := h.Flags()
			switch h.Command() {
			case CmdAdd:
				flags = PEPresent
			case CmdHole:
				flags = PEParent
			}
			if cur == nil || cur.r.DstID != h.DstID {
				// Old CRIUs write without opening first.
				if err := flush(); err != nil {
					return err
				}
				if cur, err = r.open(h.DstID); err != nil {
					return err
				}
			}
			if err := r.add(ctx, c, cur, h, flags); err != nil {
				return err
			}
		case CmdClose, CmdForceClose:
			if err := flush(); err != nil {
				return err
			}
			if err := r.uploads.Wait(); err != nil {
				c.writeInt32(-1)
				return err
			}
			if err := r.batch.Commit(ctx); err != nil {
				c.writeInt32(-1)
				return err
			}
			if err := c.writeInt32(0); err != nil {
				return err
			}
			r.mu.Lock()
			r.layout = c.layout
			r.mu.Unlock()
			// CRIU closes its end after reading the status.
			var b [1]byte
			rw.Read(b[:])
			return nil
		default:
			return fmt.Errorf("%w: unexpected command %#x from a dump", ErrProtocol, h.Cmd)
		}
	}
}

func (r *Receiver) open(dst uint64) (*open, error) {
	name, err := PagemapName(dst)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.maps {
		if m.DstID == dst {
			return nil, fmt.Errorf("%w: pagemap %s opened twice", ErrProtocol, name)
		}
	}
	r.nextID++
	rec := &Received{DstID: dst, Name: name, Pagemap: Pagemap{PagesID: r.nextID}, PagesName: fmt.Sprintf("pages-%d.img", r.nextID)}
	r.maps = append(r.maps, rec)
	return &open{r: rec, buf: make([]byte, 0, r.opt.ChunkSize)}, nil
}

func (r *Receiver) add(ctx context.Context, c *conn, o *open, h Header, flags uint32) error {
	if h.NrPages == 0 || h.Vaddr%PageSize != 0 {
		return fmt.Errorf("%w: bad range %#x+%d pages", ErrProtocol, h.Vaddr, h.NrPages)
	}
	pm := &o.r.Pagemap
	if n := len(pm.Entries); n > 0 && h.Vaddr < pm.Entries[n-1].End() {
		return fmt.Errorf("%w: range %#x overlaps or precedes the previous one in %s", ErrProtocol, h.Vaddr, o.r.Name)
	}
	if h.Vaddr+h.NrPages*PageSize < h.Vaddr {
		return fmt.Errorf("%w: range %#x+%d pages wraps", ErrProtocol, h.Vaddr, h.NrPages)
	}
	pm.Entries = append(pm.Entries, Entry{Vaddr: h.Vaddr, NrPages: h.NrPages, Flags: flags})
	if flags&PEPresent == 0 {
		return nil
	}
	left := int64(h.NrPages) * PageSize
	for left > 0 {
		room := int64(cap(o.buf) - len(o.buf))
		n := min(room, left)
		start := len(o.buf)
		o.buf = o.buf[:start+int(n)]
		if _, err := io.ReadFull(c.rw, o.buf[start:]); err != nil {
			return fmt.Errorf("%w: pages of %s cut short: %v", ErrProtocol, o.r.Name, err)
		}
		left -= n
		o.r.Size += n
		r.pageB.Add(n)
		if len(o.buf) == cap(o.buf) {
			if err := r.flushChunk(ctx, o); err != nil {
				return err
			}
		}
	}
	return nil
}

// flushChunk turns the buffered pages into a chunk: hashed, compressed and
// uploaded in the background (bounded), its place in the pagemap's chunk
// list kept.
func (r *Receiver) flushChunk(ctx context.Context, o *open) error {
	if len(o.buf) == 0 {
		return nil
	}
	data := o.buf
	o.buf = make([]byte, 0, r.opt.ChunkSize)
	r.mu.Lock()
	idx := len(o.r.Chunks)
	o.r.Chunks = append(o.r.Chunks, manifest.Chunk{Size: uint32(len(data))})
	r.mu.Unlock()
	select {
	case r.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.uploads.Go(func() error {
		defer func() { <-r.slots }()
		id := digest.Of(data)
		r.mu.Lock()
		o.r.Chunks[idx].ID = id
		r.mu.Unlock()
		if _, dup := r.known.LoadOrStore(id, struct{}{}); dup {
			return nil
		}
		h := store.H(store.Chunk, id)
		if ok, err := store.Has(ctx, r.st, h); err != nil {
			return err
		} else if ok {
			return nil
		}
		blob := chunk.Encode(data)
		if err := r.batch.Put(ctx, h, blob); err != nil {
			return fmt.Errorf("upload page chunk: %w", err)
		}
		r.newB.Add(int64(len(blob)))
		return nil
	})
	return nil
}

// Results returns the received pagemaps, ordered by name.
func (r *Receiver) Results() []*Received {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]*Received(nil), r.maps...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Stats says how many page bytes arrived and how many stored bytes were new.
func (r *Receiver) Stats() (pageBytes, newBytes int64, layout Layout) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pageB.Load(), r.newB.Load(), r.layout
}
