#!/usr/bin/python3
"""PyTorch half of fleettune's side-by-side MobileNetV2 training benchmark.

Run with Debian's interpreter (it has torch and torchvision):

    /usr/bin/python3 bench/pytorch_vision.py --threads 2 --batch 8 \
        --resolution 128 --steps 10 --warmup 3 --json

Model: torchvision.models.mobilenet_v2(num_classes=10) (width 1.0, default
initialization). Optimizer: SGD(lr=0.01, momentum=0.9) over every parameter.
One fixed random batch (x ~ U[0,1) float32 [batch, 3, res, res], labels int64
uniform in 0..classes-1), torch.manual_seed(seed) before each mode's setup.

A timed step is: optimizer.zero_grad(set_to_none=True); forward;
F.cross_entropy (mean); backward; optimizer.step(). `ms_per_step` is the
median over --steps timed steps (time.perf_counter) after --warmup.

Modes (same as bench/vision_bench.cc):
  full       model.train(): BatchNorm with batch statistics (running stats
             updated), classifier dropout 0.2.
  frozen-bn  model.eval(): BatchNorm uses the frozen running statistics, no
             dropout; every parameter (BatchNorm affine included) is trained.

`train_bytes`: activations saved for backward (saved_tensors_hooks, by
storage, parameters and the batch excluded) + gradients + momentum buffers +
the batch, as in bench/pytorch_mlp.py; temporaries and allocator caching are
not counted.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

MODES = ("full", "frozen-bn")
LR = 0.01
MOMENTUM = 0.9


def setup(mode, args):
    torch.manual_seed(args.seed)
    model = torchvision.models.mobilenet_v2(num_classes=args.classes,
                                            width_mult=args.width_mult)
    if mode == "full":
        model.train()
    elif mode == "frozen-bn":
        model.eval()
    else:
        raise ValueError(mode)
    x = torch.rand(args.batch, 3, args.resolution, args.resolution)
    labels = torch.randint(0, args.classes, (args.batch,), dtype=torch.int64)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    return model, opt, x, labels


def train_step(model, opt, x, labels):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), labels)
    loss.backward()
    opt.step()
    return loss


def _nbytes(t):
    return t.numel() * t.element_size()


def _storage_key(t):
    s = t.storage()
    return s.data_ptr(), s.nbytes()


def measure_bytes(model, opt, x, labels):
    """One untimed step with a saved-tensor hook; returns the byte breakdown."""
    excluded = {_storage_key(p) for p in model.parameters()}
    excluded.add(_storage_key(x))
    excluded.add(_storage_key(labels))
    saved = {}

    def pack(t):
        k = _storage_key(t)
        if k not in excluded:
            saved[k] = k[1]
        return t

    opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), labels)
    loss.backward()
    grad_bytes = sum(_nbytes(p.grad) for p in model.parameters() if p.grad is not None)
    opt.step()
    optim_bytes = sum(_nbytes(s["momentum_buffer"]) for s in opt.state.values()
                      if s.get("momentum_buffer") is not None)
    out = {
        "saved_bytes": sum(saved.values()),
        "grad_bytes": grad_bytes,
        "optim_bytes": optim_bytes,
        "input_bytes": _nbytes(x) + _nbytes(labels),
        "param_bytes": sum(_nbytes(p) for p in model.parameters()),
    }
    out["train_bytes"] = (out["saved_bytes"] + out["grad_bytes"]
                          + out["optim_bytes"] + out["input_bytes"])
    return out


def bench_mode(mode, args):
    model, opt, x, labels = setup(mode, args)
    mem = measure_bytes(model, opt, x, labels)
    for _ in range(args.warmup):
        train_step(model, opt, x, labels)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        train_step(model, opt, x, labels)
        times.append(time.perf_counter() - t0)
    res = {
        "framework": "pytorch",
        "model": "mobilenet_v2",
        "mode": mode,
        "ms_per_step": round(statistics.median(times) * 1e3, 3),
        "train_bytes": mem["train_bytes"],
        "threads": args.threads,
        "batch": args.batch,
        "resolution": args.resolution,
        "classes": args.classes,
        "width_mult": args.width_mult,
    }
    res.update({k: v for k, v in mem.items() if k != "train_bytes"})
    res.update({"steps": args.steps, "warmup": args.warmup,
                "torch_version": torch.__version__})
    return res


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--width_mult", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", action="store_true", help="one JSON object per mode per line")
    args = ap.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    for m in args.modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}")
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    results = [bench_mode(m, args) for m in args.modes]
    if args.json:
        for r in results:
            print(json.dumps(r), flush=True)
        return
    print(f"pytorch {torch.__version__}  threads={args.threads} batch={args.batch} "
          f"resolution={args.resolution} classes={args.classes} "
          f"steps={args.steps} warmup={args.warmup}")
    print("%-10s %9s %12s %10s %10s %10s %10s" % (
        "mode", "ms/step", "train_bytes", "saved", "grads", "optim", "input"))
    for r in results:
        print("%-10s %9.3f %12d %10d %10d %10d %10d" % (
            r["mode"], r["ms_per_step"], r["train_bytes"], r["saved_bytes"],
            r["grad_bytes"], r["optim_bytes"], r["input_bytes"]))


if __name__ == "__main__":
    main()
