// Package inflate decompresses gzip streams, with Intel's ISA-L inflate
// where the machine has it and klauspost/compress's otherwise.
//
// Unpacking an image layer is one gzip stream decompressed on one core: a
// model image's weights are often one multi-GB layer, and at klauspost's
// ~270 MB/s a core (the 2-CPU VM) the layer's gunzip, not the packing,
// bounds `pack --image`. ISA-L's inflate does the same work at ~600 MB/s
// a core there. It is loaded at run time (libisal.so.2, Debian's and
// Ubuntu's libisal2 package) so that the binary runs on machines without
// it, and it is compiled in only where its header is (libisal-dev, which
// `make setup` installs); without either, NewReader falls back to the Go
// inflate. Both check the gzip trailer's CRC-32 and length.
package inflate

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

#if defined(__has_include)
#if __has_include(<isa-l/igzip_lib.h>)
#include <isa-l/igzip_lib.h>
#define GW_HAVE_ISAL 1
#endif
#endif

#ifdef GW_HAVE_ISAL
typedef struct inflate_state gw_state;
static void (*p_init)(gw_state *);
static void (*p_reset)(gw_state *);
static int (*p_inflate)(gw_state *);
static void *gw_lib;

static const char *gw_load(void) {
	if (gw_lib) return NULL;
	void *h = dlopen("libisal.so.2", RTLD_NOW | RTLD_LOCAL);
	if (!h) return dlerror();
	p_init = (void (*)(gw_state *))dlsym(h, "isal_inflate_init");
	p_reset = (void (*)(gw_state *))dlsym(h, "isal_inflate_reset");
	p_inflate = (int (*)(gw_state *))dlsym(h, "isal_inflate");
	if (!p_init || !p_reset || !p_inflate) {
		dlclose(h);
		return "libisal.so.2 lacks isal_inflate_init, isal_inflate_reset or isal_inflate";
	}
	gw_lib = h;
	return NULL;
}

static gw_state *gw_new(void) {
	gw_state *s = calloc(1, sizeof *s);
	if (!s) return NULL;
	p_init(s);
	s->crc_flag = ISAL_GZIP;
	return s;
}

// A gzip member follows the last one: the same state starts afresh.
static void gw_reset(gw_state *s) {
	p_reset(s);
	s->crc_flag = ISAL_GZIP;
}

// gw_step inflates from in into out; it reports what is left of each and
// whether the member (header, deflate data, trailer) is complete.
static int gw_step(gw_state *s, unsigned char *in, unsigned int in_len, unsigned char *out, unsigned int out_len,
		unsigned int *in_left, unsigned int *out_left, int *finished) {
	s->next_in = in;
	s->avail_in = in_len;
	s->next_out = out;
	s->avail_out = out_len;
	int r = p_inflate(s);
	*in_left = s->avail_in;
	*out_left = s->avail_out;
	*finished = s->block_state == ISAL_BLOCK_FINISH;
	return r;
}
static int gw_built(void) { return 1; }
#else
static int gw_built(void) { return 0; }
typedef struct { int unused; } gw_state;
static const char *gw_load(void) { return "built without ISA-L's header (install libisal-dev and rebuild)"; }
static gw_state *gw_new(void) { return NULL; }
static void gw_reset(gw_state *s) {}
static int gw_step(gw_state *s, unsigned char *in, unsigned int in_len, unsigned char *out, unsigned int out_len,
		unsigned int *in_left, unsigned int *out_left, int *finished) { return -100; }
#endif
*/
import "C"

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"unsafe"

	"github.com/klauspost/compress/gzip"
)

var (
	loadOnce sync.Once
	loadErr  error
)

func load() error {
	loadOnce.Do(func() {
		if msg := C.gw_load(); msg != nil {
			loadErr = errors.New(C.GoString(msg))
		}
	})
	return loadErr
}

// Native reports whether NewReader uses ISA-L, and if not, why.
func Native() (bool, error) {
	err := load()
	return err == nil, err
}

// NewReader returns a reader of the data the gzip stream r holds (every
// member of it, one after another, as gzip(1) reads them). A stream that
// is not gzip, is damaged, or ends early is an error of the reader's Read.
// Close releases the decompressor; it does not close r.
func NewReader(r io.Reader) (io.ReadCloser, error) {
	if load() == nil {
		return newNative(r)
	}
	return newGo(r)
}

func newGo(r io.Reader) (io.ReadCloser, error) {
	z, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	return z, nil
}

// bufSize is the size of the native reader's input and output buffers.
const bufSize = 256 << 10

