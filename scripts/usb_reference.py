"""USB (microsoft/Semi-supervised-learning, `semilearn` 0.3.2) on a dataset `feral prepare` wrote.

USB's own algorithm classes train (FixMatch, FreeMatch, SoftMatch, or its supervised-only
baseline): their `train_step`, masking and pseudo-labelling hooks, USB's EMA and its
parameter-update hook. What this script supplies is what USB leaves to the user, set to
Feral's recipe so that the two train the same thing:

- the network: Feral's compact CNN (three stages of two 3x3 conv + BN + ReLU, then a 2x2
  max-pool; widths w, 2w, 4w; global average pool, dropout 0.3, a linear head), PyTorch's
  default initialisation, which is Feral's (U(+-1/sqrt(fan_in)), BN scale 1);
- the data: the labelled, pool, val and test splits read from the safetensors shards;
  labelled batches drawn class-uniformly with replacement (Feral's sampler), the pool
  uniformly with replacement, mu pool images per labelled one;
- the views, from torchvision (what USB's datasets use) and USB's own RandAugment: weak =
  horizontal flip, 4-pixel pad-crop with replicated edges, rotation up to 10 degrees,
  brightness and contrast up to 20%; strong = an independent weak view, then USB's
  RandAugment with Feral's number of ops (2; USB draws each op's strength over its whole
  range) and its cutout of up to half the side; input pixels / 127.5 - 1;
- the optimiser and schedule: USB's `get_optimizer` for AdamW (lr 0.002, weight decay
  5e-4; USB exempts BN and biases from decay, Feral does not), and Feral's schedule (linear
  warm-up over 5% of the steps, then a half cosine to zero) instead of USB's 7/16 cosine;
- the EMA: USB's EMA, its decay set before each update to Feral's min(0.999,
  (1+k)/(10+k)) (USB averages the parameters only; Feral averages BN statistics too);
- precision: bf16 autocast on the CPU around USB's forward and losses (USB's own `amp` is
  CUDA fp16); no loss scaling.

It evaluates the EMA model (USB evaluates with `ema.apply_shadow`) at the end on the val
and test halves, with Feral's macro-F1 (the mean of the per-class F1, 0 for a class never
predicted), and writes one JSON document: test and val metrics, per-class F1, the mask
rate (USB's `util_ratio`, the mean mask weight) and, from the pool's hidden labels, the
share of pool images that passed the mask in full and the precision of their labels.

    target/usb-venv/bin/python scripts/usb_reference.py --data target/bench-usb/data \
        --algorithm fixmatch --steps 3240 --seed 7 --threads 1 --out fixmatch-s7.json
"""

import argparse
import importlib.metadata
import inspect
import json
import os
import random
import sys
import time
import types

import numpy as np
import torch

# USB's package imports its optional experiment trackers at import time; they are never
# enabled here (use_wandb and use_aim are false), so empty modules stand in for them.
for _tracker in ("wandb", "aim"):
    sys.modules.setdefault(_tracker, types.ModuleType(_tracker))

from semilearn.algorithms.fixmatch import FixMatch  # noqa: E402
from semilearn.algorithms.freematch import FreeMatch  # noqa: E402
from semilearn.algorithms.fullysupervised import FullySupervised  # noqa: E402
from semilearn.algorithms.softmatch import SoftMatch  # noqa: E402
from semilearn.core.hooks import Hook  # noqa: E402
from semilearn.core.utils import get_optimizer  # noqa: E402
from semilearn.datasets.augmentation import RandAugment  # noqa: E402
from torchvision import transforms  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from feral_faces import (  # noqa: E402
    CompactCnn, face, feral_schedule, in_chunks, read_split, scores, to_tensor, weak_ops)

ALGORITHMS = {"fixmatch": FixMatch, "freematch": FreeMatch, "softmatch": SoftMatch, "supervised": FullySupervised}


class Faces(torch.utils.data.Dataset):
    """A split as USB's datasets give it: dicts keyed as the algorithms' train_step wants."""

    def __init__(self, images, labels, role, strong_ops=2):
        self.images, self.labels, self.role = images, labels, role
        n, h, w, c = images.shape
        self.mode = "L" if c == 1 else "RGB"
        self.weak = transforms.Compose(weak_ops((h, w)) + to_tensor(c))
        # USB's RandAugment draws from colour ops too and fills its cutout with an RGB colour:
        # it runs on an RGB copy of a grey face, which goes back to grey afterwards.
        self.strong = transforms.Compose(
            weak_ops((h, w))
            + [transforms.Lambda(lambda im: im.convert("RGB")), RandAugment(strong_ops, 5),
               transforms.Lambda(lambda im: im.convert(self.mode))]
            + to_tensor(c)
        )
        self.plain = transforms.Compose(to_tensor(c))

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = face(self.images, i)
        if self.role == "labelled":
            return {"idx_lb": i, "x_lb": self.weak(img), "y_lb": int(self.labels[i])}
        if self.role == "pool":
            return {"idx_ulb": i, "x_ulb_w": self.weak(img), "x_ulb_s": self.strong(img)}
        return {"x_lb": self.plain(img), "y_lb": int(self.labels[i])}


