#!/usr/bin/python3
"""PyTorch half of fleettune's update-scheme benchmark (issue #6).

Run with Debian's interpreter (it has torch 1.13 and torchvision):

    /usr/bin/python3 bench/pytorch_schemes.py --model mobilenet_v2 \
        --schemes full,bias-only,sparse --threads 2 --steps 10 --warmup 3 --json

Models (the shapes of bench/scheme_bench.cc):
  mobilenet_v2  torchvision.models.mobilenet_v2(num_classes=10), width 1.0,
                input [8, 3, 128, 128], model.eval(): BatchNorm statistics frozen,
                no dropout (BatchNorm's affine parameters can still train).
  bert_mini     BertForSequenceClassification of bench/pytorch_bert.py: 4 layers,
                hidden 256, 4 heads, FFN 1024, vocab 30522, sequence 128, batch 8,
                2 labels, no dropout.
  llama_mini       LlamaForCausalLM written below with Hugging Face's module and
                parameter names (RMSNorm, RoPE, grouped-query causal attention,
                SwiGLU): 4 layers, hidden 256, 4 heads, 2 key/value heads,
                FFN 704, vocab 8192, sequence 128, batch 8: about the size of
                BERT-mini.

Schemes (which parameters have requires_grad; the optimizer holds only those):
  full       every parameter.
  bias-only  every parameter named `*.bias` (BatchNorm, LayerNorm and linear
             biases). Llama has none, so it skips this scheme.
  sparse     every `*.bias` + every parameter of the last two blocks + the
             head, as fleettune's `sparse` preset (engine/scheme/scheme.h)
             defines them. Blocks: MobileNetV2's inverted residuals
             `features.16` and `features.17` (the final 1x1 `features.18` is
             not a block), BERT's `bert.encoder.layer.2` and `.3`, Llama's
             `model.layers.2` and `.3`; heads: `classifier.*` (MobileNetV2;
             BERT's pooler too) and `lm_head` (Llama).
fleettune resolves the same schemes with its own presets; the driver
(bench/compare_schemes.py) checks that both sides train the same number of
parameter elements, so the two rule sets cannot drift apart silently.

A timed step: optimizer.zero_grad(set_to_none=True); forward; cross-entropy;
backward; SGD(lr=0.01, momentum=0.9).step(). `ms_per_step` is the median over
--steps timed steps after --warmup. With --autocast bf16 the forward runs under
torch.autocast (bfloat16 matmuls); that is not float32 training, so the
side-by-side comparison never uses it: it is there to measure what bfloat16
would give PyTorch on a CPU with AMX (BENCHMARKS.md, issue #6).

Memory, from one extra untimed step under torch.profiler(profile_memory=True):
`peak_bytes` is the highest sum of live tensor allocations made during the
step (activations, saved tensors, temporaries, gradients; the weights and the
batch exist before and are not counted) plus the momentum buffers and the
batch. fleettune's `peak_bytes` is its static arena (batch, activations,
gradients, temporaries) + kernel scratch + optimizer state: the same things.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
import types

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pytorch_bert  # noqa: E402  (BERT modules shared with the BERT benchmark)

MODELS = ("mobilenet_v2", "bert_mini", "llama_mini")
SCHEMES = ("full", "bias-only", "sparse")
LR = 0.01
MOMENTUM = 0.9
BATCH = 8

LLAMA = types.SimpleNamespace(vocab=8192, dim=256, layers=4, heads=4, kv_heads=2, ffn=704,
                              seq_len=128, eps=1e-6, rope_base=10000.0)
BERT = types.SimpleNamespace(vocab=30522, hidden=256, layers=4, heads=4, ffn=1024, labels=2,
                             seq_len=128)


# --- Llama (Hugging Face's LlamaForCausalLM, eager attention) -------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.heads, c.kv_heads, c.dim // c.heads
        self.q_proj = nn.Linear(c.dim, c.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.dim, c.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.dim, c.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(c.heads * self.head_dim, c.dim, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        probs = F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        a = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(a)


class Mlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.dim, c.ffn, bias=False)
        self.up_proj = nn.Linear(c.dim, c.ffn, bias=False)
        self.down_proj = nn.Linear(c.ffn, c.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.dim, c.eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.dim, c.eps)
        self.mlp = Mlp(c)

    def forward(self, x, cos, sin, mask):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab, c.dim)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.layers))
        self.norm = RMSNorm(c.dim, c.eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.model = LlamaModel(c)
        self.lm_head = nn.Linear(c.dim, c.vocab, bias=False)
        for m in self.modules():  # HF's _init_weights
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
        head_dim = c.dim // c.heads
        inv_freq = 1.0 / (c.rope_base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        freqs = torch.arange(c.seq_len).float()[:, None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        self.register_buffer("mask", torch.ones(c.seq_len, c.seq_len).triu(1).bool(),
                             persistent=False)

    def forward(self, ids):
        h = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            h = layer(h, self.cos, self.sin, self.mask)
        return self.lm_head(self.model.norm(h))


# --- workloads ----------------------------------------------------------------

def build(model_name):
    """Returns (model, inputs tuple, loss_fn(outputs) -> scalar, blocks, heads)."""
    if model_name == "mobilenet_v2":
        import torchvision
        model = torchvision.models.mobilenet_v2(num_classes=10)
        model.eval()
        x = torch.rand(BATCH, 3, 128, 128)
        labels = torch.randint(0, 10, (BATCH,))
        return (model, (x,), lambda out: F.cross_entropy(out, labels), labels,
                ("features.16.", "features.17."), ("classifier.",))
    if model_name == "bert_mini":
        model = pytorch_bert.BertForSequenceClassification(BERT)
        model.eval()
        ids = torch.randint(0, BERT.vocab, (BATCH, BERT.seq_len))
        types_ = torch.zeros(BATCH, BERT.seq_len, dtype=torch.int64)
        pos = torch.arange(BERT.seq_len)
        labels = torch.randint(0, BERT.labels, (BATCH,))
        return (model, (ids, types_, pos), lambda out: F.cross_entropy(out, labels), labels,
                ("bert.encoder.layer.2.", "bert.encoder.layer.3."),
                ("bert.pooler.", "classifier."))
    if model_name == "llama_mini":
        model = LlamaForCausalLM(LLAMA)
        ids = torch.randint(0, LLAMA.vocab, (BATCH, LLAMA.seq_len))
        targets = torch.randint(0, LLAMA.vocab, (BATCH, LLAMA.seq_len))
        return (model, (ids,),
                lambda out: F.cross_entropy(out.reshape(-1, LLAMA.vocab), targets.reshape(-1)),
                targets, ("model.layers.2.", "model.layers.3."), ("lm_head.",))
    raise ValueError(model_name)


def trainable(name, scheme, blocks, heads):
    if scheme == "full":
        return True
    if name.endswith(".bias"):
        return True
    if scheme == "bias-only":
        return False
    if scheme == "sparse":
        return name.startswith(blocks) or name.startswith(heads)
    raise ValueError(scheme)


def peak_step_bytes(step):
    """Highest sum of live allocations during one call of `step`, from the profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_us(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def bench(model_name, scheme, args):
    torch.manual_seed(args.seed)
    model, inputs, loss_fn, labels, blocks, heads = build(model_name)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(trainable(name, scheme, blocks, heads))
        if p.requires_grad:
            params.append(p)
    if not params:
        return None  # nothing to train (Llama has no biases)
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            loss = loss_fn(model(*inputs))
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    optim_bytes = sum(pytorch_bert._nbytes(s["momentum_buffer"]) for s in opt.state.values()
                      if s.get("momentum_buffer") is not None)
    input_bytes = sum(pytorch_bert._nbytes(t) for t in inputs) + pytorch_bert._nbytes(labels)
    peak = peak_step_bytes(step) + optim_bytes + input_bytes
    return {
        "framework": "pytorch",
        "model": model_name,
        "mode": scheme,
        "ms_per_step": round(statistics.median(times) * 1e3, 3),
        "peak_bytes": peak,
        "train_bytes": peak,
        "optim_bytes": optim_bytes,
        "trainable_elements": sum(p.numel() for p in params),
        "threads": args.threads,
        "autocast": args.autocast,
        "steps": args.steps,
        "warmup": args.warmup,
        "torch_version": torch.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=MODELS, required=True)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="one JSON object per scheme per line")
    ap.add_argument("--autocast", choices=("none", "bf16"), default="none",
                    help="bf16: forward under torch.autocast (bfloat16 matmuls, on AMX where the "
                         "CPU has it); compare_schemes.py never passes it, its sides both run "
                         "float32")
    args = ap.parse_args()
    schemes = [s for s in args.schemes.split(",") if s]
    for s in schemes:
        if s not in SCHEMES:
            ap.error(f"unknown scheme {s!r}")
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    torch.set_num_threads(args.threads)
    for scheme in schemes:
        r = bench(args.model, scheme, args)
        if r is None:
            continue
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print("%-12s %-10s %9.3f ms/step  peak %12d B  trainable %d" % (
                r["model"], r["mode"], r["ms_per_step"], r["peak_bytes"],
                r["trainable_elements"]))


if __name__ == "__main__":
    main()
