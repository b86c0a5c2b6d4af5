"""gpuwarm_weights: a workload's weights, uploaded from gpuwarm's cache after a restore.

A PyTorch program that loaded its weights from safetensors files on a gpuwarm
mount opts in with two lines, once its weights are on the GPU:

    import gpuwarm_weights
    gw = gpuwarm_weights.attach(model, files)   # model: nn.Module or {name: tensor}

Before a snapshot, gpuwarm asks the library to release the weights: each
tensor whose GPU bytes equal its bytes in the files is freed (its memory
goes back to the driver; the tensor object, shape, dtype and device stay), so the
snapshot carries references instead of the weights. After a restore, gpuwarm
asks it to upload them again: many threads read the files through the mount
into a small set of pinned buffers, reused, and copy them to the GPU on
their own streams; a release frees the buffers, so that no snapshot carries
them.

Every tensor keeps its GPU address. attach() moves the weights into one
range of device addresses that the library reserves through the CUDA
driver's virtual memory API; a release frees the memory behind it and
keeps the reservation, which the CUDA checkpoint carries, and a reload
maps new memory at the same addresses. So CUDA graphs and compiled code
captured over the weights run on after a restore: call attach() before
capturing them. (Where the driver lacks that API, or with
keep_addresses=False, PyTorch's allocator re-allocates the tensors and
their addresses may change; the restore reports how many moved.)

While the weights are away, the program must not use them. With an
nn.Module, attach() gates its forward; a program that uses the tensors
otherwise calls gw.ready() before each request (it returns at once when the
weights are resident).

The protocol (package restore/weights of gpuwarm) is JSON lines over the Unix
socket named in GPUWARM_WEIGHTS; without that variable attach() does nothing
but gate nothing. The library holds no connection across a checkpoint: it
polls the socket path every 10 ms and has one session with each listener.
Only the standard library and torch are needed; the protocol part
(class Hooks) needs no torch at all.
"""
import json
import os
import queue
import socket
import stat
import struct
import sys
import threading
import time

VERSION = 1
ENV = "GPUWARM_WEIGHTS"
POLL = 0.01
THREAD_NAME = "gpuwarm-weights"


def log(msg):
    print(f"gpuwarm_weights: {msg}", file=sys.stderr, flush=True)


