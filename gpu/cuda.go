package gpu

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef struct { unsigned int timeoutMs; unsigned int reserved0; unsigned long long reserved1[7]; } gw_lock_args;

typedef CUresult (*fn_init)(unsigned int);
typedef CUresult (*fn_pid)(int, void*);
typedef CUresult (*fn_state)(int, int*);
typedef CUresult (*fn_tid)(int, int*);
typedef CUresult (*fn_ver)(int*);
typedef CUresult (*fn_err)(CUresult, const char**);

static void *gw_cuda;
static fn_init p_init;
static fn_pid p_lock, p_checkpoint, p_restore, p_unlock;
static fn_state p_state;
static fn_tid p_tid;
static fn_ver p_ver;
static fn_err p_errname, p_errstr;

static const char *gw_load(void) {
	if (gw_cuda) return NULL;
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h) return dlerror();
	p_init = (fn_init)dlsym(h, "cuInit");
	p_ver = (fn_ver)dlsym(h, "cuDriverGetVersion");
	p_errname = (fn_err)dlsym(h, "cuGetErrorName");
	p_errstr = (fn_err)dlsym(h, "cuGetErrorString");
	p_state = (fn_state)dlsym(h, "cuCheckpointProcessGetState");
	p_lock = (fn_pid)dlsym(h, "cuCheckpointProcessLock");
	p_checkpoint = (fn_pid)dlsym(h, "cuCheckpointProcessCheckpoint");
	p_restore = (fn_pid)dlsym(h, "cuCheckpointProcessRestore");
	p_unlock = (fn_pid)dlsym(h, "cuCheckpointProcessUnlock");
	p_tid = (fn_tid)dlsym(h, "cuCheckpointProcessGetRestoreThreadId");
	if (!p_init || !p_state || !p_lock || !p_checkpoint || !p_restore || !p_unlock) {
		dlclose(h);
		return "libcuda.so.1 lacks the checkpoint API (cuCheckpointProcess*): the driver is older than 550";
	}
	gw_cuda = h;
	return NULL;
}

static CUresult gw_init(void) { return p_init(0); }
static CUresult gw_version(int *v) { return p_ver ? p_ver(v) : -1; }
static CUresult gw_state(int pid, int *st) { return p_state(pid, st); }
static CUresult gw_lock(int pid, unsigned int timeout_ms) {
	gw_lock_args a;
	memset(&a, 0, sizeof a);
	a.timeoutMs = timeout_ms;
	return p_lock(pid, &a);
}
static CUresult gw_checkpoint(int pid) { return p_checkpoint(pid, NULL); }
static CUresult gw_restore(int pid) { return p_restore(pid, NULL); }
// CUcheckpointRestoreArgs: the GPU pairs, their count, zeroed reserved
// bytes; 64 bytes in every driver that has it.
typedef struct { void *gpuPairs; unsigned int gpuPairsCount; char reserved[64 - sizeof(void*) - sizeof(unsigned int)]; } gw_restore_args;
static CUresult gw_restore_remap(int pid, void *pairs, unsigned int n) {
	gw_restore_args a;
	memset(&a, 0, sizeof a);
	a.gpuPairs = pairs;
	a.gpuPairsCount = n;
	return p_restore(pid, &a);
}
static CUresult gw_unlock(int pid) { return p_unlock(pid, NULL); }
static CUresult gw_tid(int pid, int *tid) { return p_tid ? p_tid(pid, tid) : 801; }
static const char *gw_errname(CUresult r) { const char *s = NULL; if (p_errname) p_errname(r, &s); return s; }
static const char *gw_errstr(CUresult r) { const char *s = NULL; if (p_errstr) p_errstr(r, &s); return s; }
*/
import "C"

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// ErrNoDriver says there is no NVIDIA driver (or no CUDA checkpoint API).
var ErrNoDriver = errors.New("no NVIDIA driver")

// ProcessState is a CUDA process's checkpoint state.
type ProcessState int

const (
	Running      ProcessState = 0
	Locked       ProcessState = 1
	Checkpointed ProcessState = 2
	Failed       ProcessState = 3
)

