"""Per-class quality of a round's labels on the unlabelled pool, from a job's artifacts.

Each round r >= 1 keeps the previous round's EMA model's predictions on the pool
(`r<r>/pred-unlabeled-*.safetensors`: logits and the hidden labels of a benchmark
dataset). This prints, per class, how many pool images hold it, how many the model labels
with it after debiasing as the online labeller starts the round (z - tau*log q, q the
pool's mean softmax), their precision and recall, and the same for the labels whose
debiased confidence reaches `--confidence` (the online thresholds' floor):

    .venv/bin/python scripts/pool_labels.py target/bench-method/artifacts/job-*/ --round 1
"""

import argparse
import glob
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="a job's artifacts directory (holding r1/, r2/, ...)")
    parser.add_argument("--round", type=int, default=1, help="the round whose teacher's labels to read")
    parser.add_argument("--tau", type=float, default=0.4, help="debiasing strength (0: raw labels)")
    parser.add_argument("--confidence", type=float, default=0.8, help="the confidence a counted label reaches")
    args = parser.parse_args()

    files = sorted(glob.glob(os.path.join(args.job, f"r{args.round}", "pred-unlabeled-*.safetensors")))
    if not files:
        sys.exit(f"no pool predictions under {args.job}/r{args.round} (rounds start at 1)")
    shards = [load_file(f) for f in files]
    logits = np.concatenate([s["logits"] for s in shards]).astype(np.float64)
    truth = np.concatenate([s["hidden_labels"] for s in shards])
    if (truth < 0).any():
        sys.exit("the pool has no hidden labels to measure against")
    prior = softmax(logits).mean(axis=0)
    probabilities = softmax(logits - args.tau * np.log(prior))
    labels, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    confident = confidence >= args.confidence
    names = [str(c) for c in range(logits.shape[1])]
    # The round's model card, in the directory of the attempt that trained it.
    for model in sorted(glob.glob(os.path.join(args.job, f"r{args.round}", "a*", "model.json"))):
        names = json.load(open(model)).get("classes", names)

    print(f"round {args.round}: {len(truth)} pool images, accuracy {np.mean(labels == truth):.3f}; "
          f"{confident.mean():.1%} reach {args.confidence}, precision {np.mean(labels[confident] == truth[confident]):.3f}")
    print(f"{'class':>8} {'pool':>6} {'labelled':>8} {'precision':>9} {'recall':>6} | {'confident':>9} {'precision':>9} {'recall':>6}")
    for c in range(logits.shape[1]):
        holds, named = truth == c, labels == c
        right = holds & named
        sure = named & confident
        sure_right = sure & holds
        print(f"{names[c]:>8} {holds.sum():>6} {named.sum():>8} {right.sum() / max(named.sum(), 1):>9.2f} {right.sum() / max(holds.sum(), 1):>6.2f} | "
              f"{sure.sum():>9} {sure_right.sum() / max(sure.sum(), 1):>9.2f} {sure_right.sum() / max(holds.sum(), 1):>6.2f}")


if __name__ == "__main__":
    main()
