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
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODE = "full"


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
    contenders = [("fleettune", ours_cmd, {}), ("pytorch", torch_cmd, {})]
    if has_avx512():
        contenders.append(("pytorch+skx", torch_cmd, {"OPENBLAS_CORETYPE": "SkylakeX"}))

    samples = {name: [] for name, _, _ in contenders}
    memory = {}
    for r in range(args.rounds):
        last = r == args.rounds - 1
        for name, cmd, env in contenders:
            profiled = args.profile and last and name == "fleettune"
            row = run(cmd + (["--profile"] if profiled else []), env, show_stderr=profiled)[MODE]
            if not profiled or args.rounds == 1:
                samples[name].append(row["ms_per_step"])
            memory[name] = row["train_bytes"]
        print("round %d/%d done" % (r + 1, args.rounds), file=sys.stderr)

    ms = {n: statistics.median(v) for n, v in samples.items()}
    print("BERT-mini (4 layers, hidden 256, 4 heads, FFN 1024), seq 128, batch 8, 2 labels, "
          "full fine-tuning, SGD momentum, %d threads, median of %d rounds x %d steps "
          "(%d warm-up)" % (args.threads, args.rounds, args.steps, args.warmup))
    print("%-10s %-12s %10s %14s" % ("mode", "framework", "ms/step", "train bytes"))
    for name, _, _ in contenders:
        print("%-10s %-12s %10.3f %14d" % (MODE, name, ms[name], memory[name]))
    print()
    for name, _, _ in contenders[1:]:
        print("%-10s fleettune/%-12s time %.2fx  memory %.2fx" % (
            MODE, name, ms["fleettune"] / ms[name], memory["fleettune"] / memory[name]))


if __name__ == "__main__":
    main()
