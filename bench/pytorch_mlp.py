#!/usr/bin/python3
"""PyTorch half of fleettune's side-by-side MLP training benchmark.

Run with Debian's interpreter (it has torch):

    /usr/bin/python3 bench/pytorch_mlp.py --threads 2 --batch 64 \
        --sizes 784,512,512,10 --steps 200 --warmup 20 --json

Model: nn.Sequential of Linear layers with ReLU between them (none after the
last).  Optimizer: SGD(lr=0.01, momentum=0.9).  One fixed random batch
(x ~ U[0,1) float32 [batch, sizes[0]], labels int64 uniform in 0..sizes[-1]-1),
torch.manual_seed(seed) before building each mode's model and data.

A timed step is: optimizer.zero_grad(set_to_none=True); forward;
F.cross_entropy (mean); backward; optimizer.step().  Each step is timed with
time.perf_counter; `ms_per_step` is the median over the --steps timed steps,
after --warmup untimed steps.

Modes:
  full     all parameters trainable.
  frozen1  the first Linear's weight and bias have requires_grad=False and are
           not given to the optimizer.

`train_bytes` (bytes) is the training-specific memory of one step, measured on
a separate, untimed step:
  saved_bytes  activations saved for backward: every tensor passed to the pack
               hook of torch.autograd.graph.saved_tensors_hooks during forward
               + loss, deduplicated by storage (data_ptr), summed as the
               storage's full nbytes.  Storages that belong to the parameters
               (e.g. the weight addmm saves for the input gradient) or to the
               input batch are excluded here, since they are counted elsewhere
               or are not training overhead.
  grad_bytes   sum of p.grad's bytes over parameters that received a gradient
               (after backward, before the next zero_grad).
  optim_bytes  sum of SGD momentum_buffer bytes (after optimizer.step()).
  input_bytes  bytes of x + bytes of labels (labels are int64 in PyTorch).
  train_bytes = saved_bytes + grad_bytes + optim_bytes + input_bytes.
Parameter memory itself (param_bytes, reported separately) is NOT in
train_bytes, nor are transient temporaries of backward (e.g. the gradient of
an activation that is freed once consumed), allocator caching or the Python/
libtorch runtime footprint.

With --json: one JSON object per mode per line, with the fields framework,
mode, ms_per_step, train_bytes, threads, batch, sizes, plus the breakdown
(saved_bytes, grad_bytes, optim_bytes, input_bytes, param_bytes) and steps/
warmup.  Without it: a readable table.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("full", "frozen1")
LR = 0.01
MOMENTUM = 0.9


def build_mlp(sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def setup(mode, sizes, batch, seed):
    torch.manual_seed(seed)
    model = build_mlp(sizes)
    x = torch.rand(batch, sizes[0], dtype=torch.float32)
    labels = torch.randint(0, sizes[-1], (batch,), dtype=torch.int64)
    if mode == "frozen1":
        first = model[0]
        first.weight.requires_grad_(False)
        first.bias.requires_grad_(False)
    elif mode != "full":
        raise ValueError(mode)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    return model, opt, x, labels


def train_step(model, opt, x, labels):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), labels)
    loss.backward()
    opt.step()
    return loss


def _nbytes(t):
    # Tensor.nbytes is missing from some torch 1.13 builds.
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

    def unpack(t):
        return t

    opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        loss = F.cross_entropy(model(x), labels)
    loss.backward()
    grad_bytes = sum(_nbytes(p.grad) for p in model.parameters()
                     if p.grad is not None)
    opt.step()
    optim_bytes = 0
    for state in opt.state.values():
        buf = state.get("momentum_buffer")
        if buf is not None:
            optim_bytes += _nbytes(buf)
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
    model, opt, x, labels = setup(mode, args.sizes, args.batch, args.seed)
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
        "mode": mode,
        "ms_per_step": round(statistics.median(times) * 1e3, 4),
        "train_bytes": mem["train_bytes"],
        "threads": args.threads,
        "batch": args.batch,
        "sizes": list(args.sizes),
    }
    res.update({k: v for k, v in mem.items() if k != "train_bytes"})
    res.update({"steps": args.steps, "warmup": args.warmup,
                "torch_version": torch.__version__})
    return res


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sizes", default="784,512,512,10",
                    help="comma-separated layer widths, input first")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", action="store_true",
                    help="one JSON object per mode per line")
    args = ap.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    if len(args.sizes) < 2:
        ap.error("--sizes needs at least two widths")
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
    print(f"pytorch {torch.__version__}  threads={args.threads} "
          f"batch={args.batch} sizes={','.join(map(str, args.sizes))} "
          f"steps={args.steps} warmup={args.warmup}")
    hdr = ("mode", "ms/step", "train_bytes", "saved", "grads", "optim",
           "input", "(params)")
    print("%-8s %9s %12s %10s %10s %10s %10s %10s" % hdr)
    for r in results:
        print("%-8s %9.3f %12d %10d %10d %10d %10d %10d" % (
            r["mode"], r["ms_per_step"], r["train_bytes"], r["saved_bytes"],
            r["grad_bytes"], r["optim_bytes"], r["input_bytes"],
            r["param_bytes"]))


if __name__ == "__main__":
    main()
