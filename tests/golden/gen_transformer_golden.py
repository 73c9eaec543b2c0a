#!/usr/bin/python3
"""Generate the PyTorch golden reference for fleettune's transformer ops.

Regenerate with:

    /usr/bin/python3 tests/golden/gen_transformer_golden.py

(Debian's /usr/bin/python3, which has torch 1.13; a different `python3` on PATH
may not.)  The output, tests/golden/transformer_golden.safetensors, is
committed; the C++ test (transformer_golden_test.cc) reads that file, so
PyTorch is NOT needed to build or run the tests.  The file format is written by
hand as in gen_mlp_golden.py (no `safetensors` package needed).

Two parts, everything float32 except ids, positions and targets (int32):

1. One case per op, named `<case>.<tensor>`: the inputs, the output `out`, a
   random upstream gradient `r`, and `grad.<input>` = d sum(out * r) / d input
   for every float input.  Cases: layer_norm, rms_norm, embedding, softmax,
   softmax_causal, transpose, concat, slice, sub, div, matmul (broadcast
   batch), attention (grouped-query, causal), rope (per-sequence positions),
   swiglu, and seq_cross_entropy (ignore_index, scalar loss, so no `r`).

2. `model.*`: a tiny Llama-style causal LM written the way Hugging Face's
   LlamaForCausalLM computes it (transformers is not on Debian, so the modules
   are spelled out below: LlamaRMSNorm, rotate_half / apply_rotary_pos_emb,
   repeat_kv, eager attention with a causal mask, LlamaMLP):
       embed_tokens -> one pre-norm decoder layer (RMSNorm -> attention with
       RoPE and GQA -> residual -> RMSNorm -> SwiGLU MLP -> residual)
       -> final RMSNorm -> lm_head -> cross-entropy(ignore_index=-100)
   Parameters use HF state_dict names (`model.layers.0.self_attn.q_proj.weight`
   ...), stored as `model.param.<name>`; the batch as `model.ids` and
   `model.targets`; outputs `model.block_out` (decoder layer output),
   `model.logits`, `model.loss`; and `model.grad.<name>` for every parameter.
"""

import json
import math
import os
import struct

import torch
import torch.nn.functional as F

SEED = 0
BATCH, SEQ, HIDDEN, HEADS, KV_HEADS, INTER, VOCAB = 2, 5, 8, 2, 1, 16, 11
HEAD_DIM = HIDDEN // HEADS
RMS_EPS = 1e-6
LN_EPS = 1e-5
ROPE_BASE = 10000.0
IGNORE = -100

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "transformer_golden.safetensors")

