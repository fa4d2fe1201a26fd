"""Self-supervised pretraining of Feral's compact CNN with lightly, then Feral's fine-tuning.

The measurement reference for a pretraining phase: does a backbone pretrained without
labels on every training face give Feral's supervised recipe a better start than random
initialisation, by more than the spread between seeds? It runs in three parts.

1. Pretraining, with lightly's (PyPI `lightly`) heads, losses and momentum utilities, on
   every training face of a dataset `feral prepare` wrote: the labelled split and the pool,
   their labels unused (`--limit N` keeps only the first N pool images: for smoke tests
   only, its figures measure nothing). Each epoch visits every image once in a random
   order, in batches of `--batch-size` (128), the last short batch dropped.
   - `byol`: BYOL as lightly's CIFAR-10 benchmark sets it up (the batch-128, small-image
     setting closest to this one): `BYOLProjectionHead` (4w -> 1024 -> 256) and
     `BYOLPredictionHead` (256 -> 1024 -> 256) on the pooled features, a momentum copy of
     backbone and projection head kept by `update_momentum` with m = 0.99 (before each
     step, as lightly does), `NegativeCosineSimilarity`, symmetrised over the two views.
   - `moco`: MoCo v2 as the same benchmark sets it up: `MoCoProjectionHead` (4w -> 512 ->
     128, the v2 MLP), a momentum copy (m = 0.99), `NTXentLoss` with temperature 0.1 and a
     memory queue of 4,096 keys (`memory_bank_size=(4096, 128)`), symmetrised; shuffle-BN
     as the benchmark simulates it on one device: every BatchNorm of the backbone (online
     and momentum) is lightly's `SplitBatchNorm` over 8 sub-batches, and the key batch goes
     through lightly's `batch_shuffle`/`batch_unshuffle`. After pretraining the 8 sets of
     running statistics are averaged (SplitBatchNorm's own rule) into plain BatchNorm.
   - The optimiser of that benchmark for both: SGD, lr 0.06 (x batch/128), momentum 0.9,
     weight decay 5e-4 on every parameter, lr annealed per epoch by `CosineAnnealingLR`
     over `--epochs`; no warm-up.
   - Views: two independent draws per image from torchvision: a random resized crop back to
     48x48 of 50-100% of the area (aspect 3/4-4/3), a horizontal flip, a rotation up to 10
     degrees, and with probability 0.8 brightness and contrast jitter up to 40%; no colour,
     greyscale or blur ops (the faces are grey; lightly's CIFAR settings drop blur at this
     size). The crop's scale is 0.5-1 rather than the ImageNet 0.08-1: FER2013's faces are
     already cropped and aligned to fill the 48x48 frame, and the expression lies in the
     joint configuration of brows, eyes and mouth; a crop of 8% of the area is a 14x14 patch
     - an eye or a corner of the mouth - whose two views may share nothing that tells
     expressions apart, while half the area (a side of at least 34 pixels) still holds two
     of the three. Rotation and jitter match Feral's weak view, the jitter doubled and made
     random as in SimCLR/MoCo v2. Input pixels / 127.5 - 1, as Feral feeds its network.
   - Precision: bf16 autocast on the CPU around the networks; the losses in fp32.
   - After each epoch (and once before the first, at random initialisation): a k-NN
     probe with lightly's `knn_predict`, k = 20, on the L2-normalised pooled features of
     the online backbone in eval mode (fp32, no augmentation): the labelled split is the
     memory bank, the val split is classified, each neighbour voting with weight
     exp(cosine / 0.1) (lightly's weighted vote, temperature 0.1); accuracy and macro-F1.
   `--backbone FILE` saves the pretrained backbone with its settings, k-NN curve and
   timing; when FILE exists and was pretrained with the same objective, seed, epochs,
   batch size, width, limit and dataset, pretraining is skipped and its record reused.
   Pretraining also writes `FILE.resume` after every epoch (the online and momentum
   networks, MoCo's queue, the optimiser, the schedule and every random generator's
   state), so a run that is stopped (a session's end) goes on from its last epoch when
   the same command is run again; the file is removed once the backbone is saved.

2. and 3. Fine-tuning, twice, from the pretrained backbone and from random initialisation
   (`--starts` names which, both by default: the random start does not depend on the
   pretraining, so a longer pretraining of a seed already measured may leave it out), with
   the same seed and everything else the same (the same initial head, the same batches
   and views): Feral's supervised recipe, as usb_reference.py's supervised path sets it, on
   the labelled split only: class-uniform batches of 64 drawn with replacement, Feral's weak
   view, the compact CNN with dropout 0.3 and a fresh linear head, AdamW (lr 0.002, weight
   decay 5e-4 on every parameter, as Feral does), Feral's schedule (warm-up over 5% of the
   steps, then a half cosine to zero) over `--finetune-steps` (3,240, as bench-usb.sh),
   cross-entropy, bf16 autocast; an EMA of the weights and of the BN statistics (Feral's
   rule) with decay min(0.999, (1+k)/(10+k)) after step k. The EMA model is evaluated on
   the val and test halves in eval mode, fp32: Feral's macro-F1, accuracy, per-class F1.

It writes one JSON document: the settings, the k-NN curve, pretraining seconds and images/s
(images, each seen as two views, per second of training, the k-NN probes excluded), and for
each start fine-tuned (`pretrained`, `random`) the val/test metrics and fine-tuning seconds;
torch and lightly versions.

    target/ssl-venv/bin/python scripts/ssl_reference.py --data target/bench-usb/data \
        --objective byol --epochs 20 --seed 7 --threads 1 --backbone byol-e20-s7.pt --out byol-s7.json
"""