class Hooks:
    """Speaks the protocol for a backend that knows the weights.

    backend.files() -> [paths]; backend.nbytes() -> int;
    backend.release(sources: {path: source}) -> (tensors, kept);
    backend.reload(paths: {source: path}) -> bytes;
    backend.prepare(True), optional: what a reload can do before it is
    asked; prepare(False) undoes it.
    release() frees what it released only once every tensor is checked, and
    on failure leaves everything resident; reload() raises on failure and
    may be asked again.
    """

    def __init__(self, backend, path):
        self.backend = backend
        self.path = path
        self.released = False
        self.error = None
        self._resident = threading.Event()
        self._resident.set()
        self._seen = None
        self._thread = threading.Thread(target=self._loop, name="gpuwarm-weights", daemon=True)
        self._thread.start()

    def ready(self, timeout=None):
        """Wait until the weights are resident; raise if their upload failed."""
        if not self._resident.wait(timeout):
            raise TimeoutError("gpuwarm_weights: weights not resident yet")
        if self.error:
            raise RuntimeError(f"gpuwarm_weights: the weights could not be uploaded: {self.error}")

    def _loop(self):
        # The thread's name tells gpuwarm this process speaks the protocol
        # (it waits for the library only where it finds the name).
        try:
            import ctypes
            ctypes.CDLL(None).prctl(15, THREAD_NAME.encode(), 0, 0, 0)  # PR_SET_NAME
        except Exception:
            pass
        while True:
            try:
                st = os.stat(self.path)
            except OSError:
                time.sleep(POLL)
                continue
            ident = (st.st_ino, st.st_ctime_ns)
            if ident == self._seen or not stat.S_ISSOCK(st.st_mode):
                time.sleep(POLL)
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.path)
            except OSError:
                s.close()
                time.sleep(POLL)
                continue
            self._seen = ident
            try:
                self._session(s)
            except Exception as e:  # the session ends; the program goes on
                log(f"session failed: {e!r}")
            finally:
                s.close()

    def _session(self, s):
        f = s.makefile("rwb")
        hello = {"version": VERSION, "pid": os.getpid(),
                 "state": "released" if self.released else "resident",
                 "files": list(self.backend.files()), "bytes": self.backend.nbytes()}
        f.write(json.dumps(hello).encode() + b"\n")
        f.flush()
        prepare = getattr(self.backend, "prepare", None)
        if self.released and prepare is not None:
            try:
                prepare(True)
            except Exception as e:  # the reload does it then
                log(f"preparing the reload: {e!r}")
        line = f.readline()
        req = json.loads(line) if line else {}
        op = req.get("op")
        if op != "reload" and prepare is not None:
            prepare(False)  # no reload in this session: nothing held for one
        if op is None or op == "none":
            return
        t = time.monotonic()
        try:
            if op == "release":
                if self.released:
                    raise RuntimeError("already released")
                self._resident.clear()
                try:
                    tensors, kept = self.backend.release(req.get("files") or {})
                except BaseException:
                    self._resident.set()
                    raise
                self.released = bool(tensors)
                if not self.released:
                    self._resident.set()
                reply = {"ok": True, "tensors": tensors, "kept": kept,
                         "bytes": sum(x["length"] for x in tensors)}
            elif op == "reload":
                if not self.released:
                    raise RuntimeError("nothing released")
                n = self.backend.reload(req.get("files") or {})
                self.released, self.error = False, None
                self._resident.set()
                reply = {"ok": True, "bytes": n}
                for k in ("alloc_seconds", "pinned_seconds", "moved"):
                    if getattr(self.backend, k, None) is not None:
                        reply[k] = getattr(self.backend, k)
            else:
                raise RuntimeError(f"unknown request {op!r}")
        except Exception as e:
            if op == "reload":
                self.error = str(e)
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        reply["seconds"] = time.monotonic() - t
        f.write(json.dumps(reply).encode() + b"\n")
        f.flush()


