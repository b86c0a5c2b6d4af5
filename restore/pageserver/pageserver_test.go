package pageserver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/gpuwarm/gpuwarm/manifest/chunk"
	"github.com/gpuwarm/gpuwarm/manifest/store"
	"github.com/gpuwarm/gpuwarm/manifest/store/filestore"
)

// fakeDump plays CRIU's dump side of the protocol.
type fakeDump struct {
	c *conn
}

func (f *fakeDump) send(t *testing.T, h Header, data []byte) {
	t.Helper()
	if err := f.c.writeHeader(h); err != nil {
		t.Fatal(err)
	}
	if data != nil {
		if _, err := f.c.rw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
}

func pages(seed uint64, n int) []byte {
	b := make([]byte, n*PageSize)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

func runDump(t *testing.T, layout Layout) {
	st, _ := filestore.Open(t.TempDir())
	r := NewReceiver(st, ReceiverOptions{ChunkSize: 64 << 10})
	a, b := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- r.Serve(context.Background(), b) }()
	f := &fakeDump{c: &conn{rw: a, layout: layout}}
	dst := EncodeDst(TypePID, 1)
	p1, p2 := pages(1, 20), pages(2, 7)
	f.send(t, Header{Cmd: CmdOpen2, DstID: dst}, nil)
	var parent [1]byte
	io.ReadFull(a, parent[:])
	f.send(t, Header{Cmd: PEPresent<<16 | CmdAddF, NrPages: 20, Vaddr: 0x400000, DstID: dst}, p1)
	f.send(t, Header{Cmd: PEParent<<16 | CmdAddF, NrPages: 3, Vaddr: 0x500000, DstID: dst}, nil)
	f.send(t, Header{Cmd: (PEPresent|PELazy)<<16 | CmdAddF, NrPages: 7, Vaddr: 0x7f0000000000, DstID: dst}, p2)
	shm := EncodeDst(TypeShmem, 99)
	f.send(t, Header{Cmd: CmdOpen2, DstID: shm}, nil)
	io.ReadFull(a, parent[:])
	f.send(t, Header{Cmd: PEPresent<<16 | CmdAddF, NrPages: 1, Vaddr: 0, DstID: shm}, p1[:PageSize])
	f.send(t, Header{Cmd: CmdClose}, nil)
	var status [4]byte
	if _, err := io.ReadFull(a, status[:]); err != nil || binary.LittleEndian.Uint32(status[:]) != 0 {
		t.Fatalf("close status %v %v", status, err)
	}
	a.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	res := r.Results()
	if len(res) != 2 || res[0].Name != "pagemap-1.img" || res[1].Name != "pagemap-shmem-99.img" {
		t.Fatalf("results %+v", res)
	}
	pm := res[0]
	if len(pm.Pagemap.Entries) != 3 || pm.Size != 27*PageSize || pm.Pagemap.Entries[2].Flags != PEPresent|PELazy {
		t.Fatalf("pagemap %+v size %d", pm.Pagemap, pm.Size)
	}
	// The chunks hold exactly the pages, in order.
	var got []byte
	for _, c := range pm.Chunks {
		blob, err := st.Get(context.Background(), store.H(store.Chunk, c.ID), 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		d, err := chunk.Decode(blob, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, d...)
	}
	if !bytes.Equal(got, append(append([]byte{}, p1...), p2...)) {
		t.Fatal("stored pages differ from the sent ones")
	}
	// The pagemap image round-trips through CRIU's encoding.
	back, err := DecodePagemap(pm.Pagemap.Encode())
	if err != nil || len(back.Entries) != 3 || back.PagesID != pm.Pagemap.PagesID {
		t.Fatalf("pagemap image: %v %+v", err, back)
	}
	if _, _, l := r.Stats(); l != layout {
		t.Fatalf("detected layout %v, want %v", l, layout)
	}
}

func TestReceiverBothLayouts(t *testing.T) {
	t.Run("u32", func(t *testing.T) { runDump(t, Layout32) })
	t.Run("u64", func(t *testing.T) { runDump(t, Layout64) })
}

func serveBytes(t *testing.T, serve func(io.ReadWriter) error, in []byte) error {
	t.Helper()
	rw := &rwBuf{r: bytes.NewReader(in)}
	done := make(chan error, 1)
	go func() { done <- serve(rw) }()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("server hung on bad input")
		return nil
	}
}

type rwBuf struct {
	r *bytes.Reader
	w bytes.Buffer
}

func (b *rwBuf) Read(p []byte) (int, error)  { return b.r.Read(p) }
func (b *rwBuf) Write(p []byte) (int, error) { return b.w.Write(p) }

func hdr(l Layout, h Header) []byte {
	var b bytes.Buffer
	c := &conn{rw: &struct {
		io.Reader
		io.Writer
	}{nil, &b}, layout: l}
	c.writeHeader(h)
	return b.Bytes()
}

func TestReceiverRejects(t *testing.T) {
	st, _ := filestore.Open(t.TempDir())
	dst := EncodeDst(TypePID, 1)
	open := hdr(Layout32, Header{Cmd: CmdOpen2, DstID: dst})
	cases := map[string][]byte{
		"empty":           nil,
		"short header":    open[:10],
		"unknown command": append(append([]byte{}, open...), hdr(Layout32, Header{Cmd: 0x77, DstID: dst})...),
		"get in a dump":   append(append([]byte{}, open...), hdr(Layout32, Header{Cmd: CmdGet, NrPages: 1, DstID: dst})...),
		"short pages":     append(append(append([]byte{}, open...), hdr(Layout32, Header{Cmd: PEPresent<<16 | CmdAddF, NrPages: 2, Vaddr: 0x1000, DstID: dst})...), make([]byte, 5000)...),
		"unaligned":       append(append([]byte{}, open...), hdr(Layout32, Header{Cmd: PEParent<<16 | CmdAddF, NrPages: 1, Vaddr: 0x1001, DstID: dst})...),
		"bad type":        hdr(Layout32, Header{Cmd: CmdOpen2, DstID: 0x155}),
		"huge request":    append(append([]byte{}, open...), hdr(Layout32, Header{Cmd: PEPresent<<16 | CmdAddF, NrPages: 1 << 30, Vaddr: 0x1000, DstID: dst})...),
		"overlap": append(append(append([]byte{}, open...), hdr(Layout32, Header{Cmd: PEParent<<16 | CmdAddF, NrPages: 4, Vaddr: 0x4000, DstID: dst})...),
			hdr(Layout32, Header{Cmd: PEParent<<16 | CmdAddF, NrPages: 1, Vaddr: 0x5000, DstID: dst})...),
		"no close": append(append([]byte{}, open...), hdr(Layout32, Header{Cmd: PEParent<<16 | CmdAddF, NrPages: 1, Vaddr: 0x1000, DstID: dst})...),
	}
	for name, in := range cases {
		r := NewReceiver(st, ReceiverOptions{})
		err := serveBytes(t, func(rw io.ReadWriter) error { return r.Serve(context.Background(), rw) }, in)
		if err == nil {
			t.Errorf("%s: accepted", name)
		} else if name != "empty" && !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: want ErrProtocol, got %v", name, err)
		}
	}
}

