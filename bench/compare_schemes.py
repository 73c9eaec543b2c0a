#!/usr/bin/python3
"""Update-scheme benchmark (issue #6): fleettune vs PyTorch, ratios printed.

    bench/compare_schemes.sh [--models mobilenet_v2,bert_mini,llama_mini] [--rounds 3]
                             [--steps 10] [--warmup 3] [--micro_batches 4] [--profile]

For each model, runs bench/scheme_bench (fleettune) and bench/pytorch_schemes.py
(Debian's PyTorch 1.13) on the same workload and schemes; the workloads,
schemes and memory accounting are defined in pytorch_schemes.py's docstring.
MobileNetV2 runs with frozen BatchNorm statistics (model.eval()) on both
sides. The sides alternate for --rounds rounds (bench/side_by_side.py); the
report is the median of per-round medians, ms/step and peak training bytes
per scheme, and the ratios fleettune / PyTorch (below 1: fleettune is faster
or smaller). The run stops if the two sides train a different number of
parameter elements under a scheme. --micro_batches N compiles fleettune's plans
to run each batch of 8 in N slices, the gradients accumulated in SGD's momentum
buffers (the same update; the arena holds one slice's activations). PyTorch
always runs the whole batch.
"""

import argparse
import os

from side_by_side import HERE, ROOT, compare

SCHEMES = {"mobilenet_v2": ("full", "bias-only", "sparse"),
           "bert_mini": ("full", "bias-only", "sparse"),
           "llama_mini": ("full", "sparse")}  # Llama has no biases
TITLES = {"mobilenet_v2": "MobileNetV2 width 1.0, 128x128, batch 8, frozen BatchNorm statistics",
          "bert_mini": "BERT-mini (4 layers, hidden 256, 4 heads, FFN 1024), seq 128, batch 8",
          "llama_mini": "Llama-style decoder (4 layers, dim 256, 4 heads / 2 KV heads, FFN 704, "
                   "vocab 8192), seq 128, batch 8"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(SCHEMES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--micro_batches", type=int, default=1,
                    help="fleettune runs each batch in this many slices (1, 2, 4 or 8)")
    ap.add_argument("--profile", action="store_true",
                    help="fleettune per-op profile (last round) to stderr")
    args = ap.parse_args()
    for model in (m for m in args.models.split(",") if m):
        if model not in SCHEMES:
            ap.error("unknown model %r" % model)
        schemes = ",".join(SCHEMES[model])
        common = ["--threads=%d" % args.threads, "--steps=%d" % args.steps,
                  "--warmup=%d" % args.warmup]
        ours = [os.path.join(ROOT, "bazel-bin/bench/scheme_bench"), "--model=" + model,
                "--schemes=" + schemes, "--micro_batches=%d" % args.micro_batches] + common
        theirs = (["/usr/bin/python3", os.path.join(HERE, "pytorch_schemes.py"), "--json",
                   "--model", model, "--schemes", schemes]
                  + [x for a in common for x in a.split("=")])
        slices = (", fleettune in %d micro-batches" % args.micro_batches
                  if args.micro_batches > 1 else "")
        compare("%s, SGD momentum, %d threads%s, median of %d rounds x %d steps (%d warm-up)"
                % (TITLES[model], args.threads, slices, args.rounds, args.steps, args.warmup),
                ours, theirs, SCHEMES[model], args.rounds, args.profile)
        print()


if __name__ == "__main__":
    main()
