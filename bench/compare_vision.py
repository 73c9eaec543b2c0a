#!/usr/bin/python3
"""Side-by-side MobileNetV2 training benchmark: fleettune vs PyTorch, ratios printed.

    bench/compare_vision.sh [--rounds 3] [--steps 10] [--profile]   # builds, then runs this

Runs bench/vision_bench (fleettune) and bench/pytorch_vision.py (Debian's
PyTorch 1.13 + torchvision 0.14) on the same workload: MobileNetV2 width 1.0,
128x128, batch 8, 10 classes, SGD momentum 0.9, 2 threads, modes full (BatchNorm
with batch statistics) and frozen-bn (eval-mode BatchNorm, running statistics
frozen, no dropout). They alternate for --rounds rounds so both see the same
machine conditions; the report is the median of the per-round medians. As in
bench/compare_mlp.py, PyTorch also runs with OPENBLAS_CORETYPE=SkylakeX on
CPUs with AVX-512. With --profile, fleettune's per-op-kind table (from the
last round, which is then timed with profiling on) goes to stderr.

Memory: fleettune's train_bytes is its whole static arena plus optimizer
state; PyTorch's is saved activations + gradients + momentum + batch (see
bench/pytorch_vision.py).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = ("full", "frozen-bn")


def run(cmd, env_extra=None, show_stderr=False):
    env = dict(os.environ)
    env.update(env_extra or {})
    p = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    if show_stderr:
        sys.stderr.write(p.stderr)
    return {r["mode"]: r for r in (json.loads(l) for l in p.stdout.splitlines()
                                   if l.startswith("{"))}


def has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512f" in f.read()
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true",
                    help="fleettune per-op profile (last round) to stderr")
    args = ap.parse_args()
    ours_cmd = [os.path.join(ROOT, "bazel-bin/bench/vision_bench"),
                "--threads=%d" % args.threads, "--batch=8", "--resolution=128",
                "--classes=10", "--steps=%d" % args.steps, "--warmup=%d" % args.warmup]
    torch_cmd = ["/usr/bin/python3", os.path.join(HERE, "pytorch_vision.py"), "--json",
                 "--threads", str(args.threads), "--batch", "8", "--resolution", "128",
                 "--classes", "10", "--steps", str(args.steps), "--warmup", str(args.warmup)]
    contenders = [("fleettune", ours_cmd, {}), ("pytorch", torch_cmd, {})]
    if has_avx512():
        contenders.append(("pytorch+skx", torch_cmd, {"OPENBLAS_CORETYPE": "SkylakeX"}))

    samples = {name: {m: [] for m in MODES} for name, _, _ in contenders}
    memory = {}
    for r in range(args.rounds):
        last = r == args.rounds - 1
        for name, cmd, env in contenders:
            profiled = args.profile and last and name == "fleettune"
            res = run(cmd + (["--profile"] if profiled else []), env, show_stderr=profiled)
            for mode, row in res.items():
                if not profiled or args.rounds == 1:
                    samples[name][mode].append(row["ms_per_step"])
                memory[(name, mode)] = row["train_bytes"]
        print("round %d/%d done" % (r + 1, args.rounds), file=sys.stderr)

    ms = {(n, m): statistics.median(v) for n, d in samples.items() for m, v in d.items()}
    print("MobileNetV2 1.0, 128x128, batch 8, 10 classes, SGD momentum, %d threads, "
          "median of %d rounds x %d steps (%d warm-up)"
          % (args.threads, args.rounds, args.steps, args.warmup))
    print("%-10s %-12s %10s %14s" % ("mode", "framework", "ms/step", "train bytes"))
    for mode in MODES:
        for name, _, _ in contenders:
            print("%-10s %-12s %10.3f %14d" % (mode, name, ms[(name, mode)],
                                               memory[(name, mode)]))
    print()
    for mode in MODES:
        for name, _, _ in contenders[1:]:
            print("%-10s fleettune/%-12s time %.2fx  memory %.2fx" % (
                mode, name, ms[("fleettune", mode)] / ms[(name, mode)],
                memory[("fleettune", mode)] / memory[(name, mode)]))


if __name__ == "__main__":
    main()
