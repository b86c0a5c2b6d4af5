"""TorchWeights (gpuwarm_weights.py) over the fake torch beside this file:
release checks every tensor against its file and frees only those that
match; reload fills them again from the paths it is given, piece by piece
through the threads, reports its allocation time and moved tensors, and
fails on a short file. With the driver's virtual memory (a fake driver
here), every tensor keeps its address: a release unmaps the segments of
what it released, a reload maps them again at the same addresses. Run by
restore/weights's Go tests: python3 torchweights_test.py LIBDIR."""
import ctypes
import json
import os
import random
import struct
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "faketorch"))
sys.path.insert(0, sys.argv[1])

import torch  # noqa: E402  (the fake)
import gpuwarm_weights as gw  # noqa: E402


def write_safetensors(path, tensors):
    hdr, pos, body = {}, 0, b""
    for name, b in tensors.items():
        hdr[name] = {"dtype": "U8", "shape": [len(b)], "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
        body += b
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + body)


def fails_with_oserror(call, what):
    try:
        call()
    except OSError:
        return
    raise AssertionError(f"{what} succeeded")


class FakeVMM:
    """The driver's virtual memory on host memory: a reservation is a
    buffer; unmapping poisons its bytes (the memory is gone), mapping
    fills them with garbage (new memory), so only an upload makes them
    right again."""
    granularity = 4096
    device = 0

    def __init__(self, limit=None):
        self.bufs, self.maps, self.fail_map, self.mapped_calls = {}, {}, False, 0
        self.limit = limit  # bytes mapped at most: the GPU's memory

    def reserve(self, n):
        b = (ctypes.c_ubyte * n)()
        self.bufs[ctypes.addressof(b)] = b
        return ctypes.addressof(b)

    def free(self, va, n):
        pass

    def map(self, va, n):
        if self.fail_map or (self.limit is not None and sum(self.maps.values()) + n > self.limit):
            raise RuntimeError("cuMemCreate failed: CUresult 2")
        assert all(not (v < va + n and va < v + m) for v, m in self.maps.items()), "mapped twice"
        ctypes.memset(va, 0xAB, n)
        self.maps[va] = n
        self.mapped_calls += 1
        return va

    def unmap(self, va, n, h):
        assert self.maps.pop(va) == n
        ctypes.memset(va, 0xEE, n)