import argparse
import copy
import hashlib
import importlib.metadata
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.batchnorm import SplitBatchNorm
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, MoCoProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum
from lightly.utils.benchmarking.knn import knn_predict
from torchvision import transforms

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feral_faces import (  # noqa: E402
    CompactCnn, face, feral_schedule, in_chunks, read_split, scores, to_tensor, weak_ops)

OBJECTIVES = ("byol", "moco")
BN_SPLITS = 8  # MoCo's simulated shuffle-BN devices (lightly's CIFAR-10 benchmark)


def autocast():
    """Feral trains in bf16 autocast on the CPU."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


class TwoViews(torch.utils.data.Dataset):
    """Every training face, as two independent pretraining views."""

    def __init__(self, images):
        self.images = images
        _, h, w, c = images.shape
        bilinear = transforms.InterpolationMode.BILINEAR
        self.view = transforms.Compose([
            transforms.RandomResizedCrop((h, w), scale=(0.5, 1.0), interpolation=bilinear, antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(10, interpolation=bilinear),
            transforms.RandomApply([transforms.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
        ] + to_tensor(c))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = face(self.images, i)
        return self.view(img), self.view(img)


class Labelled(torch.utils.data.Dataset):
    """The labelled split, in Feral's weak view."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        _, h, w, c = images.shape
        self.weak = transforms.Compose(weak_ops((h, w)) + to_tensor(c))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.weak(face(self.images, i)), int(self.labels[i])


class Byol(nn.Module):
    """lightly's BYOL around the compact CNN's pooled features."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(backbone.num_features, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def trained(self):
        return [self.backbone.body, self.projection_head, self.prediction_head]

    def momentum_update(self, m):
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)

    def loss(self, x0, x1):
        with autocast():
            p0 = self.prediction_head(self.projection_head(self.backbone.features(x0)))
            p1 = self.prediction_head(self.projection_head(self.backbone.features(x1)))
            with torch.no_grad():
                z0 = self.projection_head_momentum(self.backbone_momentum.features(x0))
                z1 = self.projection_head_momentum(self.backbone_momentum.features(x1))
        p0, p1, z0, z1 = (t.float() for t in (p0, p1, z0, z1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


class MoCo(nn.Module):
    """lightly's MoCo v2 (queue of 4,096 keys, temperature 0.1) with simulated shuffle-BN."""

    def __init__(self, backbone):
        super().__init__()
        split_batchnorm(backbone.body, BN_SPLITS)
        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(backbone.num_features, 512, 128)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128))

    def trained(self):
        return [self.backbone.body, self.projection_head]

    def momentum_update(self, m):
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)

    def loss(self, x0, x1):
        def pair(query, key):
            with autocast():
                q = self.projection_head(self.backbone.features(query))
                with torch.no_grad():
                    shuffled, order = batch_shuffle(key)
                    k = batch_unshuffle(self.projection_head_momentum(self.backbone_momentum.features(shuffled)), order)
            return self.criterion(q.float(), k.float())

        return 0.5 * (pair(x0, x1) + pair(x1, x0))


def split_batchnorm(body, splits):
    """Replaces each BatchNorm2d of `body` by lightly's SplitBatchNorm, same affine weights."""
    for i, layer in enumerate(body):
        if type(layer) is nn.BatchNorm2d:
            split = SplitBatchNorm(layer.num_features, splits)
            split.weight.data.copy_(layer.weight.data)
            split.bias.data.copy_(layer.bias.data)
            body[i] = split


