r"""Probe (session 19, pre-registered): the network-free density paradigm on MNIST pixels.

`adiff.scoring.diffused_density` on flattened images in [0, 1]: -log p_v(x) of the training images'
empirical distribution diffused to the noise variance v that maximises the training images'
leave-one-out likelihood (`diffusion_variance`; k = 50 nearest images). The same splits as
experiments/benchmarks/image.py's MNIST part (seed 0, 80% of the normal digit trains, at most 200
test images per anomalous digit), side by side with its KNN (k = 5, mean distance) and PCA (95%
variance) baselines and DTE-NP (posterior-mean time, k = 5) on the same pixels.

Rule, written before the run: build it into ImageDetector as an option iff the 10-digit mean
AUROC is >= 0.96 and above KNN and PCA in this run; otherwise it is reported as a failed probe.
Result: 0.9561 (KNN 0.9539, PCA 0.9405, DTE-NP 0.9536): above both baselines, below 0.96: fails.

Second probe (`--shifts=1`), rule written after the first result and before this run: the same
estimator with the training images augmented by their eight 1-pixel translations (zero fill; 9x
the memory), a standard prior for digits that the network detectors get from convolutions. Build
it in iff the 10-digit mean is >= 0.96 and above KNN and PCA and above KNN on the same augmented
memory (reported beside it, so the gain cannot come from the augmentation alone).

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.image_density_np \
      --out=docs/results/image_density_np.json
"""
from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from absl import app, flags

from adiff import metrics, scoring
from adiff.data import image as image_data
from experiments.benchmarks import image as bench
from experiments.configs import image_mnist

REPO = pathlib.Path(__file__).resolve().parents[2]
_DIGITS = flags.DEFINE_list("digits", [str(d) for d in range(10)], "Normal digits.")
_PER_CLASS = flags.DEFINE_integer("per_class", 200, "Cap on test images per anomalous digit.")
_SEED = flags.DEFINE_integer("seed", 0, "Split seed.")
_SHIFTS = flags.DEFINE_integer("shifts", 0, "Augment the training images by translations of up to "
                               "this many pixels (0: none; 1: the eight 1-pixel shifts).")
_OUT = flags.DEFINE_string("out", str(REPO / "docs" / "results" / "image_density_np.json"), "JSON output.")


def shifted(images: np.ndarray, r: int) -> np.ndarray:
    """images [N, H, W, ...] and their translations by (dy, dx) in [-r, r]^2, zero fill."""
    if r == 0:
        return images
    out = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            z = np.zeros_like(images)
            h, w = images.shape[1:3]
            z[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                images[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            out.append(z)
    return np.concatenate(out)


def main(argv):
    del argv
    cfg = image_mnist.get_config()
    mnist = image_data.load_mnist(bench._resolve(cfg.images), bench._resolve(cfg.labels))
    rows = {}
    for d in map(int, _DIGITS.value):
        split = bench.load_split(cfg, seed=_SEED.value, normal_class=d, mnist=mnist)
        test = bench.cap_mnist_test(split.test, d, _SEED.value, _PER_CLASS.value)
        memory = shifted(split.train, _SHIFTS.value)
        a = memory.reshape(len(memory), -1).astype(np.float32) / 255.0
        b = test.images.reshape(len(test.images), -1).astype(np.float32) / 255.0
        r = {"n_train": len(a), "n_test": len(b)}
        t = time.perf_counter()
        v = scoring.diffusion_variance(a, k=50)
        s = np.asarray(scoring.diffused_density(a, b, variance=v, k=50).scores)
        r["density_np"], r["density_np_seconds"], r["variance"] = metrics.auroc(test.labels, s), time.perf_counter() - t, v
        t = time.perf_counter()
        r["dte_np"] = metrics.auroc(test.labels, np.asarray(scoring.dte_nonparametric(a, b, k=5).scores))
        r["dte_np_seconds"] = time.perf_counter() - t
        r["knn"] = metrics.auroc(test.labels, bench.knn_baseline(split.train, test.images))
        if _SHIFTS.value:
            r["knn_aug"] = metrics.auroc(test.labels, bench.knn_baseline(memory, test.images))
        r["pca"] = metrics.auroc(test.labels, bench.pca_baseline(split.train, test.images).reshape(len(b), -1).mean(1))
        rows[str(d)] = r
        cols = ("density_np", "dte_np", "knn", "pca") + (("knn_aug",) if _SHIFTS.value else ())
        print(f"digit {d}: " + "  ".join(f"{k} {r[k]:.4f}" for k in cols)
              + f"  v={v:.4g}  ({r['density_np_seconds']:.1f} s)", flush=True)
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in cols}
    print("mean: " + "  ".join(f"{k} {v:.4f}" for k, v in mean.items()))
    pathlib.Path(_OUT.value).write_text(json.dumps({"digits": rows, "mean": mean, "seed": _SEED.value,
                                                    "per_class": _PER_CLASS.value, "shifts": _SHIFTS.value}, indent=1))


if __name__ == "__main__":
    app.run(main)
