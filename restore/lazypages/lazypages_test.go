package lazypages

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"github.com/gpuwarm/gpuwarm/restore/pageserver"
	"google.golang.org/protobuf/proto"
)

func encodeMM(vmas []VMA) []byte {
	e := &mm.MmEntry{MmStartCode: proto.Uint64(0), MmEndCode: proto.Uint64(0), MmStartData: proto.Uint64(0), MmEndData: proto.Uint64(0),
		MmStartStack: proto.Uint64(0), MmStartBrk: proto.Uint64(0), MmBrk: proto.Uint64(0), MmArgStart: proto.Uint64(0),
		MmArgEnd: proto.Uint64(0), MmEnvStart: proto.Uint64(0), MmEnvEnd: proto.Uint64(0), ExeFileId: proto.Uint32(0)}
	for _, v := range vmas {
		e.Vmas = append(e.Vmas, &vma.VmaEntry{Start: proto.Uint64(v.Start), End: proto.Uint64(v.End), Pgoff: proto.Uint64(0),
			Shmid: proto.Uint64(0), Prot: proto.Uint32(3), Flags: proto.Uint32(0x22), Status: proto.Uint32(0), Fd: proto.Int64(-1)})
	}
	raw, err := proto.Marshal(e)
	if err != nil {
		panic(err)
	}
	b := binary.LittleEndian.AppendUint32(nil, imgCommonMagic)
	b = binary.LittleEndian.AppendUint32(b, mmMagic)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(raw)))
	return append(b, raw...)
}

func TestUnitsCutAtVMAsAndChunks(t *testing.T) {
	const P = pageSize
	pm := &pageserver.Pagemap{PagesID: 3, Entries: []pageserver.Entry{
		{Vaddr: 0x10000, NrPages: 2, Flags: pageserver.PEPresent},                      // eager: offset 0..2P
		{Vaddr: 0x20000, NrPages: 6, Flags: pageserver.PEPresent | pageserver.PELazy},  // crosses a VMA end at 0x23000
		{Vaddr: 0x40000, NrPages: 2, Flags: pageserver.PEParent},                       // not in this file
		{Vaddr: 0x50000, NrPages: 10, Flags: pageserver.PEPresent | pageserver.PELazy}, // crosses a 4-page unit bound
	}}
	vmas := []VMA{{0x10000, 0x12000}, {0x20000, 0x23000}, {0x23000, 0x30000}, {0x50000, 0x60000}}
	us, err := Units(pm, vmas, 4*P)
	if err != nil {
		t.Fatal(err)
	}
	// Recompute the expectation from the rules rather than by hand:
	// every unit inside one VMA and one unitSize-aligned stretch of the file.
	var total uint64
	for _, u := range us {
		total += u.End - u.Start
		if u.Off/(4*P) != (u.Off+int64(u.End-u.Start)-1)/(4*P) {
			t.Errorf("unit %+v crosses a unit bound in the file", u)
		}
		in := false
		for _, v := range vmas {
			in = in || (u.Start >= v.Start && u.End <= v.End)
		}
		if !in {
			t.Errorf("unit %+v crosses a VMA", u)
		}
	}
	if total != 16*P {
		t.Fatalf("units cover %d pages, want 16", total/P)
	}
	if us[0].Start != 0x20000 || us[0].Off != 2*P || us[len(us)-1].End != 0x5a000 {
		t.Fatalf("units %+v", us)
	}
	// Lazy pages outside every VMA are a broken image.
	if _, err := Units(pm, vmas[:2], 4*P); err == nil {
		t.Fatal("lazy pages outside the VMAs accepted")
	}
}