def plain_body_state(backbone):
    """The backbone's body weights as a plain CompactCnn holds them (BN statistics collated)."""
    backbone.eval()  # SplitBatchNorm averages its per-split statistics when it leaves training
    state = {k: v.clone() for k, v in backbone.body.state_dict().items()}
    for name, layer in backbone.body.named_modules():
        if isinstance(layer, nn.BatchNorm2d):
            for stat in ("running_mean", "running_var"):
                state[f"{name}.{stat}"] = getattr(layer, stat)[: layer.num_features].clone()
    return state


@torch.no_grad()
def knn_probe(backbone, bank, probe, classes):
    """lightly's weighted k-NN (k = 20, temperature 0.1) on the backbone's pooled features."""
    backbone.eval()
    features = [F.normalize(in_chunks(backbone.features, images), dim=1) for images, _ in (bank, probe)]
    predicted = knn_predict(features[1], features[0].T, bank[1], len(classes), knn_k=20, knn_t=0.1)[:, 0]
    backbone.train()
    metrics = scores(probe[1], predicted, classes)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}


def pretrain(args, images, channels, bank, probe, classes, settings, resume=None):
    """Pretrains a backbone; returns its plain body state and the pretraining record. With
    `resume` (a file), every epoch's state is saved there, and a state saved there by the
    same settings is continued from."""
    torch.manual_seed(args.seed)
    backbone = CompactCnn(channels, len(classes), args.width)
    model = (Byol if args.objective == "byol" else MoCo)(backbone)
    parameters = [p for module in model.trained() for p in module.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.06 * args.batch_size / 128, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        TwoViews(images), batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=1,
        persistent_workers=True, generator=generator)
    if len(loader) == 0:
        raise SystemExit(f"fewer training images ({len(images)}) than one batch ({args.batch_size})")

    first, seconds = 1, 0.0
    if resume and os.path.exists(resume):
        state = torch.load(resume, weights_only=False)
        if state["settings"] != settings:
            raise SystemExit(f"{resume} was saved by {state['settings']}, not {settings}: remove it or name another backbone")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch"])
        random.setstate(state["random"])
        np.random.set_state(state["numpy"])
        first, seconds, curve = state["epoch"] + 1, state["seconds"], state["curve"]
        print(f"resuming pretraining from {resume} after epoch {state['epoch']}", flush=True)
    else:
        curve = [{"epoch": 0, **knn_probe(backbone, bank, probe, classes)}]
        print(f"epoch 0 knn accuracy={curve[0]['accuracy']:.4f} macro_f1={curve[0]['macro_f1']:.4f}", flush=True)
    for epoch in range(first, args.epochs + 1):
        started, total, steps = time.time(), 0.0, 0
        for x0, x1 in loader:
            model.momentum_update(0.99)
            loss = model.loss(x0, x1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        scheduler.step()
        seconds += time.time() - started
        curve.append({"epoch": epoch, "loss": total / steps, **knn_probe(backbone, bank, probe, classes)})
        print(f"epoch {epoch}/{args.epochs} loss={total / steps:.4f} knn accuracy={curve[-1]['accuracy']:.4f} "
              f"macro_f1={curve[-1]['macro_f1']:.4f} ({time.time() - started:.0f} s)", flush=True)
        if resume:
            state = {"settings": settings, "epoch": epoch, "seconds": seconds, "curve": curve,
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                     "torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state()}
            torch.save(state, resume + ".partial")
            os.replace(resume + ".partial", resume)
    seen = args.epochs * len(loader) * args.batch_size
    record = {"knn": curve, "pretrain_seconds": round(seconds, 1), "images_per_second": round(seen / seconds, 1),
              "pretrain_images": len(images), "pretrain_threads": args.threads}
    return plain_body_state(backbone), record


def finetune(args, body, train, classes, evaluation):
    """Feral's supervised recipe on the labelled split, from `body` (None: random init)."""
    torch.manual_seed(args.seed)
    model = CompactCnn(train[0].shape[3], len(classes), args.width)
    if body is not None:
        model.body.load_state_dict(body)
    ema = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.002, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, feral_schedule(args.finetune_steps))
    generator = torch.Generator().manual_seed(args.seed)
    counts = torch.bincount(train[1], minlength=len(classes)).double()
    sampler = torch.utils.data.WeightedRandomSampler(
        (1.0 / counts)[train[1]], args.finetune_steps * 64, replacement=True, generator=generator)
    loader = torch.utils.data.DataLoader(Labelled(*train), batch_size=64, sampler=sampler, drop_last=True,
                                         num_workers=1, generator=generator)
    started = time.time()
    for k, (x, y) in enumerate(loader):
        with autocast():
            logits = model(x)["logits"]
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        decay = min(0.999, (1 + k) / (10 + k))
        with torch.no_grad():
            for average, current in zip(ema.state_dict().values(), model.state_dict().values()):
                if average.is_floating_point():
                    average.lerp_(current, 1 - decay)
                else:
                    average.copy_(current)
        if (k + 1) % args.log_every == 0 or k + 1 == args.finetune_steps:
            lr = scheduler.get_last_lr()[0]
            print(f"  step {k + 1}/{args.finetune_steps} lr={lr:.2e} loss={float(loss.detach()):.4f}", flush=True)
    seconds = time.time() - started
    ema.eval()
    result = {}
    with torch.no_grad():
        for split, (images, labels) in evaluation.items():
            result[split] = scores(labels, in_chunks(lambda x: ema(x)["logits"].argmax(dim=1), images), classes)
    result["seconds"] = round(seconds, 1)
    return result


def run(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)

    with open(os.path.join(args.data, "manifest.json"), "rb") as f:
        raw = f.read()
    manifest = json.loads(raw)
    classes = manifest["classes"]
    train_x, train_y, _ = read_split(args.data, manifest, "train")
    pool_x = read_split(args.data, manifest, "unlabeled")[0]
    if args.limit is not None:
        pool_x = pool_x[:args.limit]
    val = read_split(args.data, manifest, "val")[:2]
    test = read_split(args.data, manifest, "test")[:2]
    images = torch.cat([train_x, pool_x])
    channels = images.shape[3]

    settings = {"objective": args.objective, "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
                "width": args.width, "limit": args.limit, "images": len(images),
                "data": hashlib.sha256(raw).hexdigest()}  # the manifest lists every shard's sha256
    saved = torch.load(args.backbone, weights_only=True) if args.backbone and os.path.exists(args.backbone) else None
    if saved is not None:
        if saved["settings"] != settings:
            raise SystemExit(f"{args.backbone} was pretrained with {saved['settings']}, not {settings}: "
                             "remove it or name another file")
        print(f"pretraining skipped: reusing {args.backbone} ({args.objective}, {args.epochs} epochs)", flush=True)
        body, record = saved["body"], json.loads(saved["record"])
    else:
        print(f"pretraining {args.objective} on {len(images)} images, {args.epochs} epochs", flush=True)
        resume = args.backbone + ".resume" if args.backbone else None
        body, record = pretrain(args, images, channels, (train_x, train_y), val, classes, settings, resume)
        if args.backbone:
            torch.save({"settings": settings, "body": body, "record": json.dumps(record)}, args.backbone)
            os.remove(resume)

    result = {**settings, "threads": args.threads, "finetune_steps": args.finetune_steps,
              "backbone_reused": saved is not None, **record}
    for start in args.starts:
        print(f"fine-tuning from the {start} start, {args.finetune_steps} steps", flush=True)
        result[start] = finetune(args, body if start == "pretrained" else None, (train_x, train_y), classes,
                                 {"val": val, "test": test})
    result["torch"] = torch.__version__
    result["lightly"] = importlib.metadata.version("lightly")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a dataset directory written by `feral prepare`")
    parser.add_argument("--objective", required=True, choices=OBJECTIVES)
    parser.add_argument("--epochs", type=int, required=True, help="pretraining epochs over every training image")
    parser.add_argument("--batch-size", type=int, default=128, help="pretraining batch")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (Feral's [train] threads)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--finetune-steps", type=int, default=3240)
    parser.add_argument("--limit", type=int, help="only the first N pool images (smoke tests only)")
    parser.add_argument("--backbone", help="save the pretrained backbone here, or reuse it if it matches")
    parser.add_argument("--log-every", type=int, default=360, help="fine-tuning steps between log lines")
    parser.add_argument("--starts", nargs="+", choices=("pretrained", "random"), default=["pretrained", "random"],
                        help="which starts to fine-tune from (each once)")
    parser.add_argument("--out", required=True, help="where to write the result (JSON)")
    args = parser.parse_args()
    args.starts = list(dict.fromkeys(args.starts))
    for name in ("epochs", "batch_size", "threads", "width", "finetune_steps", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.objective == "moco" and args.batch_size % BN_SPLITS:
        parser.error(f"--batch-size must be a multiple of {BN_SPLITS} for moco's split BatchNorm")
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must not be negative")
    result = run(args)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("objective", "seed", "epochs")}
                     | {"knn": result["knn"][-1]["accuracy"]}
                     | {f"{s}_test_macro_f1": result[s]["test"]["macro_f1"] for s in args.starts}))


if __name__ == "__main__":
    main()
