"""An independent weighted k-NN (official eval_knn.knn_classifier, in numpy) on `dino embed`
features: the check of a shipped model that does not go through our Rust k-NN.

    dino embed --data_path BANK_DIR --pretrained_weights W --output bank.npy
    dino embed --data_path QUERY_DIR --pretrained_weights W --output query.npy
    python3 tools/knn_on_embeddings.py bank.npy bank-labels.txt query.npy query-labels.txt [--k 20]

LABELS files: lines "file-name label"; rows are matched to them through the .txt file names
that `dino embed` writes next to each .npy."""
import argparse
import os

import numpy as np


def load(npy, labels_file):
    feats = np.load(npy).astype(np.float64)
    names = [os.path.basename(l.strip()) for l in open(os.path.splitext(npy)[0] + ".txt") if l.strip()]
    labels = dict(l.split() for l in open(labels_file) if l.strip())
    y = np.array([int(labels[n]) for n in names])
    return feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12), y


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bank")
    p.add_argument("bank_labels")
    p.add_argument("query")
    p.add_argument("query_labels")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    a = p.parse_args()
    xb, yb = load(a.bank, a.bank_labels)
    xq, yq = load(a.query, a.query_labels)
    classes = int(max(yb.max(), yq.max())) + 1
    sim = xq @ xb.T
    idx = np.argsort(-sim, axis=1)[:, :a.k]
    w = np.exp(np.take_along_axis(sim, idx, axis=1) / a.temperature)
    votes = np.zeros((len(xq), classes))
    np.add.at(votes, (np.repeat(np.arange(len(xq)), a.k), yb[idx].ravel()), w.ravel())
    top1 = 100.0 * (votes.argmax(1) == yq).mean()
    print(f"{a.k}-NN top-1: {top1:.2f} ({len(xb)} bank / {len(xq)} queries)")


if __name__ == "__main__":
    main()
