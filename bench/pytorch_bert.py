#!/usr/bin/python3
"""PyTorch half of fleettune's side-by-side BERT-mini fine-tuning benchmark.

Run with Debian's interpreter (it has torch; HF transformers is not needed):

    /usr/bin/python3 bench/pytorch_bert.py --threads 2 --batch 8 \
        --seq_len 128 --steps 10 --warmup 3 --json

Model: BertForSequenceClassification written with plain torch.nn (same
structure and parameter names as HF's, as built by engine/models/bert.h):
word + position + token-type embeddings, LayerNorm (eps 1e-12), 4 post-norm
encoder layers (nn.Linear query/key/value/output, softmax attention, GELU(erf)
FFN), pooler (first token -> dense -> tanh), classifier. Hidden 256, 4 heads,
FFN 1024, vocab 30522, 512 positions, 2 token types, 2 labels, no dropout
(model.eval() structure; gradients still computed). Weights: N(0, 0.02^2)
for linear weights and embeddings, biases 0, LayerNorm 1/0 (HF's
_init_weights). Optimizer: SGD(lr=0.01, momentum=0.9) over every parameter.
One fixed random batch (input_ids uniform in the vocabulary, token_type_ids 0,
labels uniform in 0..labels-1), torch.manual_seed(seed) before setup.

A timed step is: optimizer.zero_grad(set_to_none=True); forward;
F.cross_entropy (mean); backward; optimizer.step(). `ms_per_step` is the
median over --steps timed steps (time.perf_counter) after --warmup.

`train_bytes`: activations saved for backward (saved_tensors_hooks, by
storage, parameters and the batch excluded) + gradients + momentum buffers +
the batch, as in bench/pytorch_vision.py.
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

LR = 0.01
MOMENTUM = 0.9
MAX_POSITIONS = 512
TYPE_VOCAB = 2
EPS = 1e-12


class Embeddings(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.word_embeddings = nn.Embedding(a.vocab, a.hidden)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, a.hidden)
        self.token_type_embeddings = nn.Embedding(TYPE_VOCAB, a.hidden)
        self.LayerNorm = nn.LayerNorm(a.hidden, eps=EPS)

    def forward(self, input_ids, token_type_ids, position_ids):
        e = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)[None]
             + self.token_type_embeddings(token_type_ids))
        return self.LayerNorm(e)


class SelfAttention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.heads = a.heads
        self.query = nn.Linear(a.hidden, a.hidden)
        self.key = nn.Linear(a.hidden, a.hidden)
        self.value = nn.Linear(a.hidden, a.hidden)

    def forward(self, h):
        b, t, d = h.shape
        hd = d // self.heads

        def split(x):
            return x.view(b, t, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        return (p @ v).transpose(1, 2).reshape(b, t, d)


class DenseNorm(nn.Module):  # HF's BertSelfOutput / BertOutput (no dropout)
    def __init__(self, d_in, d_out):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=EPS)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.self = SelfAttention(a)
        self.output = DenseNorm(a.hidden, a.hidden)

    def forward(self, h):
        return self.output(self.self(h), h)


class Intermediate(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.dense = nn.Linear(a.hidden, a.ffn)

    def forward(self, h):
        return F.gelu(self.dense(h))  # erf form


class Layer(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.attention = Attention(a)
        self.intermediate = Intermediate(a)
        self.output = DenseNorm(a.ffn, a.hidden)

    def forward(self, h):
        h = self.attention(h)
        return self.output(self.intermediate(h), h)


class Encoder(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.layer = nn.ModuleList([Layer(a) for _ in range(a.layers)])

    def forward(self, h):
        for l in self.layer:
            h = l(h)
        return h


class Pooler(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.dense = nn.Linear(a.hidden, a.hidden)

    def forward(self, h):
        return torch.tanh(self.dense(h[:, 0]))


class Bert(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embeddings = Embeddings(a)
        self.encoder = Encoder(a)
        self.pooler = Pooler(a)


class BertForSequenceClassification(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.bert = Bert(a)
        self.classifier = nn.Linear(a.hidden, a.labels)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, input_ids, token_type_ids, position_ids):
        h = self.bert.embeddings(input_ids, token_type_ids, position_ids)
        return self.classifier(self.bert.pooler(self.bert.encoder(h)))


def setup(args):
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification(args)
    model.eval()  # no dropout anywhere; autograd still on
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), dtype=torch.int64)
    types = torch.zeros(args.batch, args.seq_len, dtype=torch.int64)
    pos = torch.arange(args.seq_len, dtype=torch.int64)
    labels = torch.randint(0, args.labels, (args.batch,), dtype=torch.int64)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    return model, opt, (ids, types, pos), labels


def train_step(model, opt, inputs, labels):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(*inputs), labels)
    loss.backward()
    opt.step()
    return loss


def _nbytes(t):
    return t.numel() * t.element_size()


def _storage_key(t):
    s = t.storage()
    return s.data_ptr(), s.nbytes()


def measure_bytes(model, opt, inputs, labels):
    """One untimed step with a saved-tensor hook; returns the byte breakdown."""
    excluded = {_storage_key(p) for p in model.parameters()}
    excluded.update(_storage_key(t) for t in inputs)
    excluded.add(_storage_key(labels))
    saved = {}

    def pack(t):
        k = _storage_key(t)
        if k not in excluded:
            saved[k] = k[1]
        return t

    opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(*inputs), labels)
    loss.backward()
    grad_bytes = sum(_nbytes(p.grad) for p in model.parameters() if p.grad is not None)
    opt.step()
    optim_bytes = sum(_nbytes(s["momentum_buffer"]) for s in opt.state.values()
                      if s.get("momentum_buffer") is not None)
    out = {
        "saved_bytes": sum(saved.values()),
        "grad_bytes": grad_bytes,
        "optim_bytes": optim_bytes,
        "input_bytes": sum(_nbytes(t) for t in inputs) + _nbytes(labels),
        "param_bytes": sum(_nbytes(p) for p in model.parameters()),
    }
    out["train_bytes"] = (out["saved_bytes"] + out["grad_bytes"]
                          + out["optim_bytes"] + out["input_bytes"])
    return out


def bench(args):
    model, opt, inputs, labels = setup(args)
    mem = measure_bytes(model, opt, inputs, labels)
    for _ in range(args.warmup):
        train_step(model, opt, inputs, labels)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        train_step(model, opt, inputs, labels)
        times.append(time.perf_counter() - t0)
    res = {
        "framework": "pytorch",
        "model": "bert_mini",
        "mode": "full",
        "ms_per_step": round(statistics.median(times) * 1e3, 3),
        "train_bytes": mem["train_bytes"],
        "threads": args.threads,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "layers": args.layers,
        "hidden": args.hidden,
    }
    res.update({k: v for k, v in mem.items() if k != "train_bytes"})
    res.update({"steps": args.steps, "warmup": args.warmup,
                "torch_version": torch.__version__})
    return res


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq_len", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=30522)
    ap.add_argument("--labels", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be >= 1")
    if args.hidden % args.heads or args.seq_len > MAX_POSITIONS:
        ap.error("heads must divide hidden and seq_len must be <= 512")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    r = bench(args)
    if args.json:
        print(json.dumps(r), flush=True)
        return
    print(f"pytorch {torch.__version__}  threads={args.threads} batch={args.batch} "
          f"seq_len={args.seq_len} layers={args.layers} hidden={args.hidden} "
          f"steps={args.steps} warmup={args.warmup}")
    print("%-10s %9s %12s %10s %10s %10s %10s" % (
        "mode", "ms/step", "train_bytes", "saved", "grads", "optim", "input"))
    print("%-10s %9.3f %12d %10d %10d %10d %10d" % (
        r["mode"], r["ms_per_step"], r["train_bytes"], r["saved_bytes"],
        r["grad_bytes"], r["optim_bytes"], r["input_bytes"]))


if __name__ == "__main__":
    main()