class FeralEmaDecay(Hook):
    """Sets USB's EMA decay to Feral's warm-up rule before USB's EMAHook updates it."""

    def after_train_step(self, algorithm):
        if algorithm.ema is not None:
            algorithm.ema.decay = min(algorithm.ema_m, (1 + algorithm.it) / (10 + algorithm.it))


class MaskAudit:
    """Counts what USB's mask let through, against the pool's hidden labels."""

    def __init__(self, hidden):
        self.hidden = hidden
        self.seen = self.passed = self.right = 0
        self.weight = 0.0

    def record(self, algorithm, mask, labels):
        idx = algorithm.current_ulb_idx
        full = mask >= 1.0 - 1e-6
        self.seen += len(idx)
        self.weight += float(mask.float().sum())
        self.passed += int(full.sum())
        self.right += int((full & (labels == self.hidden[idx])).sum())


def run(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)

    manifest = json.load(open(os.path.join(args.data, "manifest.json")))
    classes = manifest["classes"]
    train_x, train_y, _ = read_split(args.data, manifest, "train")
    pool_x, _, pool_hidden = read_split(args.data, manifest, "unlabeled")
    channels = train_x.shape[3]
    semi = args.algorithm != "supervised"

    generator = torch.Generator().manual_seed(args.seed)
    counts = torch.bincount(train_y, minlength=len(classes)).double()
    lb_sampler = torch.utils.data.WeightedRandomSampler(
        (1.0 / counts)[train_y], args.steps * args.batch_size, replacement=True, generator=generator)
    ulb_batch = round(args.mu * args.batch_size)
    ulb_sampler = torch.utils.data.RandomSampler(
        range(len(pool_x)), replacement=True, num_samples=args.steps * ulb_batch, generator=generator)

    def loader(dataset, batch, sampler, workers):
        return torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                           drop_last=True, persistent_workers=workers > 0)

    audit = MaskAudit(pool_hidden)

    class Run(ALGORITHMS[args.algorithm]):
        """The USB algorithm, with this script's data, schedule and CPU placement."""

        def set_dataset(self):
            return {"train_lb": Faces(train_x, train_y, "labelled"),
                    "train_ulb": Faces(pool_x, pool_hidden, "pool", args.strong_ops) if semi else None}

        def set_data_loader(self):
            d = self.dataset_dict
            # Feral prepares batches on one loader thread: here one worker process draws the
            # pool's two views (the heavy part), the labelled batch is drawn in-line.
            lb = loader(d["train_lb"], args.batch_size, lb_sampler, 0 if semi else 1)
            return {"train_lb": lb, "train_ulb": loader(d["train_ulb"], ulb_batch, ulb_sampler, 1) if semi else None}

        def set_optimizer(self):
            optimizer = get_optimizer(self.model, "AdamW", args.lr, 0.9, args.weight_decay, 1.0)
            return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, feral_schedule(args.steps))

        def set_hooks(self):
            super().set_hooks()
            # USB's evaluation, checkpoint, timer and logging hooks assume CUDA and a save
            # directory; this script evaluates once at the end instead.
            keep = {"ParamUpdateHook", "EMAHook", "PseudoLabelingHook", "MaskingHook", "DistAlignHook"}
            hooks = [h for h in self._hooks if h.name in keep]
            self._hooks = []
            self.register_hook(FeralEmaDecay(), "FeralEmaDecay", "HIGH")
            for h in hooks:
                del h.priority
                self.register_hook(h, h.name, {"ParamUpdateHook": "HIGHEST", "EMAHook": "HIGH"}.get(h.name, "NORMAL"))
            self.register_hook(Progress(), "Progress", "LOWEST")

        def process_batch(self, input_args=None, **kwargs):
            self.current_ulb_idx = kwargs.get("idx_ulb")
            names = list(inspect.signature(self.train_step).parameters)
            return {k: v for k, v in kwargs.items() if k in names and v is not None}

    class Progress(Hook):
        def after_train_step(self, algorithm):
            it = algorithm.it + 1
            if semi:
                # The mask USB computed this step, and the hard labels it trained on.
                mask = algorithm.hooks_dict["MaskingHook"].last_mask
                labels = algorithm.hooks_dict["PseudoLabelingHook"].last_labels
                audit.record(algorithm, mask, labels)
            if it % args.log_every == 0 or it == args.steps:
                log = " ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in algorithm.log_dict.items())
                print(f"step {it}/{args.steps} lr={algorithm.scheduler.get_last_lr()[0]:.2e} {log}", flush=True)

    net_builder = lambda num_classes, pretrained=False, pretrained_path=None: CompactCnn(  # noqa: E731
        channels, num_classes, args.width)
    usb_args = argparse.Namespace(
        num_classes=len(classes), ema_m=0.999, epoch=1, num_train_iter=args.steps, num_eval_iter=args.steps,
        num_log_iter=args.log_every, ulb_loss_ratio=args.lambda_u, use_cat=True, amp=False, clip_grad=0,
        save_name=args.algorithm, save_dir=os.path.dirname(os.path.abspath(args.out)), resume=False,
        algorithm=args.algorithm, gpu=None, rank=0, distributed=False, world_size=1, optim="AdamW", lr=args.lr,
        momentum=0.9, weight_decay=args.weight_decay, layer_decay=1.0, num_warmup_iter=0, use_pretrain=False,
        pretrain_path="", use_wandb=False, use_aim=False, uratio=args.mu, batch_size=args.batch_size,
        # Each algorithm's own defaults (their get_argument), as USB's config files leave them.
        **{a.name.lstrip("-"): a.default for a in ALGORITHMS[args.algorithm].get_argument()},
    )
    algorithm = Run(usb_args, net_builder)
    # Feral trains in bf16 autocast on the CPU; USB's amp switch means CUDA fp16.
    algorithm.amp_cm = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    if semi:
        keep_last(algorithm.hooks_dict["MaskingHook"], "masking", "last_mask")
        keep_last(algorithm.hooks_dict["PseudoLabelingHook"], "gen_ulb_targets", "last_labels", hard=True)

    started = time.time()
    algorithm.train()
    seconds = time.time() - started

    result = {
        "algorithm": args.algorithm, "seed": args.seed, "steps": args.steps, "threads": args.threads,
        "mu": args.mu if semi else 0, "batch_size": args.batch_size, "seconds": round(seconds, 1),
        "images_per_second": round(args.steps * (args.batch_size + (ulb_batch if semi else 0)) / seconds, 1),
        "semilearn": importlib.metadata.version("semilearn"),
        "torch": torch.__version__,
    }
    for split in ("val", "test"):
        result[split] = evaluate(algorithm, *read_split(args.data, manifest, split)[:2], classes)
    if semi:
        result["mask"] = {"mean_weight": audit.weight / max(audit.seen, 1), "rate": audit.passed / max(audit.seen, 1),
                          "precision": audit.right / audit.passed if audit.passed else None}
    return result


