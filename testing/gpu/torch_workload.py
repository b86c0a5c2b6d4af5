#!/usr/bin/env python3
"""gpuwarm's PyTorch test workload.

make:  torch_workload.py --make DIR --gb 1.0 [--hidden 8192]
       writes an MLP of bf16 weights as safetensors shards into DIR.
serve: torch_workload.py --weights DIR [--no-compile] [--weights-lib] [--cuda-graph]
       loads the shards (from a gpuwarm mount), moves them to the GPU,
       torch.compile()s and warms the model up, prints
       "ready <seconds> <gpu bytes>", then answers requests on stdin:
       "infer N" -> sha256 of the output for the input seeded with N
       (bit-identical before a snapshot and after a restore), "exit";
       SIGUSR1 prints "answer <infer 42>". With --weights-lib the weights
       are offered to gpuwarm through gpuwarm_weights (restore/weights):
       released before a snapshot, uploaded from the mount after a restore.
       With --cuda-graph the answers come from a CUDA graph captured over
       the weights (a restore must put them back at their addresses).
h2d:   torch_workload.py --h2d GB
       prints "h2d pinned <GB/s> pageable <GB/s>", the copy ceilings.
"""
import argparse
import hashlib
import os
import sys
import time

T0 = time.time()


def make(args):
    import torch
    from safetensors.torch import save_file
    h = args.hidden
    layers = max(1, round(args.gb * 1e9 / (h * h * 2)))
    os.makedirs(args.make, exist_ok=True)
    g = torch.Generator(device="cuda").manual_seed(1234)
    per_shard = 4
    for s in range(0, layers, per_shard):
        shard = {}
        for i in range(s, min(layers, s + per_shard)):
            w = torch.randn(h, h, generator=g, device="cuda", dtype=torch.float32) * (1.0 / h ** 0.5)
            shard[f"layer.{i:04d}.weight"] = w.to(torch.bfloat16).cpu()
        save_file(shard, os.path.join(args.make, f"model-{s // per_shard:05d}.safetensors"))
    print(f"made {layers} layers of {h}x{h} bf16 ({layers * h * h * 2 / 1e9:.2f} GB) in {args.make}", flush=True)


def serve(args):
    import torch
    from safetensors.torch import load_file
    files = sorted(f for f in os.listdir(args.weights) if f.endswith(".safetensors"))
    weights = {}
    for f in files:
        weights.update(load_file(os.path.join(args.weights, f), device="cuda"))
    ws = [weights[k] for k in sorted(weights)]
    gpu_bytes = sum(w.numel() * w.element_size() for w in ws)
    gw = None
    if args.weights_lib:
        import gpuwarm_weights
        gw = gpuwarm_weights.attach(weights, [os.path.join(args.weights, f) for f in files])
    h = ws[0].shape[0]

    def forward(x):
        for w in ws:
            x = torch.nn.functional.gelu(torch.nn.functional.linear(x, w))
        return x

    model = forward if args.no_compile else torch.compile(forward)
    graph = {}

    def infer(seed):
        if gw is not None:
            gw.ready()
        g = torch.Generator(device="cuda").manual_seed(seed)
        x = torch.randn(args.batch, h, generator=g, device="cuda", dtype=torch.bfloat16)
        if graph:
            graph["x"].copy_(x)
            graph["g"].replay()
            y = graph["y"]
        else:
            with torch.no_grad():
                y = model(x)
        torch.cuda.synchronize()
        return hashlib.sha256(y.float().cpu().numpy().tobytes()).hexdigest()

    for s in range(3):
        infer(s)
    if args.cuda_graph:
        # Answers come from a CUDA graph captured over the weights, as
        # inference servers run: the graph holds the weights' addresses,
        # so a restore that put one elsewhere would answer wrong.
        sx = torch.zeros(args.batch, h, device="cuda", dtype=torch.bfloat16)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            model(sx)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g), torch.no_grad():
            sy = model(sx)
        graph.update(x=sx, y=sy, g=g)
        infer(0)
    # Ready for a snapshot: torch.compile's worker pool (default settings)
    # has done its job; its idle processes map NVIDIA devices without a
    # CUDA context, which no checkpoint can carry. The program shuts it
    # down, as a snapshot-aware program does before it waits for work.
    try:
        from torch._inductor import async_compile
        async_compile.shutdown_compile_workers()
    except Exception as e:  # older torch: nothing to shut down
        print(f"note: compile workers: {e}", file=sys.stderr)
    # SIGUSR1 answers "infer 42" on stdout: a workload whose stdin is not
    # ours (a container's, restored from a snapshot) is asked this way.
    import signal
    signal.signal(signal.SIGUSR1, lambda *_: print(f"answer {infer(42)}", flush=True))
    print(f"ready {time.time() - T0:.3f} {gpu_bytes}", flush=True)
    for line in sys.stdin:
        req = line.split()
        if not req:
            continue
        if req[0] == "infer":
            print(infer(int(req[1])), flush=True)
        elif req[0] == "exit":
            print("bye", flush=True)
            return
        else:
            print(f"error: unknown request {line.strip()!r}", flush=True)
    # stdin closed: keep the model resident until killed. Not signal.pause():
    # the kernel may hand SIGUSR1 to another thread (the weights library's,
    # torch's), and Python runs the handler only once the main thread
    # wakes, which pause() then never does.
    while True:
        time.sleep(0.05)


def h2d(args):
    import torch
    n = int(args.h2d * 1e9)
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    out = []
    for pin in (True, False):
        host = torch.ones(n, dtype=torch.uint8, pin_memory=pin)
        dev.copy_(host)
        torch.cuda.synchronize()
        t = time.time()
        for _ in range(3):
            dev.copy_(host, non_blocking=pin)
        torch.cuda.synchronize()
        out.append(3 * n / 1e9 / (time.time() - t))
        del host
    print(f"h2d pinned {out[0]:.1f} pageable {out[1]:.1f}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--make")
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--hidden", type=int, default=8192)
    p.add_argument("--weights")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--weights-lib", action="store_true")
    p.add_argument("--cuda-graph", action="store_true")
    p.add_argument("--h2d", type=float)
    args = p.parse_args()
    if args.h2d:
        h2d(args)
    elif args.make:
        make(args)
    elif args.weights:
        serve(args)
    else:
        p.error("--make or --weights")


if __name__ == "__main__":
    main()