func TestDecodeMM(t *testing.T) {
	v := []VMA{{0x3000, 0x5000}, {0x1000, 0x2000}}
	got, err := DecodeMM(encodeMM(v))
	if err != nil || len(got) != 2 || got[0].Start != 0x1000 {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range [][]byte{nil, encodeMM(v)[:14], encodeMM([]VMA{{0x1000, 0x1000}}), encodeMM([]VMA{{0x1000, 0x3000}, {0x2000, 0x4000}})} {
		if _, err := DecodeMM(bad); err == nil {
			t.Errorf("accepted %x", bad)
		}
	}
}

func FuzzDecodeMM(f *testing.F) {
	f.Add(encodeMM([]VMA{{0x1000, 0x2000}, {0x7f0000000000, 0x7f0000100000}}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		vmas, err := DecodeMM(b)
		if err != nil {
			return
		}
		for i, v := range vmas {
			if v.End <= v.Start || i > 0 && v.Start < vmas[i-1].End {
				t.Fatalf("accepted bad vmas %v", vmas)
			}
		}
	})
}

// memSource serves pages files from memory, counting reads.
type memSource struct {
	files map[uint32][]byte
	mu    sync.Mutex
	reads int
	fail  bool
}

func (m *memSource) ReadPages(ctx context.Context, id uint32, off int64, dst []byte) error {
	m.mu.Lock()
	m.reads++
	fail := m.fail
	m.mu.Unlock()
	if fail {
		return fmt.Errorf("chunk digest mismatch (test)")
	}
	f := m.files[id]
	if off < 0 || off+int64(len(dst)) > int64(len(f)) {
		return fmt.Errorf("read past the end of pages-%d.img", id)
	}
	copy(dst, f[off:])
	return nil
}

// fakeRestore plays criu restore's side of the handshake for this very
// process: a registered anonymous mapping stands in for the restored task.
type fakeRestore struct {
	mem   []byte
	live  [][2]int // page ranges of mem still mapped
	addr  uint64
	data  []byte // the pages file
	lazy  int    // lazy pages (from the start of mem); the rest must read zero
	pid   int
	dir   string
	src   *memSource
	uffd  int
	touch []int64
	mu    sync.Mutex
}

func newFakeRestore(t *testing.T, pages, lazy int) *fakeRestore {
	runtime.GOMAXPROCS(max(4, runtime.GOMAXPROCS(0)))
	mem, err := syscall.Mmap(-1, 0, pages*pageSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	fr := &fakeRestore{mem: mem, live: [][2]int{{0, pages}}, addr: uint64(uintptr(unsafe.Pointer(&mem[0]))), lazy: lazy, pid: 4242, dir: t.TempDir()}
	t.Cleanup(func() {
		// Only what is still ours: a range the test unmapped may hold
		// someone else's mapping (a thread stack) by now.
		base := uintptr(unsafe.Pointer(&mem[0]))
		for _, r := range fr.live {
			syscall.Syscall(syscall.SYS_MUNMAP, base+uintptr(r[0]*pageSize), uintptr((r[1]-r[0])*pageSize), 0)
		}
	})
	fr.data = make([]byte, lazy*pageSize)
	rand.New(rand.NewSource(7)).Read(fr.data)
	fr.src = &memSource{files: map[uint32][]byte{1: fr.data}}
	pm := &pageserver.Pagemap{PagesID: 1, Entries: []pageserver.Entry{{Vaddr: fr.addr, NrPages: uint64(lazy), Flags: pageserver.PEPresent | pageserver.PELazy}}}
	os.WriteFile(filepath.Join(fr.dir, "pagemap-4242.img"), pm.Encode(), 0o644)
	os.WriteFile(filepath.Join(fr.dir, "mm-4242.img"), encodeMM([]VMA{{fr.addr, fr.addr + uint64(pages*pageSize)}}), 0o644)
	if fr.uffd, err = Open(FeatureEventRemap | FeatureEventRemove | FeatureEventUnmap); err != nil {
		t.Skipf("no userfaultfd here: %v", err)
	}
	if err := Register(fr.uffd, fr.addr, uint64(pages*pageSize)); err != nil {
		t.Fatal(err)
	}
	return fr
}

func (fr *fakeRestore) options() Options {
	return Options{Images: fr.dir, Source: fr.src, UnitSize: 64 << 10, Workers: 3, OnTouch: func(id uint32, off int64, n int) {
		fr.mu.Lock()
		fr.touch = append(fr.touch, off)
		fr.mu.Unlock()
	}}
}

// handOver connects like criu restore and sends the task's descriptor.
func (fr *fakeRestore) handOver(t *testing.T, sock string) *net.UnixConn {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(binary.LittleEndian.AppendUint32(nil, uint32(fr.pid))); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WriteMsgUnix([]byte{0}, syscall.UnixRights(fr.uffd), nil); err != nil {
		t.Fatal(err)
	}
	// A zombie after it, as CRIU sends one: a negative pid and no fd.
	neg := int32(-77)
	c.Write(binary.LittleEndian.AppendUint32(nil, uint32(neg)))
	syscall.Close(fr.uffd) // the server holds its own copy now
	return c
}

// startServer runs a daemon on a fresh socket; errc gets what Serve returns.
func startServer(t *testing.T, opt Options) (*Server, string, chan error) {
	sock := filepath.Join(t.TempDir(), SocketName)
	srv, err := Listen(sock, opt)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(context.Background()) }()
	return srv, sock, errc
}

func finish(t *testing.T, c *net.UnixConn) {
	if _, err := c.Write(binary.LittleEndian.AppendUint32(nil, restoreFinished)); err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestServeFaultsThenFillsEverything(t *testing.T) {
	fr := newFakeRestore(t, 256, 200) // 1 MiB mapped, 800 KiB of lazy pages
	srv, sock, errc := startServer(t, fr.options())
	c := fr.handOver(t, sock)

	// Before the restore is done only faults are served: read in order,
	// one byte per page, as a program would.
	for _, pg := range []int{5, 6, 40, 3, 199} {
		if got, want := fr.mem[pg*pageSize+17], fr.data[pg*pageSize+17]; got != want {
			t.Fatalf("page %d: read %#x, want %#x", pg, got, want)
		}
	}
	// A registered page with no data in the image reads zero.
	if fr.mem[220*pageSize] != 0 {
		t.Fatal("page outside the pagemap is not zero")
	}
	fr.mu.Lock()
	touched := append([]int64(nil), fr.touch...)
	fr.mu.Unlock()
	// 64 KiB units: pages 5 and 6 share unit 0, 40 is in unit 2, 3 in unit 0
	// again, 199 in unit 12: first touches in program order.
	want := []int64{0, 2 * 64 << 10, 12 * 64 << 10}
	if fmt.Sprint(touched) != fmt.Sprint(want) {
		t.Fatalf("first touches %v, want %v", touched, want)
	}
	finish(t, c)
	waitDaemon(t, errc)
	if !bytes.Equal(fr.mem[:len(fr.data)], fr.data) {
		t.Fatal("memory differs from the pages after the fill")
	}
	st := srv.Stats()
	if st.Bytes != int64(len(fr.data)) || st.AheadBytes == 0 || st.FaultCopies != 3 || st.Tasks != 1 {
		t.Fatalf("stats %+v", st)
	}
	// The descriptor is closed: the rest of the mapping behaves normally.
	fr.mem[250*pageSize] = 1
}

func TestServeFailsOnUnreadablePages(t *testing.T) {
	fr := newFakeRestore(t, 64, 64)
	fr.src.fail = true
	srv, sock, errc := startServer(t, fr.options())
	finish(t, fr.handOver(t, sock))
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("daemon finished although no page could be read")
		}
		t.Log(err)
	case <-time.After(20 * time.Second):
		t.Fatal("daemon hung")
	}
	// Nothing was filled with anything else: the mapping is still missing
	// its pages (the descriptor is gone, so they now read as zero; the
	// caller kills such a process).
	if srv.Stats().Bytes != 0 {
		t.Fatal("bytes copied from a failing source")
	}
}