def safetensors_index(path):
    """{name: (dtype, shape, offset, length)} of a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file")
        n = struct.unpack("<Q", head)[0]
        if n > 100 << 20:
            raise ValueError(f"{path}: safetensors header of {n} bytes")
        h = json.loads(f.read(n))
    out = {}
    for name, v in h.items():
        if name == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[name] = (v["dtype"], list(v["shape"]), 8 + n + a, b - a)
    return out


_DTYPES = {
    "bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64",
    "int8": "I8", "uint8": "U8", "int16": "I16", "int32": "I32", "int64": "I64",
    "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


class _HostMemory:
    """n bytes of our own anonymous mapping, 2 MiB aligned, in 2 MiB pages
    where the kernel gives them, every page faulted in: the part of pinning
    that needs no CUDA, so a reload can do it while the driver still
    restores the process's CUDA state."""

    HUGE = 2 << 20

    def __init__(self, n):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        length = n + self.HUGE
        a = libc.mmap(None, length, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
        if a is None or a == ctypes.c_void_p(-1).value:
            raise OSError(ctypes.get_errno(), "mmap of the staging buffers")
        self.n, self.libc, self.map = n, libc, (a, length)
        self.addr = (a + self.HUGE - 1) & ~(self.HUGE - 1)
        libc.madvise(self.addr, n, 14)  # MADV_HUGEPAGE; a hint
        ctypes.memset(self.addr, 0, n)  # fault the pages in before pinning

    def free(self):
        if self.map is not None:
            self.libc.munmap(*self.map)
            self.map = None


class _PinnedBlock:
    """n bytes of page-locked host memory for the staging buffers.

    Our own anonymous mapping, in 2 MiB pages where the kernel gives them,
    registered with CUDA (cudaHostRegister): on an H100 that pinned 128 MiB
    in 15-22 ms where torch's pinned allocator (cudaHostAlloc) took 48 ms,
    256 MiB in 20-35 ms against 88 ms, and copies from it ran at the same
    55 GB/s. Where registration is not available, torch's pinned memory.
    free() unregisters and unmaps it: a snapshot carries none of it."""

    def __init__(self, torch, n, host=None):
        self.torch, self.n = torch, n
        self._host = None  # our mapping, registered
        self.addr = 0
        try:
            self._register(host or _HostMemory(n))
        except Exception:  # no cudart, no registration: torch's allocator
            if self._host is not None:
                self._host.free()
                self._host = None
            self.tensor = torch.empty(n, dtype=torch.uint8, pin_memory=True)
            self.addr = self.tensor.data_ptr()

    def _register(self, host):
        import ctypes
        torch, n = self.torch, self.n
        self._host, self.addr = host, host.addr
        cudart = torch.cuda.cudart()
        if int(cudart.cudaHostRegister(self.addr, n, 0)) != 0:
            raise OSError("cudaHostRegister of the staging buffers failed")
        try:
            self.tensor = torch.frombuffer((ctypes.c_char * n).from_address(self.addr), dtype=torch.uint8)
        except Exception:
            cudart.cudaHostUnregister(self.addr)
            raise
        self._cudart = cudart

    def free(self, zero):
        """Give the memory back (the caller has synchronized and holds no
        slice of it). torch's pinned memory may stay cached in torch: with
        zero it is zeroed first, so that it holds no weight bytes."""
        if self._host is None:
            if zero:
                self.tensor.zero_()
            self.tensor = None
            return
        self.tensor = None
        self._cudart.cudaHostUnregister(self.addr)
        self._host.free()
        self._host = None


class _VMM:
    """CUDA's virtual memory management (cuMemAddressReserve, cuMemCreate,
    cuMemMap), through libcuda, for the current device: address ranges that
    stay reserved while their memory is freed and mapped again. Raises
    where the driver lacks it."""

    def __init__(self, device):
        import ctypes as C

        class Loc(C.Structure):
            _fields_ = [("type", C.c_int), ("id", C.c_int)]

        class Flags(C.Structure):
            _fields_ = [("compressionType", C.c_ubyte), ("gpuDirectRDMACapable", C.c_ubyte),
                        ("usage", C.c_ushort), ("reserved", C.c_ubyte * 4)]

        class Prop(C.Structure):  # CUmemAllocationProp
            _fields_ = [("type", C.c_int), ("requestedHandleTypes", C.c_int), ("location", Loc),
                        ("win32HandleMetaData", C.c_void_p), ("allocFlags", Flags)]

        class Access(C.Structure):  # CUmemAccessDesc
            _fields_ = [("location", Loc), ("flags", C.c_int)]

        self.C = C
        cu = C.CDLL("libcuda.so.1")
        u64, sz, p = C.c_ulonglong, C.c_size_t, C.POINTER
        for name, args in (("cuMemAddressReserve", [p(u64), sz, sz, u64, u64]),
                           ("cuMemAddressFree", [u64, sz]),
                           ("cuMemCreate", [p(u64), sz, p(Prop), u64]),
                           ("cuMemMap", [u64, sz, sz, u64, u64]),
                           ("cuMemSetAccess", [u64, sz, p(Access), sz]),
                           ("cuMemUnmap", [u64, sz]),
                           ("cuMemRelease", [u64]),
                           ("cuMemGetAllocationGranularity", [p(sz), p(Prop), C.c_int]),
                           ("cuCtxGetCurrent", [p(C.c_void_p)]),
                           ("cuCtxSetCurrent", [C.c_void_p]),
                           ("cuDeviceGet", [p(C.c_int), C.c_int]),
                           ("cuDevicePrimaryCtxRetain", [p(C.c_void_p), C.c_int])):
            f = getattr(cu, name)
            f.argtypes, f.restype = args, C.c_int
        self.cu, self.device = cu, device
        self._ctx()
        dev = C.c_int()
        self._ok(cu.cuDeviceGet(C.byref(dev), device), "cuDeviceGet")
        self.prop = Prop(type=1, requestedHandleTypes=0, location=Loc(1, dev.value))  # pinned, on the device
        self.access = Access(location=Loc(1, dev.value), flags=3)  # read and write
        g = sz()
        self._ok(cu.cuMemGetAllocationGranularity(C.byref(g), C.byref(self.prop), 0), "cuMemGetAllocationGranularity")
        self.granularity = g.value

    @staticmethod
    def _ok(r, what):
        if r != 0:
            raise RuntimeError(f"{what} failed: CUresult {r}")

    def _ctx(self):
        """Make the device's primary context (torch's) current on this thread."""
        C, cu = self.C, self.cu
        ctx = C.c_void_p()
        self._ok(cu.cuCtxGetCurrent(C.byref(ctx)), "cuCtxGetCurrent")
        if ctx.value:
            return
        dev = C.c_int()
        self._ok(cu.cuDeviceGet(C.byref(dev), self.device), "cuDeviceGet")
        self._ok(cu.cuDevicePrimaryCtxRetain(C.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        self._ok(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")

    def reserve(self, n):
        C = self.C
        self._ctx()
        va = C.c_ulonglong()
        self._ok(self.cu.cuMemAddressReserve(C.byref(va), n, self.granularity, 0, 0), "cuMemAddressReserve")
        return va.value

    def free(self, va, n):
        self.cu.cuMemAddressFree(va, n)

    def map(self, va, n):
        """Back [va, va+n) with new device memory; returns its handle."""
        C, cu = self.C, self.cu
        self._ctx()
        h = C.c_ulonglong()
        self._ok(cu.cuMemCreate(C.byref(h), n, C.byref(self.prop), 0), f"cuMemCreate of {n} bytes")
        try:
            self._ok(cu.cuMemMap(va, n, 0, h, 0), "cuMemMap")
        except BaseException:
            cu.cuMemRelease(h)
            raise
        try:
            self._ok(cu.cuMemSetAccess(va, n, C.byref(self.access), 1), "cuMemSetAccess")
        except BaseException:
            cu.cuMemUnmap(va, n)
            cu.cuMemRelease(h)
            raise
        return h.value

    def unmap(self, va, n, handle):
        """Free the memory behind [va, va+n); the addresses stay reserved."""
        self._ctx()
        self._ok(self.cu.cuMemUnmap(va, n), "cuMemUnmap")
        self._ok(self.cu.cuMemRelease(handle), "cuMemRelease")


def _vmm(torch):
    """The driver's virtual memory management, or None where it is missing."""
    try:
        return _VMM(torch.cuda.current_device())
    except Exception:
        return None


class _CAI:
    """Device memory the library owns, as torch.as_tensor takes it."""

    def __init__(self, ptr, n):
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": "|u1", "data": (ptr, False), "version": 3}


class _Region:
    """The weights' GPU memory, at addresses that outlive a checkpoint.

    One reserved range of device addresses holds the tensors, packed in
    order, backed by memory in segments. A release unmaps and frees the
    segments whose tensors it released; the reservation stays, and the
    driver's checkpoint carries it like the rest of the process's CUDA
    state. A reload maps new memory at the same addresses, segment by
    segment ahead of the upload. So every tensor keeps its address, and
    CUDA graphs and compiled code that captured it run on after a restore.
    Moving a tensor in (at attach) costs one device-to-device copy."""

    ALIGN = 512

    def __init__(self, torch, vmm, lengths, segment):
        self.vmm = vmm
        g = vmm.granularity
        self.segment = max(g, -(-segment // g) * g)
        off, self.offsets = 0, []
        for n in lengths:
            self.offsets.append(off)
            off += -(-n // self.ALIGN) * self.ALIGN
        self.size = max(g, -(-off // g) * g)
        self.va = vmm.reserve(self.size)
        # [offset, length, handle or None]
        self.segments = [[o, min(self.segment, self.size - o), None] for o in range(0, self.size, self.segment)]
        # The first segment now (torch asks the driver about the address);
        # the others as the tensors move in.
        try:
            self.map_range(0, 1)
            self.flat = torch.as_tensor(_CAI(self.va, self.size), device="cuda")
        except BaseException:
            self.unmap_except([])
            vmm.free(self.va, self.size)
            raise

    def _covering(self, off, n):
        return [s for s in self.segments if s[0] < off + n and off < s[0] + s[1]]

    def map_range(self, off, n):
        """Map every unmapped segment of [off, off+n)."""
        for s in self._covering(off, n):
            if s[2] is None:
                s[2] = self.vmm.map(self.va + s[0], s[1])

    def unmap_except(self, keep):
        """Unmap every mapped segment that none of the (offset, length)
        ranges in keep overlaps."""
        for s in self.segments:
            if s[2] is not None and not any(o < s[0] + s[1] and s[0] < o + n for o, n in keep):
                h, s[2] = s[2], None
                self.vmm.unmap(self.va + s[0], s[1], h)


class TorchWeights:
    """The PyTorch backend: tensors matched to safetensors entries by name."""

    def __init__(self, tensors, files, threads=None, piece=None, keep_addresses=True, segment=None):
        import torch
        self.torch = torch
        self.threads_option = threads
        self.piece = piece or 8 << 20
        self.max_threads = threads or min(16, os.cpu_count() or 4)
        self.threads = self.max_threads
        self._files = [os.path.abspath(f) for f in files]
        index = {}
        for f in self._files:
            for name, e in safetensors_index(f).items():
                index.setdefault(name, (f,) + e)
        # One entry per storage: tied tensors share it.
        self.entries = {}  # storage data_ptr -> entry
        self.unmatched = []
        for name, t in tensors.items():
            e = index.get(name)
            if e is None:
                for prefix in ("model.", "module.", "_orig_mod."):
                    if name.startswith(prefix) and name[len(prefix):] in index:
                        e = index[name[len(prefix):]]
                        break
            if e is None or not t.is_cuda:
                self.unmatched.append(name)
                continue
            st = t.untyped_storage()
            ent = self.entries.setdefault(st.data_ptr(), {"name": name, "tensor": t, "file": e[0], "dtype": e[1],
                                                          "shape": e[2], "offset": e[3], "length": e[4], "aliases": []})
            if ent["tensor"] is not t and all(a is not t for a in ent["aliases"]):
                ent["aliases"].append(t)
        self.staging = None  # per worker: two (tensor, memoryview) slices of _block
        self._block = None
        self._host = None  # a _HostMemory that prepare() made for the next reload
        self.pinned_seconds = 0.0  # the last release's or reload's pinned allocation
        self._staging_lock = threading.Lock()
        self.released = []  # entries released, with their source path
        self.region = None
        if keep_addresses and self.entries:
            vmm = _vmm(torch)
            if vmm is not None:
                self._move_in(vmm, segment or self.SEGMENT)

    # Segments of the region's memory: a reload maps one ahead of the
    # uploads into it, and a tensor the release keeps keeps its segment.
    SEGMENT = 512 << 20

    def _move_in(self, vmm, segment):
        """Move every tensor that owns its whole allocation into a _Region,
        so that its address survives release and reload. Tensors sharing an
        allocation move together when they are the same view of it; others
        stay with PyTorch's allocator (their address may change)."""
        torch = self.torch
        movable = []
        for e in self.entries.values():
            t = e["tensor"]
            # The region is on the current device; tensors on others (a
            # process driving several GPUs) keep their allocations.
            if t.get_device() == vmm.device and self._check(e) is None and all(
                    a.dtype == t.dtype and list(a.shape) == list(t.shape) and a.storage_offset() == 0
                    and a.is_contiguous() for a in e["aliases"]):
                movable.append(e)
        if not movable:
            return
        try:
            region = _Region(torch, vmm, [e["length"] for e in movable], segment)
        except Exception as ex:
            log(f"the weights keep PyTorch's allocations ({ex!r})")
            return
        since_empty = 0
        with torch.no_grad():
            for e, off in zip(movable, region.offsets):
                t = e["tensor"]
                try:
                    try:
                        region.map_range(off, e["length"])
                    except Exception:
                        # The allocations already moved may still be cached.
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                        since_empty = 0
                        region.map_range(off, e["length"])
                except Exception as ex:
                    # Out of GPU memory, most likely: the weights moved so
                    # far keep their addresses, the rest keep PyTorch's
                    # allocations (and may move in a restore).
                    log(f"{e['name']} and the tensors after it keep PyTorch's allocations ({ex!r})")
                    break
                dst = region.flat[off:off + e["length"]]
                dst.copy_(self._flat(e))
                new = dst.view(t.dtype).view(t.shape)
                olds = []
                try:
                    for a in [t] + e["aliases"]:
                        olds.append((a, a.data))
                        a.data = new
                except Exception as ex:
                    for a, old in olds:
                        a.data = old
                    log(f"{e['name']} keeps PyTorch's allocation ({ex!r})")
                    continue
                e["region"] = off
                del olds
                # The old allocations go back to the driver as the region
                # fills: at most about a segment more than the weights.
                since_empty += e["length"]
                if since_empty >= region.segment:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    since_empty = 0
        torch.cuda.synchronize()
        # Segments no tensor moved into (after a failure) go back.
        region.unmap_except([(e["region"], e["length"]) for e in movable if "region" in e])
        torch.cuda.empty_cache()
        self.region = region
        n = sum(e["length"] for e in movable if "region" in e)
        log(f"{sum(1 for e in movable if 'region' in e)} tensors ({n / 1e9:.2f} GB) keep their GPU addresses across restores")

    def files(self):
        return sorted({e["file"] for e in self.entries.values()})

    def nbytes(self):
        return sum(e["length"] for e in self.entries.values())

    def _buffers(self, w):
        """Worker w's two pinned buffers: slices of one pinned allocation
        for all workers, made on the first piece."""
        with self._staging_lock:
            if self.staging is None:
                import ctypes
                torch, n = self.torch, self.piece
                t = time.monotonic()
                host, self._host = self._host, None
                if host is not None and host.n != 2 * self.threads * n:
                    host.free()
                    host = None
                block = _PinnedBlock(torch, 2 * self.threads * n, host)
                self.pinned_seconds += time.monotonic() - t
                base = block.addr
                self.staging = [[(block.tensor[(2 * i + k) * n:(2 * i + k + 1) * n],
                                  memoryview((ctypes.c_char * n).from_address(base + (2 * i + k) * n)).cast("B"))
                                 for k in range(2)] for i in range(self.threads)]
                self._block = block
            return self.staging[w]

    def prepare(self, ahead=True):
        """Ahead of a reload, while the driver may still be restoring the
        process's CUDA state (CUDA calls would wait for it): map and fault
        in the staging buffers' host memory, which then only needs
        registering. prepare(False) unmaps it again."""
        with self._staging_lock:
            if not ahead:
                if self._host is not None:
                    self._host.free()
                    self._host = None
                return
            if self.staging is not None or self._host is not None or not self.released:
                return
            self._size_threads(sum(e["length"] for e in self.released))
            self._host = _HostMemory(2 * self.threads * self.piece)

    def _size_threads(self, total):
        """Choose the threads for moving total bytes, unless the buffers are
        already pinned: pieces of 8 MiB (each piece costs a few Python steps
        under the GIL: with 2 MiB pieces a 1.1 GB upload took 2-3x longer on
        an H100), and one thread per 128 MiB of weights, 4 to 16, so that a
        small model pins less (two 8 MiB buffers a thread, 128 MiB for 8
        threads; their registration is on the restore's path, about 5 ms
        per 128 MiB; see prepare)."""
        if self.staging is not None:
            return
        if not self.threads_option:
            self.threads = min(self.max_threads, max(4, -(-total // (128 << 20))))

    def _drop_staging(self, zero):
        """Free the pinned buffers. A snapshot must not carry them: the
        driver keeps pinned memory in memfds, whose contents CRIU restores
        eagerly, before the process runs (about 1.7 GB/s), and the program
        has no other use for them. With zero, they are zeroed first, in case
        this torch cannot empty its pinned-memory cache: then they stay,
        but without weight bytes."""
        torch = self.torch
        torch.cuda.synchronize()
        block = self._block
        self.staging, self._block = None, None
        if block is not None:
            block.free(zero)
        if self._host is not None:
            self._host.free()
            self._host = None
        empty = getattr(getattr(torch, "_C", None), "_host_emptyCache", None)
        if empty is not None:
            empty()

    def _check(self, e):
        torch, t = self.torch, e["tensor"]
        st = t.untyped_storage()
        dt = _DTYPES.get(str(t.dtype).replace("torch.", ""))
        if dt != e["dtype"] or list(t.shape) != e["shape"]:
            return "dtype or shape differ from the file's"
        if "region" in e:
            return None  # checked when it moved in
        if t.storage_offset() != 0 or not t.is_contiguous() or st.nbytes() != e["length"]:
            return "the tensor does not own its whole allocation"
        if not st.resizable():
            return "its storage cannot be resized"
        return None

    def _pipeline(self, jobs, sink):
        """Read each job (path, file offset, length, dst offset, entry) in
        pieces into pinned buffers and hand them to sink(entry, dst_off,
        buffer[:n], stream) on the reading thread; return on completion.
        jobs may be a generator: the threads start on the first pieces while
        it makes the next (a reload allocates each tensor there)."""
        torch = self.torch
        q = queue.SimpleQueue()
        errors = []
        device = torch.cuda.current_device()

        def worker(w):
            fds = {}
            events = [None, None]
            k = 0
            try:
                with torch.cuda.device(device):
                    stream = torch.cuda.Stream()
                    while not errors:
                        job = q.get()
                        if job is None:
                            break
                        path, off, n, dst, e = job
                        buf, mv = self._buffers(w)[k]
                        if events[k] is not None:
                            events[k].synchronize()
                        fd = fds.get(path)
                        if fd is None:
                            fd = fds[path] = os.open(path, os.O_RDONLY)
                        got = 0
                        while got < n:
                            r = os.preadv(fd, [mv[got:n]], off + got)
                            if r <= 0:
                                raise OSError(f"{path}: short read at {off + got}")
                            got += r
                        with torch.cuda.stream(stream):
                            sink(e, dst, buf[:n], stream)
                            ev = torch.cuda.Event()
                            ev.record(stream)
                        events[k] = ev
                        k ^= 1
                    for ev in events:
                        if ev is not None:
                            ev.synchronize()
            except BaseException as ex:
                errors.append(ex)
            finally:
                for fd in fds.values():
                    os.close(fd)

        ts = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(self.threads)]
        for t in ts:
            t.start()
        try:
            for path, off, length, dst0, e in jobs:
                if errors:
                    break
                pos = 0
                while pos < length:
                    n = min(self.piece, length - pos)
                    q.put((path, off + pos, n, dst0 + pos, e))
                    pos += n
        except BaseException as ex:
            errors.append(ex)
        finally:
            for _ in ts:
                q.put(None)
            for t in ts:
                t.join()
        if errors:
            raise errors[0]

    def _flat(self, e):
        """A uint8 view of the entry's whole storage (its range of the region)."""
        torch = self.torch
        if "region" in e:
            return self.region.flat[e["region"]:e["region"] + e["length"]]
        st = e["tensor"].untyped_storage()
        return torch.empty(0, dtype=torch.uint8, device=e["tensor"].device).set_(st, 0, (st.nbytes(),))

    def release(self, sources):
        torch = self.torch
        cand, kept = [], {}
        for e in self.entries.values():
            src = sources.get(e["file"])
            why = "its file is not offered by gpuwarm" if src is None else self._check(e)
            if why:
                kept[e["name"]] = why
            else:
                cand.append((e, src))
        # Check every candidate's GPU bytes against its source before
        # freeing anything.
        diff = set()
        lock = threading.Lock()
        flats = {id(e): self._flat(e) for e, _ in cand}
        scratch = {}

        def compare(e, dst, buf, stream):
            s = scratch.get(threading.get_ident())
            if s is None:
                s = scratch[threading.get_ident()] = torch.empty(self.piece, dtype=torch.uint8, device=e["tensor"].device)
            n = buf.numel()
            s[:n].copy_(buf, non_blocking=True)
            if not torch.equal(s[:n], flats[id(e)][dst:dst + n]):
                with lock:
                    diff.add(id(e))

        self._size_threads(sum(e["length"] for e, _ in cand))
        try:
            self._pipeline([(src, e["offset"], e["length"], 0, e) for e, src in cand], compare)
        except BaseException:
            self._drop_staging(zero=True)  # the snapshot may still go ahead
            raise
        flats.clear()
        scratch.clear()
        out = []
        self.released = []
        for e, src in cand:
            if id(e) in diff:
                kept[e["name"]] = "its GPU bytes differ from the file's"
                continue
            e["source"] = src
            self.released.append(e)
            out.append({"name": e["name"], "file": src, "offset": e["offset"], "length": e["length"],
                        "dtype": e["dtype"], "shape": e["shape"]})
        torch.cuda.synchronize()
        for e in self.released:
            e["ptr"] = e["tensor"].data_ptr()
        if self.region is not None:
            # A segment goes only with all of its tensors.
            keep = [(e["region"], e["length"]) for e in self.entries.values()
                    if "region" in e and all(e is not r for r in self.released)]
            try:
                self.region.unmap_except(keep)
            except BaseException:
                # Part of the weights may be gone: put them back before the
                # program may run again.
                self._drop_staging(zero=True)
                self.reload({})
                raise
        for e in self.released:
            if "region" not in e:
                e["tensor"].untyped_storage().resize_(0)
        self._drop_staging(zero=True)
        torch.cuda.empty_cache()
        return out, kept

    def reload(self, paths):
        torch = self.torch
        flats = {}
        self.alloc_seconds = self.pinned_seconds = 0.0

        def jobs():
            # The region's tensors first, at their own addresses, each
            # segment mapped as the threads upload the tensors before it.
            # Then the others, allocated in the order of their old
            # addresses (the allocator then tends to hand the same ones
            # out again; how many moved is reported).
            for e in sorted(self.released, key=lambda e: (e.get("region", -1) < 0, e.get("region", 0), e.get("ptr", 0))):
                t = time.monotonic()
                if "region" in e:
                    self.region.map_range(e["region"], e["length"])
                else:
                    st = e["tensor"].untyped_storage()
                    if st.nbytes() != e["length"]:
                        st.resize_(e["length"])
                flats[id(e)] = self._flat(e)
                self.alloc_seconds += time.monotonic() - t
                yield (paths.get(e["source"], e["source"]), e["offset"], e["length"], 0, e)

        def upload(e, dst, buf, stream):
            flats[id(e)][dst:dst + buf.numel()].copy_(buf, non_blocking=True)

        # The buffers stay pinned after a reload: freeing pinned memory
        # stalls the program's first requests (about 50 ms for 256 MiB),
        # and the next release frees them before any checkpoint.
        self._size_threads(sum(e["length"] for e in self.released))
        try:
            self._pipeline(jobs(), upload)
        except BaseException:
            self._drop_staging(zero=False)
            raise
        torch.cuda.synchronize()
        self.moved = sum(1 for e in self.released if e.get("ptr") not in (None, e["tensor"].data_ptr()))
        n = sum(e["length"] for e in self.released)
        self.released = []
        return n


class _Off:
    def ready(self, timeout=None):
        pass


def attach(model, files, **options):
    """Offer the weights of model (an nn.Module, or a {name: tensor} dict)
    that were loaded from the safetensors files to gpuwarm. Returns an object
    whose ready() waits while they are away. Does nothing without
    GPUWARM_WEIGHTS in the environment.

    It moves the weights into address-keeping memory (see the module doc):
    call it before capturing CUDA graphs over them. options: threads and
    piece (the upload's), keep_addresses (False: leave the weights with
    PyTorch's allocator), segment (bytes of that memory mapped at a time)."""
    path = os.environ.get(ENV)
    if not path:
        return _Off()
    tensors = model
    module = None
    if hasattr(model, "state_dict") and hasattr(model, "register_forward_pre_hook"):
        module = model
        tensors = model.state_dict(keep_vars=True)
    backend = TorchWeights(tensors, files, **options)
    if backend.unmatched:
        log(f"{len(backend.unmatched)} tensors are not in the files and stay in the snapshot")
    hooks = Hooks(backend, path)
    if module is not None:
        import torch

        @torch._dynamo.disable
        def gate(_mod, _args):
            hooks.ready()

        module.register_forward_pre_hook(gate)
    return hooks