type memSource map[uint32][]byte

func (m memSource) ReadPages(ctx context.Context, id uint32, off int64, dst []byte) error {
	b, ok := m[id]
	if !ok || off+int64(len(dst)) > int64(len(b)) {
		return errors.New("out of range")
	}
	copy(dst, b[off:])
	return nil
}

func TestSender(t *testing.T) {
	p := pages(3, 10)
	pm := &Pagemap{PagesID: 5, Entries: []Entry{
		{Vaddr: 0x10000, NrPages: 4, Flags: PEPresent},
		{Vaddr: 0x20000, NrPages: 2, Flags: PEParent},
		{Vaddr: 0x30000, NrPages: 6, Flags: PEPresent | PELazy},
	}}
	dst := EncodeDst(TypePID, 7)
	const pid = 7 // GETs name the task by its pid
	for _, layout := range []Layout{Layout32, Layout64} {
		s := NewSender(map[uint64]*Pagemap{dst: pm}, memSource{5: p}, nil)
		in := append(hdr(layout, Header{Cmd: CmdGet, NrPages: 10, Vaddr: 0x31000, DstID: pid}), hdr(layout, Header{Cmd: CmdClose})...)
		rw := &rwBuf{r: bytes.NewReader(in)}
		if err := s.Serve(context.Background(), rw); err != nil {
			t.Fatal(err)
		}
		out := rw.w.Bytes()
		c := &conn{rw: &rwBuf{r: bytes.NewReader(out)}, layout: layout}
		h, err := c.readHeader()
		if err != nil || h.Command() != CmdAddF || h.Flags() != PEPresent || h.NrPages != 5 || h.Vaddr != 0x31000 {
			t.Fatalf("reply header %+v %v (clipped to the entry: 5 pages)", h, err)
		}
		data := out[layout.Size() : layout.Size()+5*PageSize]
		// Entry 3 starts after entry 1's 4 pages; vaddr is its 2nd page.
		if !bytes.Equal(data, p[5*PageSize:10*PageSize]) {
			t.Fatal("wrong pages served")
		}
	}
	// CRIU 4.2 leaves the 64-bit layout's padding uninitialised.
	for _, pad := range []uint32{0, 0x5a5a, 0xffffffff} {
		h64 := hdr(Layout64, Header{Cmd: CmdGet, NrPages: 10, Vaddr: 0x7ff2221a8000, DstID: pid})
		binary.LittleEndian.PutUint32(h64[4:], pad)
		if l := detect(h64[:24]); l != Layout64 {
			t.Errorf("GET with padding %#x: detected %v", pad, l)
		}
	}
	for _, h := range []Header{{Cmd: CmdGet, NrPages: 10, Vaddr: 0x400000, DstID: 4096}, {Cmd: CmdGet, NrPages: 1, Vaddr: 0x7ff2221a8000, DstID: 31337}} {
		if l := detect(hdr(Layout32, h)[:24]); l != Layout32 {
			t.Errorf("32-bit GET %+v: detected %v", h, l)
		}
	}
	bad := map[string]Header{
		"unknown pid":     {Cmd: CmdGet, NrPages: 1, Vaddr: 0x10000, DstID: 8},
		"outside":         {Cmd: CmdGet, NrPages: 1, Vaddr: 0x90000, DstID: pid},
		"in parent":       {Cmd: CmdGet, NrPages: 1, Vaddr: 0x20000, DstID: pid},
		"zero pages":      {Cmd: CmdGet, NrPages: 0, Vaddr: 0x10000, DstID: pid},
		"unknown command": {Cmd: 0x99, DstID: dst},
	}
	for name, h := range bad {
		s := NewSender(map[uint64]*Pagemap{dst: pm}, memSource{5: p}, nil)
		err := serveBytes(t, func(rw io.ReadWriter) error { return s.Serve(context.Background(), rw) }, hdr(Layout32, h))
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: want ErrProtocol, got %v", name, err)
		}
	}
	s := NewSender(map[uint64]*Pagemap{dst: pm}, memSource{5: p}, nil)
	if err := serveBytes(t, func(rw io.ReadWriter) error { return s.Serve(context.Background(), rw) }, hdr(Layout32, bad["outside"])[:7]); !errors.Is(err, ErrProtocol) {
		t.Errorf("short header: %v", err)
	}
}

