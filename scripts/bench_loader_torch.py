"""PyTorch `DataLoader` twin of `feral-bench-train --mode loader`: class-uniform sampling
with replacement, per-sample augmentation on the raw bytes in numpy (horizontal flip, a
crop of the image padded by 4 replicated-edge pixels, a rotation in +-10 degrees with
bilinear interpolation, brightness and contrast factors in 1 +- 0.2), normalisation to
pixels / 127.5 - 1 as N x C x H x W float batches of 64. (torchvision is not used.)
Prints the median images/s over --repeats timed runs of --steps batches after --warmup.

    .venv/bin/python scripts/bench_loader_torch.py --data FILE --workers 0 [--csv]
"""

import argparse
import statistics
import time

import numpy as np
import torch
from safetensors.numpy import load_file
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

PAD, MAX_DEGREES, BRIGHTNESS, CONTRAST = 4, 10.0, 0.2, 0.2


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One H x W x C uint8 image, augmented as Feral's loader does."""
    h, w, _ = image.shape
    if rng.random() < 0.5:
        image = image[:, ::-1]
    dy, dx = rng.integers(-PAD, PAD + 1, size=2)
    padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)), mode="edge")
    image = padded[PAD + dy : PAD + dy + h, PAD + dx : PAD + dx + w].astype(np.float32)
    angle = np.deg2rad((2.0 * rng.random() - 1.0) * MAX_DEGREES)
    cos, sin = np.cos(angle), np.sin(angle)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    v, u = v - cy, u - cx
    sx = np.clip(cos * u + sin * v + cx, 0, w - 1)
    sy = np.clip(cos * v - sin * u + cy, 0, h - 1)
    x0, y0 = sx.astype(np.int64), sy.astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    top = image[y0, x0] + fx * (image[y0, x1] - image[y0, x0])
    bottom = image[y1, x0] + fx * (image[y1, x1] - image[y1, x0])
    image = np.clip(np.rint(top + fy * (bottom - top)), 0, 255)
    brightness = 1.0 + (2.0 * rng.random() - 1.0) * BRIGHTNESS
    contrast = 1.0 + (2.0 * rng.random() - 1.0) * CONTRAST
    image = image * brightness
    mean = image.mean()
    return np.clip(np.rint(mean + contrast * (image - mean)), 0, 255).astype(np.uint8)


class Augmented(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int = 7):
        self.images, self.labels, self.seed = images, labels, seed
        self.calls = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        self.calls += 1
        rng = np.random.default_rng((self.seed, index, self.calls))
        image = augment(self.images[index], rng)
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 127.5 - 1.0
        return tensor, int(self.labels[index])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--csv", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(1)
    tensors = load_file(args.data)
    images, labels = tensors["images"], tensors["labels"]
    counts = np.bincount(labels[labels >= 0])
    weights = np.where(labels >= 0, 1.0 / np.maximum(counts[np.maximum(labels, 0)], 1), 0.0)
    batches = args.warmup + args.steps * args.repeats
    sampler = WeightedRandomSampler(torch.from_numpy(weights), batches * args.batch, replacement=True,
                                    generator=torch.Generator().manual_seed(7))
    loader = DataLoader(Augmented(images, labels), batch_size=args.batch, sampler=sampler,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    stream = iter(loader)

    def run(count: int) -> None:
        for _ in range(count):
            x, y = next(stream)
            assert x.shape[0] == args.batch

    run(args.warmup)
    rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        run(args.steps)
        rates.append(args.steps * args.batch / (time.perf_counter() - started))
    median = statistics.median(rates)
    if args.csv:
        print("implementation,mode,layout,threads,loader_threads,batch,steps,repeats,images_per_s,min,max")
        print(f"torch,loader,nchw,1,{args.workers},{args.batch},{args.steps},{args.repeats},{median:.1f},{min(rates):.1f},{max(rates):.1f}")
    else:
        print(f"DataLoader(num_workers={args.workers}): {median:.1f} images/s (median of {[round(r, 1) for r in rates]})")


if __name__ == "__main__":
    main()