func TestServeRejectsBrokenHandshake(t *testing.T) {
	sock := filepath.Join(t.TempDir(), SocketName)
	srv, err := Listen(sock, Options{Images: t.TempDir(), Source: &memSource{}})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(context.Background()) }()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{1, 2}) // a short message, then the restore dies
	c.Close()
	if err := <-errc; err == nil {
		t.Fatal("a broken handshake was accepted")
	}
	// Cancelling before CRIU connects returns too.
	srv2, _ := Listen(sock, Options{Images: t.TempDir(), Source: &memSource{}})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if err := srv2.Serve(ctx); err == nil {
		t.Fatal("cancelled daemon returned nil")
	}
}

// The restored program changes its memory while it is being filled:
// MADV_DONTNEED (REMOVE), munmap (UNMAP) and mremap (REMAP) under many
// concurrent faults. Pages it dropped read zero, moved pages keep their
// contents, and nothing deadlocks.
func TestServeFollowsMemoryChanges(t *testing.T) {
	const pages = 512
	fr := newFakeRestore(t, pages, pages)
	opt := fr.options()
	opt.UnitSize = 16 * pageSize
	opt.FillDelay = 200 * time.Millisecond // faults first
	srv, sock, errc := startServer(t, opt)
	c := fr.handOver(t, sock)
	finish(t, c)

	// Many threads fault at once.
	var wg sync.WaitGroup
	bad := make(chan string, pages)
	for g := 0; g < 48; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for pg := g; pg < 96; pg += 48 {
				if fr.mem[pg*pageSize+5] != fr.data[pg*pageSize+5] {
					bad <- fmt.Sprintf("page %d", pg)
				}
			}
		}(g)
	}
	// Meanwhile: drop pages 100-131, unmap 400-511, move 200-231.
	base := uintptr(unsafe.Pointer(&fr.mem[0]))
	fr.live = [][2]int{{0, 200}, {232, 400}}
	if err := syscall.Madvise(fr.mem[100*pageSize:132*pageSize], 4 /* MADV_DONTNEED */); err != nil {
		t.Fatal(err)
	}
	if _, _, e := syscall.Syscall(syscall.SYS_MUNMAP, base+400*pageSize, 112*pageSize, 0); e != 0 {
		t.Fatal(e)
	}
	dst, err := syscall.Mmap(-1, 0, 32*pageSize, syscall.PROT_NONE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Munmap(dst) })
	if _, _, e := syscall.Syscall6(syscall.SYS_MREMAP, base+200*pageSize, 32*pageSize, 32*pageSize, 3 /* MAYMOVE|FIXED */, uintptr(unsafe.Pointer(&dst[0])), 0); e != 0 {
		t.Fatal(e)
	}
	moved := dst // the pages now live where dst was reserved
	wg.Wait()
	close(bad)
	for b := range bad {
		t.Error("wrong bytes at", b)
	}
	waitDaemon(t, errc)
	if !bytes.Equal(moved, fr.data[200*pageSize:232*pageSize]) {
		t.Fatal("moved pages lost their contents")
	}
	for pg := 100; pg < 132; pg++ {
		if fr.mem[pg*pageSize+5] != 0 {
			t.Fatalf("page %d was dropped by the program but refilled", pg)
		}
	}
	for _, r := range [][2]int{{0, 100}, {132, 200}, {232, 400}} {
		if !bytes.Equal(fr.mem[r[0]*pageSize:r[1]*pageSize], fr.data[r[0]*pageSize:r[1]*pageSize]) {
			t.Fatalf("pages %d-%d differ", r[0], r[1])
		}
	}
	t.Logf("%+v", srv.Stats())
}

// waitDaemon waits for Serve to return, and fails on its error.
func waitDaemon(t *testing.T, errc <-chan error) {
	t.Helper()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("daemon did not finish")
	}
}

// FillNow ends a long FillDelay at once: the recording window of a restore
// ends when its caller says so, not only on a clock.
func TestFillNowEndsTheDelay(t *testing.T) {
	const pages = 64
	fr := newFakeRestore(t, pages, pages)
	opt := fr.options()
	opt.FillDelay = time.Hour
	srv, sock, errc := startServer(t, opt)
	c := fr.handOver(t, sock)
	finish(t, c)
	time.Sleep(50 * time.Millisecond)
	if st := srv.Stats(); st.AheadBytes != 0 {
		t.Fatalf("filled %d bytes ahead of demand during the delay", st.AheadBytes)
	}
	srv.FillNow()
	srv.FillNow() // twice is fine
	waitDaemon(t, errc)
	if !bytes.Equal(fr.mem[:pages*pageSize], fr.data[:pages*pageSize]) {
		t.Fatal("memory not filled after FillNow")
	}
}
