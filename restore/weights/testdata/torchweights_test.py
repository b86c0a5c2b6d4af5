"""TorchWeights (gpuwarm_weights.py) over the fake torch beside this file:
release checks every tensor against its file and frees only those that
match; reload fills them again from the paths it is given, piece by piece
through the threads, reports its allocation time and moved tensors, and
fails on a short file. Run by restore/weights's Go tests:
python3 torchweights_test.py LIBDIR."""
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


def main():
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
    n = w.reload({f: f})
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
    print("ok", len(names), "tensors released and reloaded,", w.moved, "moved")


if __name__ == "__main__":
    main()
