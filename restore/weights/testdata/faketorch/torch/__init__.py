"""Just enough of torch's API, on host memory, for gpuwarm_weights's
TorchWeights to run without a GPU (restore/weights tests): storages that
resize, uint8 views, copies, pinned "buffers", streams and events that do
nothing. Not a model of CUDA: a test of the library's own logic."""
import ctypes
import threading
from contextlib import contextmanager

uint8 = "torch.uint8"


class _Dtype(str):
    pass


class UntypedStorage:
    def __init__(self, n):
        self._buf, self._n = None, 0
        self.resize_(n)

    def data_ptr(self):
        return ctypes.addressof(self._buf) if self._n else 0

    def nbytes(self):
        return self._n

    def resizable(self):
        return True

    def resize_(self, n):
        old, oldn = self._buf, self._n
        self._buf = (ctypes.c_ubyte * n)() if n else None
        self._n = n
        if old is not None and n:
            ctypes.memmove(self._buf, old, min(n, oldn))


class Tensor:
    def __init__(self, storage, offset, numel, dtype=uint8, shape=None, device="cuda"):
        self._st, self._off, self._numel = storage, offset, numel
        self.dtype = _Dtype(dtype)
        self.shape = list(shape) if shape is not None else [numel]
        self.device = device
        self.is_cuda = device == "cuda"

    def untyped_storage(self):
        return self._st

    def get_device(self):
        return 0 if self.is_cuda else -1

    def storage_offset(self):
        return self._off

    def is_contiguous(self):
        return True

    def numel(self):
        return self._numel

    def data_ptr(self):
        return self._st.data_ptr() + self._off

    def __getitem__(self, sl):
        start, stop, _ = sl.indices(self._numel)
        return Tensor(self._st, self._off + start, max(0, stop - start), self.dtype, None, self.device)

    def _bytes(self):
        if self._numel > 0 and self._off + self._numel > self._st.nbytes():
            raise RuntimeError("fake torch: access past the storage (released?)")
        return ctypes.string_at(self.data_ptr(), self._numel) if self._numel else b""

    def copy_(self, src, non_blocking=False):
        if src.numel() != self._numel:
            raise RuntimeError("fake torch: copy_ of unequal sizes")
        ctypes.memmove(self.data_ptr(), src._bytes(), self._numel)
        return self

    def zero_(self):
        ctypes.memset(self.data_ptr(), 0, self._numel)
        return self

    def set_(self, storage, offset, size):
        self._st, self._off, self._numel = storage, offset, size[0]
        self.shape = [size[0]]
        return self

    def view(self, what):
        """A dtype (bytes stay bytes: the tests' tensors are uint8) or a shape."""
        t = Tensor(self._st, self._off, self._numel, self.dtype, self.shape, self.device)
        if isinstance(what, (list, tuple)):
            t.shape = list(what)
        else:
            t.dtype = _Dtype(what)
        return t

    @property
    def data(self):
        return Tensor(self._st, self._off, self._numel, self.dtype, self.shape, self.device)

    @data.setter
    def data(self, other):
        self._st, self._off, self._numel = other._st, other._off, other._numel
        self.dtype, self.shape = other.dtype, list(other.shape)


pinned = []  # every pinned tensor made, for the tests


class _External:
    """The storage of a tensor over memory it does not own (frombuffer)."""

    def __init__(self, buf):
        self._buf, self._n = buf, ctypes.sizeof(buf)

    def data_ptr(self):
        return ctypes.addressof(self._buf)

    def nbytes(self):
        return self._n

    def resizable(self):
        return False


def as_tensor(obj, device="cuda"):
    """Device memory described by __cuda_array_interface__ (here: host
    memory the test's fake driver reserved)."""
    cai = obj.__cuda_array_interface__
    n = cai["shape"][0]
    buf = (ctypes.c_ubyte * n).from_address(cai["data"][0])
    return Tensor(_External(buf), 0, n, uint8, None, device)


@contextmanager
def no_grad():
    yield


def frombuffer(buf, dtype=uint8):
    n = ctypes.sizeof(buf)
    return Tensor(_External(buf), 0, n, dtype, None, "cpu")


def empty(n, dtype=uint8, pin_memory=False, device="cpu"):
    t = Tensor(UntypedStorage(n), 0, n, dtype, None, device)
    if pin_memory:
        pinned.append(t)
    return t


def tensor_from_bytes(b, dtype, shape):
    """Test helper: a "cuda" tensor holding b."""
    t = Tensor(UntypedStorage(len(b)), 0, len(b), dtype, shape, "cuda")
    ctypes.memmove(t.data_ptr(), b, len(b))
    return t


def equal(a, b):
    return a._bytes() == b._bytes()


class _Cudart:
    """Host registration, recorded: registered maps address -> bytes."""

    def __init__(self):
        self.registered, self.registrations, self.fail = {}, 0, False

    def cudaHostRegister(self, addr, n, flags):
        if self.fail:
            return 1
        self.registered[addr] = n
        self.registrations += 1
        return 0

    def cudaHostUnregister(self, addr):
        return 0 if self.registered.pop(addr, None) is not None else 1


class _Cuda:
    allocations = 0
    _rt = _Cudart()

    def cudart(self):
        return self._rt

    def current_device(self):
        return 0

    @contextmanager
    def device(self, d):
        yield

    def Stream(self):
        return object()

    @contextmanager
    def stream(self, s):
        yield

    class Event:
        def record(self, stream=None):
            pass

        def synchronize(self):
            pass

    def synchronize(self):
        pass

    def empty_cache(self):
        pass


cuda = _Cuda()


class _CNamespace:
    host_empties = 0  # calls of _host_emptyCache

    def _host_emptyCache(self):
        self.host_empties += 1


_C = _CNamespace()


class _Dynamo:
    @staticmethod
    def disable(f):
        return f


_dynamo = _Dynamo()
