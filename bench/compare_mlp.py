#!/usr/bin/python3
"""Side-by-side MLP training benchmark: fleettune vs PyTorch, ratios printed.

    bench/compare_mlp.sh            # builds, then runs this

Runs bench/mlp_bench (fleettune) and bench/pytorch_mlp.py (Debian's PyTorch
1.13) on the same workload (MLP 784-512-512-10, batch 64, SGD momentum, 2
threads, modes full and frozen1), alternating them for --rounds rounds so both
see the same machine conditions, and reports the median of the per-round
medians. PyTorch is run twice per round: as installed, and with
OPENBLAS_CORETYPE=SkylakeX on CPUs with AVX-512 (Debian's OpenBLAS 0.3.21 does
not know newer Intel models and falls back to its Prescott kernels, which
would flatter fleettune; the forced core type is the fair baseline).

Memory: fleettune's train_bytes is its whole static arena (batch, activations,
gradients, temporaries) plus optimizer state; PyTorch's is the activations it
saves for backward plus gradients, momentum buffers and the batch (temporaries
not counted), see bench/pytorch_mlp.py.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(cmd, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return {r["mode"]: r for r in (json.loads(l) for l in out.splitlines() if l.startswith("{"))}


def has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512f" in f.read()
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    common = ["--threads", str(args.threads), "--batch", "64", "--sizes", "784,512,512,10",
              "--steps", str(args.steps), "--warmup", "20"]
    ours_cmd = [os.path.join(ROOT, "bazel-bin/bench/mlp_bench"),
                "--threads=%d" % args.threads, "--batch=64", "--sizes=784,512,512,10",
                "--steps=%d" % args.steps, "--warmup=20"]
    torch_cmd = ["/usr/bin/python3", os.path.join(HERE, "pytorch_mlp.py"), "--json"] + common
    contenders = [("fleettune", ours_cmd, {}), ("pytorch", torch_cmd, {})]
    if has_avx512():
        contenders.append(("pytorch+skx", torch_cmd, {"OPENBLAS_CORETYPE": "SkylakeX"}))

    samples = {name: {"full": [], "frozen1": []} for name, _, _ in contenders}
    memory = {}
    for r in range(args.rounds):
        for name, cmd, env in contenders:
            res = run(cmd, env)
            for mode, row in res.items():
                samples[name][mode].append(row["ms_per_step"])
                memory[(name, mode)] = row["train_bytes"]
        print("round %d/%d done" % (r + 1, args.rounds), file=sys.stderr)

    ms = {(n, m): statistics.median(v) for n, d in samples.items() for m, v in d.items()}
    print("MLP 784-512-512-10, batch 64, SGD momentum, %d threads, median of %d rounds x %d steps"
          % (args.threads, args.rounds, args.steps))
    print("%-10s %-12s %10s %14s" % ("mode", "framework", "ms/step", "train bytes"))
    for mode in ("full", "frozen1"):
        for name, _, _ in contenders:
            print("%-10s %-12s %10.3f %14d" % (mode, name, ms[(name, mode)], memory[(name, mode)]))
    print()
    for mode in ("full", "frozen1"):
        for name, _, _ in contenders[1:]:
            print("%-8s fleettune/%-12s time %.2fx  memory %.2fx" % (
                mode, name, ms[("fleettune", mode)] / ms[(name, mode)],
                memory[("fleettune", mode)] / memory[(name, mode)]))


if __name__ == "__main__":
    main()
