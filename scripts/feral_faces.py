"""What the PyTorch references (usb_reference.py, ssl_reference.py) share with Feral.

Feral's compact CNN, the splits of a dataset `feral prepare` wrote, Feral's weak view and
input scaling, its learning-rate schedule and its metrics, each written to match the Rust
code it names, so that a reference trains and scores what Feral trains and scores.
"""

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms


class CompactCnn(nn.Module):
    """Feral's compact CNN (worker/src/train/model), returning what USB's nets return.

    Three stages of two 3x3 conv + BN + ReLU, then a 2x2 max-pool; widths w, 2w, 4w; global
    average pool, dropout, a linear head. PyTorch's default initialisation, which is
    Feral's (U(+-1/sqrt(fan_in)), BN scale 1). `body` is the backbone, `features` its
    pooled output (`num_features` wide), `classifier` the head.
    """

    def __init__(self, channels, classes, width, dropout=0.3):
        super().__init__()
        layers, c = [], channels
        for out in (width, 2 * width, 4 * width):
            for _ in range(2):
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, classes)
        self.num_features = c

    def features(self, x):
        """The backbone's globally average-pooled features, without dropout or head."""
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)

    def forward(self, x, only_fc=False, only_feat=False):
        if only_fc:
            return self.classifier(x)
        feat = self.features(x)
        if only_feat:
            return feat
        return {"logits": self.classifier(self.dropout(feat)), "feat": feat}


def read_split(root, manifest, split):
    """One split's images (N x H x W x C, uint8), labels and hidden labels."""
    shards = [load_file(os.path.join(root, s["file"])) for s in manifest["splits"][split]["shards"]]
    images = torch.cat([s["images"] for s in shards])
    labels = torch.cat([s["labels"] for s in shards])
    hidden = torch.cat([s.get("hidden_labels", s["labels"]) for s in shards])
    return images, labels, hidden


def face(images, i):
    """Image i of a split (N x H x W x C, uint8) as a PIL image, grey or RGB."""
    pixels = images[i].numpy()
    return Image.fromarray(pixels[:, :, 0], "L") if pixels.shape[2] == 1 else Image.fromarray(pixels, "RGB")


def weak_ops(size):
    """Feral's weak view, from torchvision: flip, pad-crop with replicated edges, rotation, jitter."""
    return [
        transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(size, padding=4, padding_mode="edge"),
        transforms.RandomRotation(10, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ColorJitter(brightness=0.2, contrast=0.2),
    ]


def to_tensor(channels):
    """pixels / 127.5 - 1, as Feral feeds its network."""
    return [transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)]


def in_chunks(fn, images, size=256):
    """fn over a whole split (N x H x W x C, uint8) scaled as Feral scales it, `size` at a time."""
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.cat([fn(x[i:i + size]) for i in range(0, len(x), size)])


def feral_schedule(total):
    """Feral's learning-rate factor at step s (worker/src/train: warm-up 5%, half cosine)."""
    warmup = max(total // 20, 1)

    def factor(s):
        if s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1)))

    return factor


def scores(labels, predicted, classes):
    """Feral's metrics (common/src/metrics.rs): accuracy, macro-F1 (the mean of the per-class
    F1, 0 for a class never predicted or never present) and the per-class F1."""
    k = len(classes)
    confusion = torch.bincount(labels * k + predicted, minlength=k * k).reshape(k, k).double()
    tp = confusion.diag()
    precision = torch.where(confusion.sum(0) > 0, tp / confusion.sum(0).clamp(min=1), torch.zeros(k, dtype=torch.double))
    recall = torch.where(confusion.sum(1) > 0, tp / confusion.sum(1).clamp(min=1), torch.zeros(k, dtype=torch.double))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros(k, dtype=torch.double))
    return {"accuracy": float(tp.sum() / confusion.sum()), "macro_f1": float(f1.mean()),
            "per_class_f1": dict(zip(classes, [float(v) for v in f1])), "samples": len(labels)}
