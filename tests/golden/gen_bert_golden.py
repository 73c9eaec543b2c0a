#!/usr/bin/python3
"""Generate the PyTorch golden reference for fleettune's BERT builder.

Regenerate with:

    /usr/bin/python3 tests/golden/gen_bert_golden.py

(Debian's /usr/bin/python3, which has torch 1.13.)  The output,
tests/golden/bert_golden.safetensors, is committed; bert_golden_test.cc reads
it, so PyTorch is NOT needed to build or run the tests.

Hugging Face transformers is not on Debian, so BertForSequenceClassification
is spelled out below with plain torch.nn modules whose attribute paths give
exactly HF's state_dict names (bert.embeddings.word_embeddings.weight,
bert.encoder.layer.0.attention.self.query.weight, ..., classifier.bias).
Dropout is off (eval mode).  Config: vocab 50, hidden 16, 2 layers, 2 heads,
FFN 32, max positions 8, type vocab 2, sequence 6, batch 2, 3 labels,
LayerNorm eps 1e-12.

Weights are drawn as HF's _init_weights does, except that LayerNorm affine
parameters and biases get small random perturbations so that their gradients
test something (a zero bias would hide a missing one).

Stored tensors: `param.<name>` for every parameter, `input_ids`,
`token_type_ids`, `position_ids`, `labels` (int32), `logits`, `loss`, and
`grad.<name>` for every parameter.
"""

import json
import math
import os
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 0
VOCAB, HIDDEN, LAYERS, HEADS, FFN = 50, 16, 2, 2, 32
MAX_POS, TYPE_VOCAB, SEQ, BATCH, LABELS = 8, 2, 6, 2, 3
EPS = 1e-12
HEAD_DIM = HIDDEN // HEADS

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bert_golden.safetensors")

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


# --- Hugging Face BERT, spelled out ---------------------------------------------

class BertEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN)
        self.position_embeddings = nn.Embedding(MAX_POS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(TYPE_VOCAB, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=EPS)

    def forward(self, input_ids, token_type_ids, position_ids):
        e = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(token_type_ids))
        return self.LayerNorm(e)


class BertSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x):
        b, t, _ = x.shape

        def heads(y):
            return y.view(b, t, HEADS, HEAD_DIM).permute(0, 2, 1, 3)
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
        probs = F.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(b, t, HIDDEN)


class BertDenseNorm(nn.Module):  # BertSelfOutput / BertOutput
    def __init__(self, fan_in):
        super().__init__()
        self.dense = nn.Linear(fan_in, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=EPS)

    def forward(self, h, residual):
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.self = BertSelfAttention()
        self.output = BertDenseNorm(HIDDEN)

    def forward(self, x):
        return self.output(self.self(x), x)


class BertIntermediate(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, FFN)

    def forward(self, x):
        return F.gelu(self.dense(x))  # erf GELU, HF's hidden_act="gelu"


class BertLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = BertAttention()
        self.intermediate = BertIntermediate()
        self.output = BertDenseNorm(FFN)

    def forward(self, x):
        h = self.attention(x)
        return self.output(self.intermediate(h), h)


class BertEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer() for _ in range(LAYERS)])

    def forward(self, x):
        for layer in self.layer:
            x = layer(x)
        return x


class BertPooler(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))


class BertModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = BertEmbeddings()
        self.encoder = BertEncoder()
        self.pooler = BertPooler()

    def forward(self, input_ids, token_type_ids, position_ids):
        return self.pooler(self.encoder(self.embeddings(input_ids, token_type_ids,
                                                        position_ids)))


class BertForSequenceClassification(nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = BertModel()
        self.classifier = nn.Linear(HIDDEN, LABELS)

    def forward(self, input_ids, token_type_ids, position_ids):
        return self.classifier(self.bert(input_ids, token_type_ids, position_ids))


def init_weights(model):
    """HF's _init_weights, then small perturbations of biases and LayerNorms."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, 0.02)
            if isinstance(module, nn.Linear):
                module.bias.normal_(0.0, 0.02)
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1.0 + 0.1 * torch.randn(HIDDEN))
                module.bias.normal_(0.0, 0.1)
        # Larger embeddings and a larger classifier than 0.02 keep the
        # gradients well above float32 noise.
        model.bert.embeddings.word_embeddings.weight.mul_(25.0)
        model.classifier.weight.mul_(25.0)


def main():
    torch.manual_seed(SEED)
    model = BertForSequenceClassification()
    init_weights(model)
    model.eval()
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    token_type_ids = torch.randint(0, TYPE_VOCAB, (BATCH, SEQ))
    position_ids = torch.arange(SEQ)
    labels = torch.randint(0, LABELS, (BATCH,))
    logits = model(input_ids, token_type_ids, position_ids)
    loss = F.cross_entropy(logits, labels)
    loss.backward()

    tensors = []
    named = list(model.named_parameters())
    tensors += [("param." + n, p) for n, p in named]
    tensors += [("input_ids", input_ids.to(torch.int32)),
                ("token_type_ids", token_type_ids.to(torch.int32)),
                ("position_ids", position_ids.to(torch.int32)),
                ("labels", labels.to(torch.int32)),
                ("logits", logits), ("loss", loss)]
    tensors += [("grad." + n, p.grad) for n, p in named]
    metadata = {
        "generator": "tests/golden/gen_bert_golden.py",
        "torch": torch.__version__,
        "config": json.dumps({"vocab": VOCAB, "hidden": HIDDEN, "layers": LAYERS,
                              "heads": HEADS, "ffn": FFN, "max_positions": MAX_POS,
                              "type_vocab": TYPE_VOCAB, "seq_len": SEQ, "batch": BATCH,
                              "num_labels": LABELS, "eps": EPS}),
    }
    size = write_safetensors(OUT_PATH, tensors, metadata)
    print(f"wrote {OUT_PATH} ({size} bytes, {len(tensors)} tensors); loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
