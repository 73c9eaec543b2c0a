#!/usr/bin/python3
"""Side-by-side BERT-mini fine-tuning benchmark: fleettune vs PyTorch, ratios printed.

    bench/compare_bert.sh [--rounds 3] [--steps 5] [--warmup 2] [--profile]   # builds, then runs this

Runs bench/bert_bench (fleettune) and bench/pytorch_bert.py (Debian's PyTorch
1.13, model written with plain torch.nn) on the same workload:
BertForSequenceClassification with 4 layers, hidden 256, 4 heads, FFN 1024,
vocab 30522, sequence 128, batch 8, 2 labels, no dropout, full fine-tuning
with SGD momentum 0.9, 2 threads. A step is forward + loss + backward +
optimizer update. They alternate for --rounds rounds so both see the same
machine conditions; the report is the median of the per-round medians. As in
bench/compare_vision.py, PyTorch also runs with OPENBLAS_CORETYPE=SkylakeX on
CPUs with AVX-512. With --profile, fleettune's per-op-kind table (from the
last round, which is then timed with profiling on) goes to stderr.

Memory: fleettune's train_bytes is its whole static arena plus optimizer
state; PyTorch's is saved activations + gradients + momentum + batch (see
bench/pytorch_bert.py).
"""

import argparse
import os

from side_by_side import HERE, ROOT, compare


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true",
                    help="fleettune per-op profile (last round) to stderr")
    args = ap.parse_args()
    shape = ["batch", "8", "seq_len", "128", "layers", "4", "hidden", "256", "heads", "4",
             "ffn", "1024", "vocab", "30522", "labels", "2"]
    pairs = list(zip(shape[::2], shape[1::2]))
    ours_cmd = ([os.path.join(ROOT, "bazel-bin/bench/bert_bench"),
                 "--threads=%d" % args.threads, "--steps=%d" % args.steps,
                 "--warmup=%d" % args.warmup] + ["--%s=%s" % kv for kv in pairs])
    torch_cmd = (["/usr/bin/python3", os.path.join(HERE, "pytorch_bert.py"), "--json",
                  "--threads", str(args.threads), "--steps", str(args.steps),
                  "--warmup", str(args.warmup)]
                 + [x for k, v in pairs for x in ("--" + k, v)])
    compare("BERT-mini (4 layers, hidden 256, 4 heads, FFN 1024), seq 128, batch 8, 2 labels, "
            "full fine-tuning, SGD momentum, %d threads, median of %d rounds x %d steps "
            "(%d warm-up)" % (args.threads, args.rounds, args.steps, args.warmup),
            ours_cmd, torch_cmd, ("full",), args.rounds, args.profile)


if __name__ == "__main__":
    main()
