"""PyTorch eager twin of `feral-bench-train --mode step`: the worker's compact CNN (three
stages of two bias-free 3x3 convolutions with batch norm and ReLU, a 2x2 max-pool, widths
32/64/128, global average pooling, dropout 0.3, a linear classifier), trained with the
same step (forward, cross-entropy, backward, AdamW lr 0.002, weight decay 5e-4) on the
same ready batches (images k*batch.. of the data file, in order, pixels / 127.5 - 1),
laid out channels-last in memory as Feral's loader makes them (or N x C x H x W with
--layout nchw).
Prints the median images/s over --repeats timed runs of --steps steps after --warmup.
--arch resnet18 trains a ResNet-18 built as the worker builds it (torchvision's layout:
7x7 stride-2 stem and max-pool for sides of 96 and more, else a 3x3 stride-1 stem), on
--device cuda:N; --compile wraps the model in torch.compile.

    .venv/bin/python scripts/bench_train_torch.py --data FILE --threads 1 [--csv]
"""

import argparse
import statistics
import time

import numpy as np
import torch
from safetensors.numpy import load_file
from torch import nn

CLASSES = 7


def compact_cnn(in_channels: int, classes: int, width: int = 32, dropout: float = 0.3) -> nn.Module:
    layers = []
    channels = in_channels
    for out in (width, width * 2, width * 4):
        for _ in range(2):
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


def resnet18(in_channels: int, classes: int, side: int) -> nn.Module:
    small = side < 96
    layers = [nn.Conv2d(in_channels, 64, 3 if small else 7, 1 if small else 2, 1 if small else 3, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    if not small:
        layers.append(nn.MaxPool2d(3, 2, 1))
    channels = 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for index in range(2):
            layers.append(BasicBlock(channels, width, 2 if stage > 0 and index == 0 else 1))
            channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(channels, classes)]
    return nn.Sequential(*layers)


def load_data(path: str):
    tensors = load_file(path)
    return tensors["images"], tensors["labels"]


def ready_batches(images: np.ndarray, labels: np.ndarray, batch: int, layout: str, count: int = 16):
    """Batches k*batch.. (wrapping) as [N, C, H, W] floats, as the Rust side builds them."""
    out = []
    for k in range(count):
        index = (np.arange(batch) + k * batch) % len(labels)
        chunk = torch.from_numpy(images[index]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if layout == "nchw":
            # A real copy: with one channel, .contiguous() keeps channels-last strides.
            chunk = torch.empty(chunk.shape).copy_(chunk)
        else:
            chunk = chunk.contiguous(memory_format=torch.channels_last)
        out.append((chunk, torch.from_numpy(labels[index]).long()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layout", choices=["channels-last", "nchw"], default="channels-last")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--csv", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", choices=["compact-cnn", "resnet18"], default="compact-cnn")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(7)
    images, labels = load_data(args.data)
    device = torch.device(args.device)
    batches = [(x.to(device), y.to(device)) for x, y in ready_batches(images, labels, args.batch, args.layout)]
    if args.arch == "resnet18":
        model = resnet18(images.shape[3], CLASSES, min(images.shape[1], images.shape[2]))
    else:
        model = compact_cnn(images.shape[3], CLASSES)
    model = model.to(device)
    if device.type == "cuda" and args.layout == "channels-last":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.002, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    position = 0

    def run(count: int) -> None:
        nonlocal position
        for _ in range(count):
            x, y = batches[position % len(batches)]
            position += 1
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                logits = forward(x).float()
            loss = loss_fn(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()

    run(args.warmup)
    rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        run(args.steps)
        rates.append(args.steps * args.batch / (time.perf_counter() - started))
    median = statistics.median(rates)
    if args.csv:
        print("implementation,mode,layout,threads,loader_threads,batch,steps,repeats,images_per_s,min,max")
        layout = args.layout + ("/bf16" if args.precision == "bf16" else "")
        implementation = "torch-compile" if args.compile else "torch"
        print(f"{implementation},step,{layout},{args.threads},0,{args.batch},{args.steps},{args.repeats},{median:.1f},{min(rates):.1f},{max(rates):.1f}")
    else:
        print(f"step: {median:.1f} images/s (median of {[round(r, 1) for r in rates]}), {args.threads} threads")


if __name__ == "__main__":
    main()