// native is a gzip reader over ISA-L. Its state and buffers are C memory:
// ISA-L keeps pointers into its buffers between calls, which Go memory
// must not be given to.
type native struct {
	r       io.Reader
	st      *C.gw_state    // nil once closed
	mem     unsafe.Pointer // the input buffer, then the output buffer
	in, out []byte         // views of mem
	inLo    int            // in[inLo:inHi] is read but not yet inflated
	inHi    int
	outLo   int // out[outLo:outHi] is inflated but not yet returned
	outHi   int
	eof     bool // r is at its end
	member  bool // a member is being inflated (its header was begun)
	err     error
	cleanup runtime.Cleanup
}

func newNative(r io.Reader) (io.ReadCloser, error) {
	st := C.gw_new()
	if st == nil {
		return nil, errors.New("gzip: cannot allocate ISA-L's inflate state")
	}
	mem := C.malloc(2 * bufSize)
	if mem == nil {
		C.free(unsafe.Pointer(st))
		return nil, errors.New("gzip: cannot allocate ISA-L's buffers")
	}
	z := &native{r: r, st: st, mem: mem,
		in:  unsafe.Slice((*byte)(mem), bufSize),
		out: unsafe.Slice((*byte)(unsafe.Add(mem, bufSize)), bufSize)}
	// A reader dropped without Close still gives its C memory back.
	z.cleanup = runtime.AddCleanup(z, func(m [2]unsafe.Pointer) { C.free(m[0]); C.free(m[1]) }, [2]unsafe.Pointer{unsafe.Pointer(st), mem})
	return z, nil
}

func (z *native) Read(p []byte) (int, error) {
	if z.st == nil {
		return 0, errors.New("gzip: read after Close")
	}
	for {
		if z.outLo < z.outHi {
			n := copy(p, z.out[z.outLo:z.outHi])
			z.outLo += n
			return n, nil
		}
		if z.err != nil {
			return 0, z.err
		}
		if len(p) == 0 {
			return 0, nil
		}
		z.step()
	}
}

// step reads input if there is none, and inflates what there is into out.
func (z *native) step() {
	if z.inLo == z.inHi && !z.eof {
		z.fill()
		if z.err != nil {
			return
		}
	}
	if !z.member {
		if z.inLo == z.inHi && z.eof {
			z.err = io.EOF // the end of the stream, between members
			return
		}
		z.member = true
	}
	var inLeft, outLeft C.uint
	var finished C.int
	var inPtr *C.uchar
	if z.inLo < z.inHi {
		inPtr = (*C.uchar)(unsafe.Pointer(&z.in[z.inLo]))
	}
	r := C.gw_step(z.st, inPtr, C.uint(z.inHi-z.inLo), (*C.uchar)(unsafe.Pointer(&z.out[0])), C.uint(len(z.out)), &inLeft, &outLeft, &finished)
	consumed := z.inHi - z.inLo - int(inLeft)
	z.inLo += consumed
	z.outLo, z.outHi = 0, len(z.out)-int(outLeft)
	switch {
	case r < 0:
		z.err = fmt.Errorf("gzip: %s", isalError(int(r)))
	case finished != 0:
		// The member's trailer checked out; another may follow.
		C.gw_reset(z.st)
		z.member = false
	case z.outHi > 0 || consumed > 0:
	case z.eof:
		z.err = io.ErrUnexpectedEOF // the stream ends inside a member
	case z.inHi-z.inLo == len(z.in):
		z.err = errors.New("gzip: the inflate made no progress on a full buffer")
	default:
		z.fill() // it waits for more input than there is
	}
}

// fill reads more of the compressed stream behind what in holds.
func (z *native) fill() {
	z.inHi = copy(z.in, z.in[z.inLo:z.inHi])
	z.inLo = 0
	for {
		n, err := z.r.Read(z.in[z.inHi:])
		z.inHi += n
		if err == io.EOF {
			z.eof = true
			return
		}
		if err != nil {
			z.err = err
			return
		}
		if n > 0 {
			return
		}
	}
}

// Close releases the reader's C memory.
func (z *native) Close() error {
	if z.st == nil {
		return nil
	}
	z.cleanup.Stop()
	C.free(unsafe.Pointer(z.st))
	C.free(z.mem)
	z.st, z.in, z.out = nil, nil, nil
	return nil
}

func isalError(code int) string {
	switch code {
	case -1:
		return "invalid deflate block"
	case -2:
		return "invalid deflate symbol"
	case -3:
		return "invalid lookback distance"
	case -4:
		return "invalid gzip header (not a gzip stream?)"
	case -5:
		return "unsupported compression method"
	case -6:
		return "checksum mismatch: the data is damaged"
	}
	return fmt.Sprintf("ISA-L inflate error %d", code)
}

// compiledIn reports whether ISA-L was compiled in (its header was found).
func compiledIn() bool { return C.gw_built() != 0 }