def keep_last(hook, method, attribute, hard=False):
    """Wraps a USB hook's method to remember what it returned (for the mask audit)."""
    inner = getattr(hook, method)

    def wrapped(*a, **kw):
        out = inner(*a, **kw)
        value = out.detach()
        if hard and value.dim() > 1:
            value = value.argmax(dim=-1)
        setattr(hook, attribute, value)
        return out

    setattr(hook, method, wrapped)


@torch.no_grad()
def evaluate(algorithm, images, labels, classes):
    """The EMA model in eval mode, fp32, no augmentation: Feral's metrics (common/src/metrics.rs)."""
    model = algorithm.model
    model.eval()
    algorithm.ema.apply_shadow()
    predicted = in_chunks(lambda x: model(x)["logits"].argmax(dim=1), images)
    algorithm.ema.restore()
    model.train()
    return scores(labels, predicted, classes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a dataset directory written by `feral prepare`")
    parser.add_argument("--algorithm", required=True, choices=sorted(ALGORITHMS))
    parser.add_argument("--steps", type=int, default=3240)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (Feral's [train] threads)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mu", type=float, default=2.0, help="pool images per labelled image (Feral's default)")
    parser.add_argument("--lambda-u", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--strong-ops", type=int, default=2, help="RandAugment ops per strong view")
    parser.add_argument("--log-every", type=int, default=45)
    parser.add_argument("--out", required=True, help="where to write the result (JSON)")
    args = parser.parse_args()
    for name in ("steps", "threads", "batch_size", "width", "strong_ops", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.mu <= 16:
        parser.error("--mu must be in (0, 16]")
    result = run(args)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("algorithm", "seed", "seconds")} | {"test_macro_f1": result["test"]["macro_f1"]}))


if __name__ == "__main__":
    main()
