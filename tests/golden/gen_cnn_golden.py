#!/usr/bin/python3
"""Generate the PyTorch golden reference for fleettune's CNN operators.

Regenerate with:

    /usr/bin/python3 tests/golden/gen_cnn_golden.py

(Debian's /usr/bin/python3, which has torch.)  The output,
tests/golden/cnn_golden.safetensors, is committed; tests/golden/cnn_golden_test.cc
reads it, so PyTorch is NOT needed to build or run the tests.  The file format
is written by gen_mlp_golden.write_safetensors.

The network exercises every CNN operator variant once (batch 4, 1x12x12 input):

  conv1  Conv2d(1, 8, 3, padding=1)                      with bias
  bn1    BatchNorm2d(8)                                  -> relu
  conv2  Conv2d(8, 8, 3, padding=2, dilation=2, groups=2) -> silu
  conv3  Conv2d(8, 8, 3, padding=1, groups=8, bias=False) depthwise
  bn2    BatchNorm2d(8)                                  -> relu6
         max_pool2d(3, stride=2, padding=1)              12x12 -> 6x6
  conv4  Conv2d(8, 16, 3, stride=2, padding=1)           6x6 -> 3x3 -> gelu(tanh)
  conv5  Conv2d(16, 16, 1)                               pointwise -> gelu(erf)
  conv6  Conv2d(16, 16, (3, 2), stride=(1, 2), padding=(1, 1), bias=False)  3x3 -> 3x2
  bn3    BatchNorm2d(16)
         avg_pool2d(3, stride=1, padding=1, count_include_pad=False) -> tanh
         avg_pool2d(2, stride=1)                          3x2 -> 2x1 (count_include_pad=True)
         mean over H, W (global average pooling)
  fc     Linear(16, 10)                                  -> logits
  loss = cross_entropy(logits, labels) + mse_loss(sigmoid(logits), target)

Contents (float32 except labels and num_batches_tracked, int32):

  <param>, <buffer>        initial state_dict; BatchNorm weight/bias and running
                           statistics are randomized so no term is trivial
  x [4,1,12,12], labels [4], target [4,10]
  train.logits, train.loss model.train() forward (batch statistics)
  train.grad.<param>       gradients of train.loss, every parameter
  train.<bn>.running_mean, .running_var, .num_batches_tracked
                           buffers after that forward (momentum 0.1)
  eval.logits, eval.loss   model.eval() forward with the updated buffers
  eval.grad.<param>        gradients of eval.loss (frozen statistics)
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.dont_write_bytecode = True  # no __pycache__ beside the committed files
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_mlp_golden import write_safetensors  # noqa: E402

SEED = 0
BATCH = 4
OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "cnn_golden.safetensors")


class GoldenCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv4 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.conv5 = nn.Conv2d(16, 16, 1)
        self.conv6 = nn.Conv2d(16, 16, (3, 2), stride=(1, 2), padding=(1, 1),
                               bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.silu(self.conv2(h))
        h = F.relu6(self.bn2(self.conv3(h)))
        h = F.max_pool2d(h, 3, stride=2, padding=1)
        h = F.gelu(self.conv4(h), approximate="tanh")
        h = F.gelu(self.conv5(h))
        h = self.bn3(self.conv6(h))
        h = torch.tanh(F.avg_pool2d(h, 3, stride=1, padding=1,
                                    count_include_pad=False))
        h = F.avg_pool2d(h, 2, stride=1)
        return self.fc(h.mean((2, 3)))


def loss_fn(logits, labels, target):
    return (F.cross_entropy(logits, labels)
            + F.mse_loss(torch.sigmoid(logits), target))


def run(model, x, labels, target):
    model.zero_grad(set_to_none=True)
    logits = model(x)
    loss = loss_fn(logits, labels, target)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return logits.detach().clone(), loss.detach().reshape(()), grads


def main():
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model = GoldenCnn()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(BATCH, 1, 12, 12)
    labels = torch.randint(0, 10, (BATCH,))
    target = torch.rand(BATCH, 10)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}

    model.train()
    train_logits, train_loss, train_grads = run(model, x, labels, target)
    after = {k: v.detach().clone() for k, v in model.state_dict().items()
             if "running" in k or "num_batches" in k}
    model.eval()
    eval_logits, eval_loss, eval_grads = run(model, x, labels, target)

    def f32_or_i32(t):
        return t.to(torch.int32) if t.dtype == torch.int64 else t

    tensors = [(k, f32_or_i32(v)) for k, v in init.items()]
    tensors += [("x", x), ("labels", labels.to(torch.int32)), ("target", target)]
    tensors += [("train.logits", train_logits), ("train.loss", train_loss)]
    tensors += [(f"train.grad.{n}", g) for n, g in train_grads.items()]
    tensors += [(f"train.{k}", f32_or_i32(v)) for k, v in after.items()]
    tensors += [("eval.logits", eval_logits), ("eval.loss", eval_loss)]
    tensors += [(f"eval.grad.{n}", g) for n, g in eval_grads.items()]
    metadata = {
        "generator": "tests/golden/gen_cnn_golden.py",
        "torch_version": torch.__version__,
        "seed": SEED,
        "num_threads": 1,
        "loss": "cross_entropy(logits, labels) + mse_loss(sigmoid(logits), target)",
    }
    size = write_safetensors(OUT_PATH, tensors, metadata)
    print(f"wrote {OUT_PATH}: {len(tensors)} tensors, {size} bytes, "
          f"train loss {train_loss.item():.6f}, eval loss {eval_loss.item():.6f}")


if __name__ == "__main__":
    main()