def region_checks(data, f):
    """Addresses kept: released tensors' segments unmapped, a kept
    tensor's segment mapped, every tensor back at its address with its
    bytes; a reload whose mapping fails raises and may be asked again."""
    vmm = FakeVMM()
    gw._vmm = lambda torch: vmm
    tensors = {name: torch.tensor_from_bytes(b, torch.uint8, [len(b)]) for name, b in data.items()}
    mod = bytearray(data["modified.bias"])
    mod[7] = 1
    tensors["modified.bias"] = torch.tensor_from_bytes(bytes(mod), torch.uint8, [len(mod)])
    tied = tensors["layer3.weight"]
    tensors["tied.weight"] = tied  # the same tensor under two names
    w = gw.TorchWeights(tensors, [f], threads=3, piece=4096, segment=8192)
    r = w.region
    assert r is not None and r.size % vmm.granularity == 0, "no region"
    addrs = {n: t.data_ptr() for n, t in tensors.items()}
    for n, t in tensors.items():
        assert r.va <= addrs[n] < r.va + r.size, f"{n} not moved into the region"
        assert t._bytes() == (bytes(mod) if n == "modified.bias" else data[n.replace("tied", "layer3")]), n
    assert len(set(addrs.values())) == len(tensors) - 1, "tensors overlap"
    assert sum(vmm.maps.values()) == r.size
    out, kept = w.release({f: f})
    assert "modified.bias" in kept and len(out) == len(data) - 1, (kept, len(out))
    me = [e for e in w.entries.values() if e["name"] == "modified.bias"][0]
    seg = [s for s in r.segments if s[0] <= me["region"] < s[0] + s[1]][0]
    assert seg[2] is not None, "the kept tensor's segment was unmapped"
    assert tensors["modified.bias"]._bytes() == bytes(mod), "the kept tensor lost its bytes"
    unmapped = [s for s in r.segments if s[2] is None]
    assert len(unmapped) >= len(r.segments) - 2, (len(unmapped), len(r.segments))
    assert w.staging is None
    vmm.fail_map = True
    w.prepare()
    try:
        w.reload({f: f})
        raise AssertionError("a reload whose mapping fails succeeded")
    except RuntimeError:
        pass
    assert w._host is None and w.staging is None, "a failed reload kept its prepared memory"
    vmm.fail_map = False
    n = w.reload({f: f})
    assert n == sum(len(b) for k, b in data.items() if k != "modified.bias"), n
    assert w.moved == 0, w.moved
    for name, t in tensors.items():
        assert t.data_ptr() == addrs[name], f"{name} moved"
        assert t._bytes() == (bytes(mod) if name == "modified.bias" else data[name.replace("tied", "layer3")]), name
    assert sum(vmm.maps.values()) == r.size, "not every segment mapped again"
    # A GPU without room for all of the region: the tensors that fit keep
    # their addresses, the others PyTorch's allocations; both kinds are
    # released and reloaded. No room at all: no region.
    t4 = {n: torch.tensor_from_bytes(data[n], torch.uint8, [len(data[n])]) for n in data}
    t4["layer0.weight"].get_device = lambda: 1  # another GPU's: not in this one's region
    vmm2 = FakeVMM(limit=sum(len(b) for b in data.values()) // 2)
    gw._vmm = lambda torch: vmm2
    w4 = gw.TorchWeights(t4, [f], threads=2, piece=4096, segment=8192)
    r4 = w4.region
    inside = {n for n, t in t4.items() if r4.va <= t.data_ptr() < r4.va + r4.size}
    assert 0 < len(inside) < len(t4), f"{len(inside)} of {len(t4)} tensors in a region half their size"
    assert "layer0.weight" not in inside, "a tensor of another device moved into the region"
    assert sum(vmm2.maps.values()) <= vmm2.limit
    out4, kept4 = w4.release({f: f})
    assert len(out4) == len(data) and not kept4, (len(out4), kept4)
    assert all(t4[n].untyped_storage().nbytes() == 0 for n in t4 if n not in inside), "an allocator tensor kept its memory"
    before = {n: t4[n].data_ptr() for n in inside}
    assert w4.reload({f: f}) == sum(len(b) for b in data.values())
    for n, t in t4.items():
        assert t._bytes() == data[n], n
    assert all(t4[n].data_ptr() == before[n] for n in inside), "a region tensor moved"
    vmm3 = FakeVMM(limit=0)
    gw._vmm = lambda torch: vmm3
    assert gw.TorchWeights({n: torch.tensor_from_bytes(data[n], torch.uint8, [len(data[n])]) for n in data}, [f]).region is None
    # keep_addresses=False: PyTorch's allocator, as without the driver's API.
    t3 = {n: torch.tensor_from_bytes(data[n], torch.uint8, [len(data[n])]) for n in data}
    assert gw.TorchWeights(t3, [f], keep_addresses=False).region is None
    gw._vmm = lambda torch: None


def main():
    gw._vmm = lambda torch: None  # first without the driver's virtual memory
    rnd = random.Random(7)
    data = {f"layer{i}.weight": bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 50000))) for i in range(12)}
    data["modified.bias"] = bytes(300)
    d = tempfile.mkdtemp()
    f = os.path.join(d, "model.safetensors")
    write_safetensors(f, data)
    tensors = {name: torch.tensor_from_bytes(b, torch.uint8, [len(b)]) for name, b in data.items()}
    mod = bytearray(data["modified.bias"])
    mod[7] = 1
    tensors["modified.bias"] = torch.tensor_from_bytes(bytes(mod), torch.uint8, [len(mod)])
    # Small pieces and few threads: many pieces per tensor, all threads busy.
    w = gw.TorchWeights(tensors, [f], threads=3, piece=4096)
    assert w.files() == [f], w.files()

    out, kept = w.release({f: f})
    names = sorted(x["name"] for x in out)
    assert names == sorted(n for n in data if n != "modified.bias"), names
    assert "modified.bias" in kept and "differ" in kept["modified.bias"], kept
    for n in names:
        assert tensors[n].untyped_storage().nbytes() == 0, n
    assert tensors["modified.bias"].untyped_storage().nbytes() == len(mod)
    # The pinned buffers are one mapping of our own, registered with CUDA,
    # unregistered and unmapped by the release: no snapshot carries them.
    rt = torch.cuda.cudart()
    assert w.staging is None and torch._C.host_empties == 1, (w.staging, torch._C.host_empties)
    assert rt.registrations == 1 and not rt.registered and not torch.pinned, (rt.registrations, rt.registered, torch.pinned)

    # A short file fails the reload (and it may be asked again).
    short = os.path.join(d, "short.safetensors")
    with open(f, "rb") as src, open(short, "wb") as dst:
        b = src.read()
        dst.write(b[:len(b) // 2])
    fails_with_oserror(lambda: w.reload({f: short}), "a reload from a short file")

    assert w.staging is None, "a failed reload kept its pinned buffers"
    # prepare() (while CUDA restores) maps and faults in the staging memory
    # that the reload then only registers.
    w.prepare()
    assert w._host is not None
    w.prepare(False)  # a session that asked no reload
    assert w._host is None, "prepared memory kept without a reload"
    w.prepare()
    prepared = w._host.addr
    n = w.reload({f: f})
    assert prepared in rt.registered, "the reload did not register the prepared memory"
    assert n == sum(len(data[x]) for x in names), n
    # Kept pinned after a reload (freeing them would stall the first
    # requests); the next release frees them.
    assert w.staging is not None and torch._C.host_empties == 2, torch._C.host_empties
    for name in names:
        assert tensors[name]._bytes() == data[name], name
    assert tensors["modified.bias"]._bytes() == bytes(mod)
    assert w.alloc_seconds >= 0 and isinstance(w.moved, int) and 0 <= w.moved <= len(names), (w.alloc_seconds, w.moved)
    # Nothing left to reload.
    assert w.reload({f: f}) == 0
    # A release that fails (a short source) frees nothing of the tensors
    # and leaves no pinned buffer, nor weight bytes in one, behind.
    # Where CUDA cannot register host memory, torch's pinned memory serves,
    # zeroed when freed (torch may keep it cached).
    assert len(rt.registered) == 1, f"{len(rt.registered)} registered blocks, want the reload's (kept)"
    rt.fail = True
    t2 = {n: torch.tensor_from_bytes(data[n], torch.uint8, [len(data[n])]) for n in names}
    w2 = gw.TorchWeights(t2, [f], threads=3, piece=4096)
    fails_with_oserror(lambda: w2.release({f: short}), "a release from a short file")
    assert w2.staging is None, "a failed release kept its pinned buffers"
    assert len(torch.pinned) == 1, f"{len(torch.pinned)} pinned allocations, want one for all threads"
    assert all(b._bytes() == bytes(len(b._bytes())) for b in torch.pinned), "weight bytes left in pinned memory"
    for n in names:
        assert t2[n]._bytes() == data[n], n
    # Threads (and so pinned memory): one per 128 MiB, 4 to 16, unless the
    # program chose; pieces of 8 MiB.
    tiny, small, large, chosen = (gw.TorchWeights({}, [f]), gw.TorchWeights({}, [f]), gw.TorchWeights({}, [f]),
                                  gw.TorchWeights({}, [f], threads=16))
    tiny.max_threads = small.max_threads = large.max_threads = 16
    for b, n in ((tiny, 1 << 20), (small, 1 << 30), (large, 16 << 30), (chosen, 1 << 30)):
        b._size_threads(n)
    got = (tiny.threads, small.threads, large.threads, chosen.threads, small.piece, large.piece)
    assert got == (4, 8, 16, 16, 8 << 20, 8 << 20), got
    rt.fail = False
    region_checks(data, f)
    print("ok", len(names), "tensors released and reloaded,", w.moved, "moved; addresses kept with the region")


if __name__ == "__main__":
    main()
