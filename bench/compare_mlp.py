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
import os

from side_by_side import HERE, ROOT, compare


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true",
                    help="fleettune per-op profile (last round) to stderr")
    args = ap.parse_args()
    ours_cmd = [os.path.join(ROOT, "bazel-bin/bench/mlp_bench"),
                "--threads=%d" % args.threads, "--batch=64", "--sizes=784,512,512,10",
                "--steps=%d" % args.steps, "--warmup=20"]
    torch_cmd = ["/usr/bin/python3", os.path.join(HERE, "pytorch_mlp.py"), "--json",
                 "--threads", str(args.threads), "--batch", "64", "--sizes", "784,512,512,10",
                 "--steps", str(args.steps), "--warmup", "20"]
    compare("MLP 784-512-512-10, batch 64, SGD momentum, %d threads, median of %d rounds x %d "
            "steps" % (args.threads, args.rounds, args.steps),
            ours_cmd, torch_cmd, ("full", "frozen1"), args.rounds, args.profile)


if __name__ == "__main__":
    main()
