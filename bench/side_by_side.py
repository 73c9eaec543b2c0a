"""Shared driver of the side-by-side benchmarks (compare_mlp/vision/bert.py).

Each benchmark has a fleettune binary and a PyTorch script that print one JSON
line per mode with at least "mode", "ms_per_step" and "train_bytes". They run
alternately for a number of rounds so both see the same machine conditions;
the report is the median of the per-round medians, the ratios, and the
speedup over PyTorch's faster configuration, also round by round. PyTorch also
runs with OPENBLAS_CORETYPE=SkylakeX on CPUs with AVX-512: Debian's OpenBLAS
0.3.21 does not know newer Intel models and falls back to its Prescott
kernels, which would flatter fleettune, so the forced core type is the fair
baseline. Where both sides report "trainable_elements", they must agree (the
same scheme on both sides), or the comparison stops. With `profile`, fleettune's last round runs with --profile (its
per-op table goes to stderr) and is left out of the medians.
"""

import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _run(cmd, env_extra=None, show_stderr=False):
    env = dict(os.environ)
    env.update(env_extra or {})
    p = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    if show_stderr:
        sys.stderr.write(p.stderr)
    return {r["mode"]: r for r in (json.loads(l) for l in p.stdout.splitlines()
                                   if l.startswith("{"))}


def _has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512f" in f.read()
    except OSError:
        return False


def compare(title, ours_cmd, torch_cmd, modes, rounds, profile=False):
    """Runs both sides `rounds` times and prints the table and the ratios."""
    contenders = [("fleettune", ours_cmd, {}), ("pytorch", torch_cmd, {})]
    if _has_avx512():
        contenders.append(("pytorch+skx", torch_cmd, {"OPENBLAS_CORETYPE": "SkylakeX"}))
    samples = {name: {m: [] for m in modes} for name, _, _ in contenders}
    memory = {}
    trained = {}  # trainable parameter elements, where a side reports them
    for r in range(rounds):
        last = r == rounds - 1
        for name, cmd, env in contenders:
            profiled = profile and last and name == "fleettune"
            res = _run(cmd + (["--profile"] if profiled else []), env, show_stderr=profiled)
            for mode in modes:
                row = res[mode]
                if not profiled or rounds == 1:
                    samples[name][mode].append(row["ms_per_step"])
                memory[(name, mode)] = row["train_bytes"]
                trained[(name, mode)] = row.get("trainable_elements")
        print("round %d/%d done" % (r + 1, rounds), file=sys.stderr)

    for mode in modes:
        counts = {trained[(n, mode)] for n, _, _ in contenders}
        if len(counts) > 1:
            sys.exit("%s: the frameworks train different parameters (%s elements)"
                     % (mode, sorted(counts, key=str)))
    ms = {(n, m): statistics.median(v) for n, d in samples.items() for m, v in d.items()}
    print(title)
    print("%-10s %-12s %10s %14s" % ("mode", "framework", "ms/step", "train bytes"))
    for mode in modes:
        for name, _, _ in contenders:
            print("%-10s %-12s %10.3f %14d" % (mode, name, ms[(name, mode)],
                                               memory[(name, mode)]))
    print()
    for mode in modes:
        for name, _, _ in contenders[1:]:
            print("%-10s fleettune/%-12s time %.2fx  memory %.2fx" % (
                mode, name, ms[("fleettune", mode)] / ms[(name, mode)],
                memory[("fleettune", mode)] / memory[(name, mode)]))
    # The targets' measure: speedup over PyTorch's faster configuration, and
    # the same ratio round by round (both sides of a round saw the same
    # machine), which shows how much of it is the machine's drift.
    print()
    others = [name for name, _, _ in contenders[1:]]
    for mode in modes:
        ours = samples["fleettune"][mode]  # without a profiled round
        per_round = [min(samples[name][mode][r] for name in others) / ours[r]
                     for r in range(len(ours))]
        best = min(ms[(name, mode)] for name in others)
        print("%-10s speedup over PyTorch's faster configuration %.2fx (per round %s)" % (
            mode, best / ms[("fleettune", mode)], ", ".join("%.2fx" % x for x in per_round)))
