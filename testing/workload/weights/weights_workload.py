#!/usr/bin/env python3
"""A workload that speaks gpuwarm's weights protocol without a GPU (make test).

usage: weights_workload.py FILE.safetensors...

Holds every tensor of the files in memory, as a model holds its weights on a
GPU, through gpuwarm_weights.Hooks (the library's protocol part) with a CPU
backend. Tensors named "modified.*" are changed after loading: their bytes
differ from the file's, so they must stay in the snapshot. Prints
"ready <sha256 of all tensors>"; on SIGUSR1 prints "checksum <sha256>",
after waiting while the weights are away.
"""
import hashlib
import os
import signal
import sys
import time

import gpuwarm_weights as gw


def read(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        b = f.read(n)
    if len(b) != n:
        raise OSError(f"{path}: {len(b)} of {n} bytes at {off}")
    return b


class CPUWeights:
    def __init__(self, files):
        self._files = [os.path.abspath(f) for f in files]
        self.t = {}
        for f in self._files:
            for name, (dt, shape, off, n) in sorted(gw.safetensors_index(f).items()):
                self.t[name] = {"file": f, "offset": off, "length": n, "dtype": dt, "shape": shape,
                                "data": bytearray(read(f, off, n))}
        for name, e in self.t.items():
            if name.startswith("modified"):
                e["data"][0] ^= 0xFF

    def files(self):
        return self._files

    def nbytes(self):
        return sum(e["length"] for e in self.t.values())

    def release(self, sources):
        out, kept = [], {}
        for name, e in self.t.items():
            src = sources.get(e["file"])
            if src is None:
                kept[name] = "its file is not offered by gpuwarm"
            elif read(src, e["offset"], e["length"]) != e["data"]:
                kept[name] = "its bytes differ from the file's"
            else:
                out.append({"name": name, "file": src, "offset": e["offset"], "length": e["length"],
                            "dtype": e["dtype"], "shape": e["shape"]})
        for x in out:
            e = self.t[x["name"]]
            e["data"], e["source"] = None, x["file"]
        return out, kept

    def reload(self, paths):
        n = 0
        for e in self.t.values():
            if e["data"] is None:
                e["data"] = bytearray(read(paths.get(e["source"], e["source"]), e["offset"], e["length"]))
                n += e["length"]
        return n

    def checksum(self):
        h = hashlib.sha256()
        for name in sorted(self.t):
            h.update(self.t[name]["data"])
        return h.hexdigest()


def main():
    w = CPUWeights(sys.argv[1:])
    hooks = gw.Hooks(w, os.environ[gw.ENV])

    def answer(*_):
        hooks.ready()
        print(f"checksum {w.checksum()}", flush=True)

    signal.signal(signal.SIGUSR1, answer)
    print(f"ready {w.checksum()}", flush=True)
    while True:
        # Not signal.pause(): the signal may reach the library's thread,
        # and the handler runs only once the main thread wakes.
        time.sleep(0.05)


if __name__ == "__main__":
    main()
