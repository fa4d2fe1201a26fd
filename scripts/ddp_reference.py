"""PyTorch DDP reference for the time-to-accuracy race (scripts/bench-ddp.sh, issue 13): the
supervised job Feral runs, written the way a PyTorch user would, for
`torchrun --nproc-per-node N` with gloo on CPU. Same model (the compact CNN of
scripts/bench_train_torch.py), same data (a prepared Feral dataset directory: its train
split's labelled images, its val split), the same batches and steps (class-uniform draws of
--batch images per rank and step, --steps steps an epoch), the same weak view (flip, a shift
of up to 4 pixels with replicated edges, a rotation of up to 10 degrees, brightness and
contrast x(1 +- 0.2)), pixels / 127.5 - 1, AdamW (lr 0.002, weight decay 5e-4) with a 5%
linear warm-up then cosine decay over all steps, and the model evaluated each epoch is an
EMA of the weights (decay (1+t)/(10+t), at most 0.999), as Feral's is.

Rank 0 prints one line per epoch, `epoch E UNIX_SECONDS VAL_MACRO_F1`.

    torchrun --nproc-per-node 2 scripts/ddp_reference.py --data DIR --epochs 12 --steps 45 --batch 64 --threads 1
"""

import argparse
import copy
import json
import math
import pathlib
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.numpy import load_file

from bench_train_torch import CLASSES, compact_cnn


def read_split(data: pathlib.Path, split: str):
    manifest = json.loads((data / "manifest.json").read_text())
    images, labels = [], []
    for shard in manifest["splits"][split]["shards"]:
        tensors = load_file(str(data / shard["file"]))
        images.append(tensors["images"])
        labels.append(tensors["labels"])
    images, labels = np.concatenate(images), np.concatenate(labels)
    keep = labels >= 0
    return torch.from_numpy(images[keep]).permute(0, 3, 1, 2).float() / 127.5 - 1.0, torch.from_numpy(labels[keep]).long()


def weak_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    # Shift and rotation in one affine resampling with replicated edges.
    h, w = x.shape[2], x.shape[3]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(10)
    shift = torch.randint(-4, 5, (n, 2), generator=generator).float()
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1),
        torch.stack([sin, cos, shift[:, 1] * 2 / h], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    brightness = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.2
    contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.2
    pixels = (x + 1) * 127.5 * brightness
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    pixels = ((pixels - mean) * contrast + mean).clamp(0, 255)
    return pixels / 127.5 - 1.0


def macro_f1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(images[i:i + 256]).argmax(1) for i in range(0, len(labels), 256)])
    f1 = []
    for c in range(CLASSES):
        tp = ((predicted == c) & (labels == c)).sum().item()
        fp = ((predicted == c) & (labels != c)).sum().item()
        fn = ((predicted != c) & (labels == c)).sum().item()
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1) / CLASSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=pathlib.Path)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=45)
    parser.add_argument("--batch", type=int, default=64, help="images per rank and step")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_x, train_y = read_split(args.data, "train")
    val_x, val_y = read_split(args.data, "val")
    by_class = [torch.nonzero(train_y == c).flatten() for c in range(CLASSES)]
    by_class = [c for c in by_class if len(c)]
    channels = train_x.shape[1]
    model = torch.nn.parallel.DistributedDataParallel(compact_cnn(channels, CLASSES).to(memory_format=torch.channels_last))
    ema = copy.deepcopy(model.module)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.002, weight_decay=5e-4, eps=1e-8)
    total = args.epochs * args.steps
    warmup = max(total // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1))))
    generator = torch.Generator().manual_seed(args.seed * 1000 + rank)
    step = 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        for _ in range(args.steps):
            classes = torch.randint(len(by_class), (args.batch,), generator=generator)
            index = torch.stack([by_class[c][torch.randint(len(by_class[c]), (1,), generator=generator)][0] for c in classes.tolist()])
            images = weak_view(train_x[index], generator).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(images), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            decay = min((1 + step) / (10 + step), 0.999)
            with torch.no_grad():
                for average, current in zip(ema.state_dict().values(), model.module.state_dict().values()):
                    if average.is_floating_point():
                        average.mul_(decay).add_(current, alpha=1 - decay)
                    else:
                        average.copy_(current)
            step += 1
        if rank == 0:
            print(f"epoch {epoch} {time.time():.3f} {macro_f1(ema, val_x, val_y):.4f}", flush=True)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
