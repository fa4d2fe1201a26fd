"""Reference FER2013 importer, as a PyTorch user would write it, for scripts/bench-import.sh:
the twin of `feral prepare fer2013`. Streams the CSV (plain or gzipped) with the csv module,
hashing the decompressed text as Feral does (the manifest's source_sha256); decodes each
row's pixels with np.fromstring (the fastest idiomatic numpy decode measured: about 4x
`np.array(p.split(), dtype=np.uint8)`) and checks the row as Feral does (2,304 values in
0..=255, emotion 0..6, known Usage); keeps the decoded images in memory (no staging file);
splits as Feral does (PublicTest rows validate; of the Training rows, round(fraction * n_c)
of each class keep their label, chosen by the same seeded splitmix64 shuffle, the rest go
to the unlabelled pool with hidden labels; PrivateTest rows are the test split); writes
safetensors shards of --shard-size samples per split with `safetensors.numpy.save_file`
(`images` u8 N x 48 x 48 x 1, `labels`, `sample_ids`, and `hidden_labels` for the pool),
the sha256 of each shard, and a manifest.json in Feral's layout. With the same seed the
splits, and so the shards, should match Feral's; bench-import.sh compares the manifests.

    .venv/bin/python scripts/bench_import_ref.py --csv FILE.csv.gz --out DIR [--labeled-fraction 0.1 --seed 7]
"""

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
import os
import sys
import time

import numpy as np
from safetensors.numpy import save_file

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
SIDE, PIXELS = 48, 48 * 48
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
LABELED_SALT = 0x6C61_6265_6C6C_6564


def mix(a: int, b: int) -> int:
    """splitmix64's finaliser of a ^ b * golden (Feral's `split::mix`)."""
    x = a ^ ((b * GOLDEN) & M64)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def shuffle(items: list, seed: int) -> None:
    """Fisher-Yates on a splitmix64 stream (Feral's `split::shuffle`)."""
    state = seed
    for i in range(len(items) - 1, 0, -1):
        state = (state + GOLDEN) & M64
        j = (mix(state, 0) * (i + 1)) >> 64
        items[i], items[j] = items[j], items[i]


def stratified_pick(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Per class, exactly round(fraction * n_c) members (round half away from zero)."""
    picked = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cls).tolist()
        take = min(int(math.floor(fraction * len(members) + 0.5)), len(members))
        shuffle(members, mix(seed, int(cls)))
        picked[members[:take]] = True
    return picked


class HashingReader(io.RawIOBase):
    """Hashes the decompressed bytes as they are read."""

    def __init__(self, inner):
        self.inner, self.sha = inner, hashlib.sha256()

    def readable(self):
        return True

    def close(self):
        self.inner.close()
        super().close()

    def readinto(self, buffer):
        data = self.inner.read(len(buffer))
        self.sha.update(data)
        buffer[: len(data)] = data
        return len(data)


def open_csv(path: str):
    with open(path, "rb") as probe:
        gzipped = path.endswith(".gz") or probe.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gzipped else open(path, "rb")
    hashing = HashingReader(raw)
    text = io.TextIOWrapper(io.BufferedReader(hashing, 1 << 20), encoding="utf-8", newline="")
    return text, hashing


def read_rows(path: str):
    """Decoded images (N x 2304 u8), labels, sample ids, PublicTest and PrivateTest flags,
    source sha256."""
    text, hashing = open_csv(path)
    images, labels, ids, given_val, given_test = [], [], [], [], []
    with text:
        reader = csv.reader(text)
        header = [h.strip().lstrip("\ufeff").lower() for h in next(reader)]
        c_emotion, c_pixels = header.index("emotion"), header.index("pixels")
        c_usage = header.index("usage") if "usage" in header else None
        sample_id = -1  # rows read so far (Feral's sample ids)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            sample_id += 1
            emotion = int(row[c_emotion])
            if not 0 <= emotion < len(CLASSES):
                sys.exit(f"{path}: line {line}: emotion {emotion} is outside 0..{len(CLASSES)}")
            usage = row[c_usage].strip() if c_usage is not None else "Training"
            if usage not in ("Training", "PublicTest", "PrivateTest"):
                sys.exit(f"{path}: line {line}: unknown Usage {usage!r}")
            pixels = np.fromstring(row[c_pixels], dtype=np.int16, sep=" ")
            if pixels.size != PIXELS or pixels.min() < 0 or pixels.max() > 255:
                sys.exit(f"{path}: line {line}: pixels must be {PIXELS} values in 0..=255")
            images.append(pixels.astype(np.uint8))
            labels.append(emotion)
            ids.append(sample_id)
            given_val.append(usage == "PublicTest")
            given_test.append(usage == "PrivateTest")
        text.read()  # hash to the end, as Feral does
    return (np.stack(images), np.array(labels, dtype=np.int64), np.array(ids, dtype=np.int64),
            np.array(given_val, dtype=bool), np.array(given_test, dtype=bool), hashing.sha.hexdigest())


def write_split(out: str, name: str, images, labels, ids, hidden, shard_size: int) -> dict:
    shards, counts = [], np.bincount(hidden if hidden is not None else labels, minlength=len(CLASSES))
    for k, start in enumerate(range(0, len(labels), shard_size)):
        end = min(start + shard_size, len(labels))
        tensors = {
            "images": images[start:end].reshape(end - start, SIDE, SIDE, 1),
            "labels": labels[start:end],
            "sample_ids": ids[start:end],
        }
        if hidden is not None:
            tensors["hidden_labels"] = hidden[start:end]
        file = f"{name}-{k:05d}.safetensors"
        save_file(tensors, os.path.join(out, file))
        with open(os.path.join(out, file), "rb") as handle:
            sha = hashlib.sha256(handle.read()).hexdigest()
        shards.append({"file": file, "samples": end - start, "sha256": sha})
    return {"samples": int(len(labels)), "class_counts": [int(c) for c in counts], "shards": shards}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--labeled-fraction", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shard-size", type=int, default=4096)
    args = parser.parse_args()

    started = time.perf_counter()
    images, labels, ids, given_val, given_test, source_sha = read_rows(args.csv)
    if not given_val.any():
        sys.exit("no PublicTest rows: this reference only does FER2013's own validation split")
    rest = np.where(given_val | given_test, -1, labels)
    keep = stratified_pick(rest, args.labeled_fraction, mix(args.seed, LABELED_SALT))
    os.makedirs(args.out, exist_ok=True)
    splits = {}
    pool = ~given_val & ~given_test & ~keep
    for name, mask in (("train", keep), ("val", given_val), ("test", given_test), ("unlabeled", pool)):
        if mask.any():
            visible = labels[mask] if name != "unlabeled" else np.full(int(mask.sum()), -1, dtype=np.int64)
            hidden = labels[mask] if name == "unlabeled" else None
            splits[name] = write_split(args.out, name, images[mask], visible, ids[mask], hidden, args.shard_size)
    manifest = {
        "format_version": 1,
        "name": "fer2013",
        "classes": CLASSES,
        "image": {"height": SIDE, "width": SIDE, "channels": 1},
        "splits": splits,
        "source": "fer2013",
        "source_sha256": source_sha,
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as handle:
        json.dump(manifest, handle, indent=2)
    print(f"read {len(labels)} rows in {time.perf_counter() - started:.1f}s; "
          + ", ".join(f"{name} {info['samples']}" for name, info in splits.items()))


if __name__ == "__main__":
    main()
