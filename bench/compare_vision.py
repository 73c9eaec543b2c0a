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
import os

from side_by_side import HERE, ROOT, compare


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
    compare("MobileNetV2 1.0, 128x128, batch 8, 10 classes, SGD momentum, %d threads, "
            "median of %d rounds x %d steps (%d warm-up)"
            % (args.threads, args.rounds, args.steps, args.warmup),
            ours_cmd, torch_cmd, ("full", "frozen-bn"), args.rounds, args.profile)


if __name__ == "__main__":
    main()
