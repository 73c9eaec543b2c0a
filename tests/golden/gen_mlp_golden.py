#!/usr/bin/python3
"""Generate the PyTorch golden reference for fleettune's MLP training tests.

Regenerate with:

    /usr/bin/python3 tests/golden/gen_mlp_golden.py

(Debian's /usr/bin/python3, which has torch; a different `python3` on PATH may
not.)  The output, tests/golden/mlp_golden.safetensors, is committed; the C++
test reads that committed file, so PyTorch is NOT needed to build or run the
tests.  Only rerun this script when the reference itself must change.

The file is written in the safetensors format by hand (the `safetensors`
package is not required): an 8-byte little-endian uint64 header length, a JSON
header (padded with spaces to a multiple of 8 bytes) mapping each tensor name to
{"dtype", "shape", "data_offsets": [begin, end]} plus "__metadata__", then the
raw little-endian tensor data concatenated in header order.

Contents (everything float32 except `labels`, which is int32; torch.manual_seed(0)
is called once, then the model is constructed, then `x`, then `labels` drawn):

  fc1.weight [32,784]  fc1.bias [32]      initial params, PyTorch default init
  fc2.weight [16,32]   fc2.bias [16]      (model: fc1 -> ReLU -> fc2 -> ReLU -> fc3)
  fc3.weight [10,16]   fc3.bias [10]
  x [16,784]           uniform [0,1)
  labels [16]          int32 in 0..9
  logits [16,10]       model(x) with the initial params
  loss []              F.cross_entropy(logits, labels), mean reduction
  grad.<param>         d loss / d param, all six params
  frozen1.grad.<param> grads of fc2/fc3 params with fc1.weight/fc1.bias
                       requires_grad=False (must equal grad.<param>)
  sgd.step2.<param>    params after 2 steps of SGD(lr=0.1, momentum=0.9,
                       weight_decay=1e-4) on the same batch, from the initial
                       params, loss recomputed each step
  adamw.step2.<param>  params after 2 steps of AdamW(lr=1e-2, betas=(0.9,0.999),
                       eps=1e-8, weight_decay=1e-2), same setup
"""

import copy
import json
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SEED = 0
BATCH = 16
SIZES = (784, 32, 16, 10)
SGD_HP = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
ADAMW_HP = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
STEPS = 2

OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "mlp_golden.safetensors")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(SIZES[0], SIZES[1])
        self.fc2 = nn.Linear(SIZES[1], SIZES[2])
        self.fc3 = nn.Linear(SIZES[2], SIZES[3])

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


_DTYPES = {torch.float32: ("F32", "<f4"), torch.int32: ("I32", "<i4")}


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, torch.Tensor) in the order to write them."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
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


def train_steps(init_state, x, labels, make_opt):
    model = MLP()
    model.load_state_dict(init_state)
    opt = make_opt(model.parameters())
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main():
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(SEED)

    model = MLP()
    x = torch.rand(BATCH, SIZES[0], dtype=torch.float32)
    labels = torch.randint(0, SIZES[-1], (BATCH,), dtype=torch.int64)

    init_state = copy.deepcopy(model.state_dict())
    names = list(init_state.keys())
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                     "fc3.weight", "fc3.bias"], names

    # Forward/backward with all params trainable.
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    # fc1 frozen.
    frozen = MLP()
    frozen.load_state_dict(init_state)
    frozen.fc1.weight.requires_grad_(False)
    frozen.fc1.bias.requires_grad_(False)
    F.cross_entropy(frozen(x), labels).backward()
    frozen_grads = {n: p.grad.detach().clone()
                    for n, p in frozen.named_parameters() if p.requires_grad}
    assert sorted(frozen_grads) == sorted(names[2:])
    for n, g in frozen_grads.items():
        assert torch.allclose(g, grads[n], rtol=1e-6, atol=1e-7), n

    sgd = train_steps(init_state, x, labels,
                      lambda ps: torch.optim.SGD(ps, **SGD_HP))
    adamw = train_steps(init_state, x, labels,
                        lambda ps: torch.optim.AdamW(ps, **ADAMW_HP))

    tensors = [(n, init_state[n]) for n in names]
    tensors += [("x", x), ("labels", labels.to(torch.int32)),
                ("loss", loss.detach().reshape(())),
                ("logits", logits.detach())]
    tensors += [(f"grad.{n}", grads[n]) for n in names]
    tensors += [(f"frozen1.grad.{n}", frozen_grads[n]) for n in names[2:]]
    tensors += [(f"sgd.step2.{n}", sgd[n]) for n in names]
    tensors += [(f"adamw.step2.{n}", adamw[n]) for n in names]
    for n, t in tensors:
        assert t.dtype in (torch.float32, torch.int32), (n, t.dtype)

    metadata = {
        "generator": "tests/golden/gen_mlp_golden.py",
        "torch_version": torch.__version__,
        "seed": SEED,
        "num_threads": 1,
        "batch": BATCH,
        "sizes": ",".join(map(str, SIZES)),
        "model": "fc1 -> relu -> fc2 -> relu -> fc3, nn.Linear default init",
        "draw_order": "manual_seed(0); MLP(); x=torch.rand; labels=torch.randint(0,10)",
        "loss": "F.cross_entropy(logits, labels) reduction=mean",
        "steps": STEPS,
        "sgd": json.dumps(SGD_HP),
        "adamw": json.dumps(ADAMW_HP),
        "frozen1": "fc1.weight, fc1.bias requires_grad=False",
    }
    size = write_safetensors(OUT_PATH, tensors, metadata)
    print(f"wrote {OUT_PATH}: {len(tensors)} tensors, {size} bytes, "
          f"loss={loss.item():.6f}, torch {torch.__version__}, seed {SEED}")


if __name__ == "__main__":
    main()