func (s ProcessState) String() string {
	switch s {
	case Running:
		return "running"
	case Locked:
		return "locked"
	case Checkpointed:
		return "checkpointed"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// CUDAError is a CUDA driver error with its name and the advice gpuwarm has.
type CUDAError struct {
	Op   string
	PID  int
	Code int
	Name string
	Text string
}

func (e *CUDAError) Error() string {
	msg := fmt.Sprintf("%s of pid %d: %s (%d): %s", e.Op, e.PID, e.Name, e.Code, e.Text)
	switch e.Code {
	case 500: // CUDA_ERROR_NOT_FOUND
		msg += " (the process has no CUDA state)"
	case 600: // CUDA_ERROR_NOT_READY
		msg += " (in-flight GPU work did not finish within the lock timeout: raise --gpu-lock-timeout)"
	case 401: // CUDA_ERROR_ILLEGAL_STATE
		msg += " (the process is not in the state this step needs)"
	case 801: // CUDA_ERROR_NOT_SUPPORTED
		msg += " (this driver or GPU does not support checkpointing the process)"
	case 2: // CUDA_ERROR_OUT_OF_MEMORY
		msg += " (not enough free GPU memory to restore)"
	}
	return msg
}

// ErrNotCUDA reports a process without CUDA state.
func (e *CUDAError) NotCUDA() bool { return e.Code == 500 || e.Code == 1 }

var (
	loadOnce sync.Once
	loadErr  error
	initOnce sync.Once
	initErr  error
)

func load() error {
	loadOnce.Do(func() {
		if msg := C.gw_load(); msg != nil {
			loadErr = fmt.Errorf("%w: cannot load libcuda.so.1: %s (install the NVIDIA driver >= 550 to snapshot GPU processes)", ErrNoDriver, C.GoString(msg))
		}
	})
	return loadErr
}

// InitCUDA loads libcuda and runs cuInit once per process. It takes a few
// hundred milliseconds in a fresh process, so a restore starts it early.
func InitCUDA() error { return cudaInit() }

func cudaInit() error {
	if err := load(); err != nil {
		return err
	}
	initOnce.Do(func() {
		if r := C.gw_init(); r != 0 {
			initErr = fmt.Errorf("%w: %v", ErrNoDriver, cerr("cuInit", 0, r))
		}
	})
	return initErr
}

func cerr(op string, pid int, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	e := &CUDAError{Op: op, PID: pid, Code: int(r)}
	if s := C.gw_errname(r); s != nil {
		e.Name = C.GoString(s)
	}
	if s := C.gw_errstr(r); s != nil {
		e.Text = C.GoString(s)
	}
	return e
}

// DriverVersion is the CUDA driver API version (e.g. 13000).
func DriverVersion() (int, error) {
	if err := load(); err != nil {
		return 0, err
	}
	var v C.int
	if r := C.gw_version(&v); r != 0 {
		return 0, cerr("cuDriverGetVersion", 0, r)
	}
	return int(v), nil
}

// State returns the CUDA checkpoint state of pid.
func State(pid int) (ProcessState, error) {
	if err := cudaInit(); err != nil {
		return 0, err
	}
	var st C.int
	if r := C.gw_state(C.int(pid), &st); r != 0 {
		return 0, cerr("cuCheckpointProcessGetState", pid, r)
	}
	return ProcessState(st), nil
}

// Lock blocks new CUDA calls in pid and waits (up to timeout) for its
// in-flight work.
func Lock(pid int, timeout time.Duration) error {
	if err := cudaInit(); err != nil {
		return err
	}
	return cerr("cuCheckpointProcessLock", pid, C.gw_lock(C.int(pid), C.uint(timeout.Milliseconds())))
}

// Checkpoint moves a locked process's GPU memory into its host memory.
func Checkpoint(pid int) error {
	if err := cudaInit(); err != nil {
		return err
	}
	return cerr("cuCheckpointProcessCheckpoint", pid, C.gw_checkpoint(C.int(pid)))
}

// Restore puts a checkpointed process's memory back on the GPU.
func Restore(pid int) error {
	if err := cudaInit(); err != nil {
		return err
	}
	return cerr("cuCheckpointProcessRestore", pid, C.gw_restore(C.int(pid)))
}

// GPUPair maps a checkpointed GPU (by UUID) onto the GPU to restore onto.
type GPUPair struct{ Old, New [16]byte }

// RestoreOnto restores a checkpointed process onto other GPUs of the same
// model: pairs must name every GPU the process had checkpointed.
func RestoreOnto(pid int, pairs []GPUPair) error {
	if len(pairs) == 0 {
		return Restore(pid)
	}
	if err := cudaInit(); err != nil {
		return err
	}
	buf := C.malloc(C.size_t(32 * len(pairs)))
	defer C.free(buf)
	b := unsafe.Slice((*byte)(buf), 32*len(pairs))
	for i, p := range pairs {
		copy(b[32*i:], p.Old[:])
		copy(b[32*i+16:], p.New[:])
	}
	return cerr("cuCheckpointProcessRestore", pid, C.gw_restore_remap(C.int(pid), buf, C.uint(len(pairs))))
}

// ParseUUID reads NVML's "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
func ParseUUID(s string) ([16]byte, error) {
	var u [16]byte
	h := strings.ReplaceAll(strings.TrimPrefix(strings.TrimPrefix(s, "GPU-"), "MIG-"), "-", "")
	if len(h) != 32 {
		return u, fmt.Errorf("bad GPU UUID %q", s)
	}
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, fmt.Errorf("bad GPU UUID %q: %v", s, err)
	}
	return u, nil
}

// Unlock lets a locked process make CUDA calls again.
func Unlock(pid int) error {
	if err := cudaInit(); err != nil {
		return err
	}
	return cerr("cuCheckpointProcessUnlock", pid, C.gw_unlock(C.int(pid)))
}

// RestoreThreadID is the thread of pid that performs its CUDA restore.
func RestoreThreadID(pid int) (int, error) {
	if err := cudaInit(); err != nil {
		return 0, err
	}
	var tid C.int
	if r := C.gw_tid(C.int(pid), &tid); r != 0 {
		return 0, cerr("cuCheckpointProcessGetRestoreThreadId", pid, r)
	}
	return int(tid), nil
}