func FuzzReceiver(f *testing.F) {
	dst := EncodeDst(TypePID, 1)
	f.Add(append(hdr(Layout32, Header{Cmd: CmdOpen2, DstID: dst}), hdr(Layout32, Header{Cmd: CmdClose})...))
	f.Add(append(hdr(Layout64, Header{Cmd: CmdOpen2, DstID: dst}), hdr(Layout64, Header{Cmd: PEPresent<<16 | CmdAddF, NrPages: 1, Vaddr: 0x1000, DstID: dst})...))
	st, _ := filestore.Open(f.TempDir())
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReceiver(st, ReceiverOptions{ChunkSize: PageSize})
		r.Serve(context.Background(), &rwBuf{r: bytes.NewReader(in)})
	})
}

func FuzzSender(f *testing.F) {
	dst := EncodeDst(TypePID, 7)
	f.Add(hdr(Layout32, Header{Cmd: CmdGet, NrPages: 3, Vaddr: 0x10000, DstID: 7}))
	f.Add(hdr(Layout64, Header{Cmd: CmdGet, NrPages: 3, Vaddr: 0x11000, DstID: 7}))
	pm := &Pagemap{PagesID: 1, Entries: []Entry{{Vaddr: 0x10000, NrPages: 4, Flags: PEPresent}}}
	src := memSource{1: pages(1, 4)}
	f.Fuzz(func(t *testing.T, in []byte) {
		s := NewSender(map[uint64]*Pagemap{dst: pm}, src, nil)
		s.Serve(context.Background(), &rwBuf{r: bytes.NewReader(in)})
	})
}

func FuzzDecodePagemap(f *testing.F) {
	f.Add((&Pagemap{PagesID: 1, Entries: []Entry{{Vaddr: 0x1000, NrPages: 2, Flags: PEPresent}}}).Encode())
	f.Fuzz(func(t *testing.T, in []byte) {
		pm, err := DecodePagemap(in)
		if err != nil {
			return
		}
		if _, err := DecodePagemap(pm.Encode()); err != nil {
			t.Fatalf("re-encoded pagemap does not decode: %v", err)
		}
	})
}
