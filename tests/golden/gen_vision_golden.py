#!/usr/bin/python3
"""Generate the PyTorch golden references for fleettune's vision model builders.

Regenerate with:

    /usr/bin/python3 tests/golden/gen_vision_golden.py

(Debian's /usr/bin/python3 with python3-torch and python3-torchvision.)  The
outputs are committed; tests/golden/vision_golden_test.cc reads them, so
PyTorch is NOT needed to build or run the tests.

  vision_golden_mobilenet_v2.safetensors
      torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10),
      input 2x3x64x64; classifier dropout set to p=0 (dropout is seeded
      differently in the engine, so it cannot be compared bit for bit).
  vision_golden_resnet.safetensors
      torchvision's ResNet with BasicBlock and [2, 2, 2, 2] blocks (resnet18)
      but base width 8 instead of 64: torchvision hard-codes 64 channels, so
      SmallResNet below repeats ResNet.__init__ with a width parameter and
      reuses torchvision's BasicBlock, _make_layer and forward unchanged. The
      script asserts that at width 64 its state_dict keys equal resnet18()'s.
      Input 2x3x64x64 (at 32x32 the last stages are 1x1, and a training-mode
      BatchNorm over 2 values passes back a gradient that is 0 up to rounding
      noise, which no comparison can check).

Both models run in train() mode (BatchNorm with batch statistics). BatchNorm
weights and biases are randomized so no term is trivial. Contents (float32
except labels and num_batches_tracked, int32):

  <param>, <buffer>      initial state_dict, torchvision names
  x [2,3,32,32], labels [2]
  train.logits, train.loss   cross_entropy(logits, labels)
  train.grad.<param>         gradients of train.loss, every parameter
  train.<bn>.running_mean, .running_var, .num_batches_tracked  after the step
"""

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet

sys.dont_write_bytecode = True  # no __pycache__ beside the committed files
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_mlp_golden import write_safetensors  # noqa: E402

SEED = 0
BATCH = 2
RESOLUTION = 64
CLASSES = 10
HERE = os.path.dirname(os.path.abspath(__file__))


class SmallResNet(ResNet):
    """torchvision's ResNet.__init__ with `width` in place of the fixed 64."""

    def __init__(self, layers, width, num_classes):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = width
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # BasicBlock only accepts 64 (its own check)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, width, layers[0])
        self.layer2 = self._make_layer(BasicBlock, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * BasicBlock.expansion, num_classes)


def generate(model, path, description):
    torch.manual_seed(SEED + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(BATCH, 3, RESOLUTION, RESOLUTION)
    labels = torch.randint(0, CLASSES, (BATCH,))
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    after = {k: v.detach().clone() for k, v in model.state_dict().items()
             if "running" in k or "num_batches" in k}

    def f32_or_i32(t):
        return t.to(torch.int32) if t.dtype == torch.int64 else t

    tensors = [(k, f32_or_i32(v)) for k, v in init.items()]
    tensors += [("x", x), ("labels", labels.to(torch.int32))]
    tensors += [("train.logits", logits.detach().clone()),
                ("train.loss", loss.detach().reshape(()))]
    tensors += [(f"train.grad.{n}", g) for n, g in grads.items()]
    tensors += [(f"train.{k}", f32_or_i32(v)) for k, v in after.items()]
    metadata = {
        "generator": "tests/golden/gen_vision_golden.py",
        "model": description,
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "seed": SEED,
        "num_threads": 1,
        "loss": "cross_entropy(logits, labels)",
    }
    size = write_safetensors(path, tensors, metadata)
    print(f"wrote {path}: {len(tensors)} tensors, {size} bytes, loss {loss.item():.6f}")


def main():
    torch.set_num_threads(1)

    # The width-64 SmallResNet is torchvision's resnet18, name for name.
    ref = set(torchvision.models.resnet18(num_classes=CLASSES).state_dict().keys())
    assert set(SmallResNet([2, 2, 2, 2], 64, CLASSES).state_dict().keys()) == ref

    torch.manual_seed(SEED)
    mobilenet = torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=CLASSES)
    mobilenet.classifier[0].p = 0.0
    generate(mobilenet, os.path.join(HERE, "vision_golden_mobilenet_v2.safetensors"),
             "torchvision mobilenet_v2(width_mult=0.25, num_classes=10), dropout p=0, 64x64")

    torch.manual_seed(SEED)
    resnet = SmallResNet([2, 2, 2, 2], 8, CLASSES)
    generate(resnet, os.path.join(HERE, "vision_golden_resnet.safetensors"),
             "torchvision ResNet(BasicBlock, [2, 2, 2, 2]) with base width 8, 64x64")


if __name__ == "__main__":
    main()