_DTYPES = {torch.float32: ("F32", "<f4"), torch.int32: ("I32", "<i4")}


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, torch.Tensor) in the order to write them."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        st_dtype, np_dtype = _DTYPES[t.dtype]
        data = t.numpy().astype(np_dtype, copy=False).tobytes(order="C")
        header[name] = {"dtype": st_dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((-len(hbytes)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)
    return 8 + len(hbytes) + offset


# --- Hugging Face Llama, spelled out ------------------------------------------

def rms_norm(x, weight, eps=RMS_EPS):  # LlamaRMSNorm.forward
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def rope_cos_sin(positions, dim, base=ROPE_BASE):
    """positions: int tensor [..., T] -> cos, sin [..., T, dim] (HF convention)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    return (x * cos) + (rotate_half(x) * sin)


def repeat_kv(x, n_rep):  # [B, Hkv, T, D] -> [B, Hkv * n_rep, T, D]
    b, h, t, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def attention(q, k, v, causal):
    """q [B, Hq, T, D], k/v [B, Hkv, S, D]: eager LlamaAttention core."""
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    v = repeat_kv(v, q.shape[1] // v.shape[1])
    scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(q.shape[-1])
    if causal:
        t, s = scores.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = F.softmax(scores, dim=-1, dtype=torch.float32)
    return torch.matmul(probs, v)


def decoder_layer(x, p, prefix, positions):
    b, t, _ = x.shape
    n = rms_norm(x, p[prefix + "input_layernorm.weight"])
    q = F.linear(n, p[prefix + "self_attn.q_proj.weight"])
    k = F.linear(n, p[prefix + "self_attn.k_proj.weight"])
    v = F.linear(n, p[prefix + "self_attn.v_proj.weight"])
    q = q.view(b, t, HEADS, HEAD_DIM).transpose(1, 2)
    k = k.view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
    v = v.view(b, t, KV_HEADS, HEAD_DIM).transpose(1, 2)
    cos, sin = rope_cos_sin(positions, HEAD_DIM)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    a = attention(q, k, v, causal=True)
    a = a.transpose(1, 2).reshape(b, t, HEADS * HEAD_DIM)
    h = x + F.linear(a, p[prefix + "self_attn.o_proj.weight"])
    m = rms_norm(h, p[prefix + "post_attention_layernorm.weight"])
    gate = F.linear(m, p[prefix + "mlp.gate_proj.weight"])
    up = F.linear(m, p[prefix + "mlp.up_proj.weight"])
    return h + F.linear(F.silu(gate) * up, p[prefix + "mlp.down_proj.weight"])


# --- cases ----------------------------------------------------------------------

def randn(*shape, scale=1.0):
    return torch.randn(*shape) * scale


def op_case(tensors, name, inputs, fn):
    """inputs: list of (input name, tensor); float ones get gradients."""
    leaves = []
    for n, t in inputs:
        t = t.clone()
        if t.dtype == torch.float32:
            t.requires_grad_(True)
        leaves.append((n, t))
    out = fn(*[t for _, t in leaves])
    tensors += [(f"{name}.{n}", t.to(torch.int32) if not t.is_floating_point() else t)
                for n, t in leaves]
    tensors.append((f"{name}.out", out))
    if out.dim() == 0:
        out.backward()
    else:
        r = randn(*out.shape)
        tensors.append((f"{name}.r", r))
        (out * r).sum().backward()
    tensors += [(f"{name}.grad.{n}", t.grad) for n, t in leaves if t.requires_grad]


def ints(low, high, *shape):
    return torch.randint(low, high, shape, dtype=torch.int64)


def op_cases(tensors):
    op_case(tensors, "layer_norm",
            [("x", randn(BATCH, SEQ, HIDDEN)), ("weight", 1 + randn(HIDDEN, scale=0.2)),
             ("bias", randn(HIDDEN, scale=0.2))],
            lambda x, w, b: F.layer_norm(x, (HIDDEN,), w, b, LN_EPS))
    op_case(tensors, "rms_norm",
            [("x", randn(BATCH, SEQ, HIDDEN)), ("weight", 1 + randn(HIDDEN, scale=0.2))],
            rms_norm)
    op_case(tensors, "embedding",
            [("ids", ints(0, VOCAB, BATCH, SEQ)), ("weight", randn(VOCAB, HIDDEN))],
            F.embedding)
    op_case(tensors, "softmax", [("x", randn(2, 3, 5, scale=2.0))],
            lambda x: F.softmax(x, dim=-1))

    def causal_softmax(x):
        t, s = x.shape[-2:]
        mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
        return F.softmax(x.masked_fill(~mask, float("-inf")), dim=-1)
    op_case(tensors, "softmax_causal", [("x", randn(2, 2, 4, 6, scale=2.0))], causal_softmax)
    op_case(tensors, "transpose", [("x", randn(BATCH, SEQ, HEADS, HEAD_DIM))],
            lambda x: x.permute(0, 2, 1, 3))
    op_case(tensors, "concat", [("a", randn(2, 3, 4)), ("b", randn(2, 2, 4))],
            lambda a, b: torch.cat([a, b], dim=1))
    op_case(tensors, "slice", [("x", randn(4, 7))], lambda x: x[1:4, 0:7:3])
    op_case(tensors, "sub", [("a", randn(2, 3, 4)), ("b", randn(4))], torch.sub)
    op_case(tensors, "div",
            [("a", randn(2, 3, 4)), ("b", (0.5 + torch.rand(3, 1)) * torch.sign(randn(3, 1)))],
            torch.div)
    op_case(tensors, "matmul", [("a", randn(2, 1, 3, 4)), ("b", randn(3, 4, 5))], torch.matmul)
    op_case(tensors, "attention",
            [("q", randn(BATCH, HEADS, SEQ, HEAD_DIM)), ("k", randn(BATCH, KV_HEADS, SEQ, HEAD_DIM)),
             ("v", randn(BATCH, KV_HEADS, SEQ, HEAD_DIM))],
            lambda q, k, v: attention(q, k, v, causal=True))
    # Per-sequence positions [B, 1, T]: sequence 1 starts at position 3.
    positions = torch.stack([torch.arange(SEQ), torch.arange(SEQ) + 3])[:, None, :]

    def rope(x, pos):
        cos, sin = rope_cos_sin(pos, x.shape[-1])
        return apply_rope(x, cos, sin)
    op_case(tensors, "rope", [("x", randn(BATCH, HEADS, SEQ, HEAD_DIM)), ("positions", positions)],
            rope)
    op_case(tensors, "swiglu", [("a", randn(BATCH, SEQ, INTER)), ("b", randn(BATCH, SEQ, INTER))],
            lambda a, b: F.silu(a) * b)
    targets = ints(0, VOCAB, BATCH, SEQ)
    targets[0, 1] = IGNORE
    targets[1, 4] = IGNORE
    op_case(tensors, "seq_cross_entropy",
            [("logits", randn(BATCH, SEQ, VOCAB)), ("targets", targets)],
            lambda z, y: F.cross_entropy(z.reshape(-1, VOCAB), y.reshape(-1),
                                         ignore_index=IGNORE))


def model_case(tensors):
    prefix = "model.layers.0."
    shapes = {
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
        prefix + "input_layernorm.weight": (HIDDEN,),
        prefix + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
        prefix + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
        prefix + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
        prefix + "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
        prefix + "post_attention_layernorm.weight": (HIDDEN,),
        prefix + "mlp.gate_proj.weight": (INTER, HIDDEN),
        prefix + "mlp.up_proj.weight": (INTER, HIDDEN),
        prefix + "mlp.down_proj.weight": (HIDDEN, INTER),
        "model.norm.weight": (HIDDEN,),
        "lm_head.weight": (VOCAB, HIDDEN),
    }
    params = {}
    for name, shape in shapes.items():
        if len(shape) == 1:  # norm weights: around HF's init of ones
            t = 1 + randn(*shape, scale=0.2)
        elif name == "model.embed_tokens.weight":
            t = randn(*shape)
        else:  # nn.Linear's default init range
            bound = 1 / math.sqrt(shape[1])
            t = (torch.rand(*shape) * 2 - 1) * bound
        params[name] = t.requires_grad_(True)
    ids = ints(0, VOCAB, BATCH, SEQ)
    targets = torch.cat([ids[:, 1:], torch.full((BATCH, 1), IGNORE)], dim=1)  # next token
    targets[1, 0] = IGNORE
    positions = torch.arange(SEQ)

    x = F.embedding(ids, params["model.embed_tokens.weight"])
    block_out = decoder_layer(x, params, prefix, positions)
    logits = F.linear(rms_norm(block_out, params["model.norm.weight"]), params["lm_head.weight"])
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=IGNORE)
    loss.backward()

    tensors += [(f"model.param.{n}", t) for n, t in params.items()]
    tensors += [("model.ids", ids.to(torch.int32)), ("model.targets", targets.to(torch.int32)),
                ("model.block_out", block_out), ("model.logits", logits),
                ("model.loss", loss.reshape(()))]
    tensors += [(f"model.grad.{n}", t.grad) for n, t in params.items()]


def main():
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(SEED)
    tensors = []
    op_cases(tensors)
    model_case(tensors)
    tensors = [(n, t.detach()) for n, t in tensors]
    for n, t in tensors:
        assert t.dtype in (torch.float32, torch.int32), (n, t.dtype)
    names = [n for n, _ in tensors]
    assert len(names) == len(set(names)), "duplicate tensor names"
    metadata = {
        "generator": "tests/golden/gen_transformer_golden.py",
        "torch_version": torch.__version__,
        "seed": SEED,
        "config": json.dumps(dict(batch=BATCH, seq=SEQ, hidden=HIDDEN, heads=HEADS,
                                  kv_heads=KV_HEADS, head_dim=HEAD_DIM, intermediate=INTER,
                                  vocab=VOCAB, rms_eps=RMS_EPS, layer_norm_eps=LN_EPS,
                                  rope_base=ROPE_BASE, ignore_index=IGNORE)),
    }
    size = write_safetensors(OUT_PATH, tensors, metadata)
    print(f"wrote {OUT_PATH}: {len(tensors)} tensors, {size} bytes, "
          f"torch {torch.__version__}, seed {SEED}")


if __name__ == "__main__":
    main()
