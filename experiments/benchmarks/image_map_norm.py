r"""Probe (session 21, pre-registered): per-pixel standardised anomaly maps on Magnetic tile.

The maps of every scorer on Magnetic tile light up at the image borders and corners, on normal
(MT_Free) images as much as on defective ones (docs/results/image/magnetic_tile_seed0.png).
Here each pixel of a map is standardised by the normal images' map statistics at that pixel (a
per-location z-score, as PaDiM does with per-location feature Gaussians):

    z = (m - mu_p) / max(sd_p, 0.01 * median_p(sd_p)),

mu / sd over the maps of a random 256 of the training images (same scorer and network; in-sample
for the network, as the PCA baseline's reference residuals are for PCA). Pixel score = z, image
score = mean of the top 1% of z.

Rule, written before any run (session notes prereg_mt_mapnorm.md): elbo-z becomes an
ImageDetector option and the configured Magnetic-tile head iff, on the 3-seed means, it beats
the configured elbo row on image AUROC, pixel AUROC and AUPRO, and beats both PCA and PCA-z on
image AUROC and pixel AUROC. Rows reported either way.

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.image_map_norm --seeds=0,1,2 \
      --out=docs/results/image/mt_map_norm.json
"""
from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from absl import app, flags

from adiff.detectors.image import ImageDetector
from experiments.benchmarks import image as bench
from experiments.configs import image_magnetic_tile

REPO = pathlib.Path(__file__).resolve().parents[2]
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Split / training seeds.")
_NREF = flags.DEFINE_integer("n_ref", 256, "Training images whose maps give the per-pixel stats.")
_STEPS = flags.DEFINE_integer("train_steps", 1500, "UNet training steps (the benchmark's).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny settings (smoke test of the script).")
_OUT = flags.DEFINE_string("out", "", "JSON file for the results (merged by seed).")


def standardise(ref: np.ndarray, maps: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Per-pixel z-score of `maps` [N, H, W] against reference maps [M, H, W] of normal images."""
    mu = ref.mean(0)
    sd = ref.std(0)
    sd = np.maximum(sd, floor * np.median(sd))
    return (maps - mu) / sd


def topk_mean(maps: np.ndarray) -> np.ndarray:
    """Image score of a z-map: the benchmark's head (top 1% mean) without a second blur."""
    return bench.map_head(maps, sigma=0.0, topk=0.01)[0]


def score_seed(seed: int, cfg, steps: int, n_ref: int, quick: bool):
    """Scores and maps of the test split and of `n_ref` training images, per scorer, for one seed.

    Returns (split, ref, rows, secs): rows maps a scorer name ("PCA", "elbo",
    "denoise low band") to (test scores, test maps, reference scores, reference maps). Shared by
    the session-21 and session-22 map probes.
    """
    split = bench.load_split(cfg, seed=seed)
    train, test = split.train, split.test
    rng = np.random.default_rng(seed)
    ref_idx = np.sort(rng.choice(len(train), size=min(n_ref, len(train)), replace=False))
    ref = train[ref_idx]
    bench.log(f"seed {seed}: train {train.shape}, test {test.images.shape}, ref {ref.shape}")
    rows, secs = {}, {}
    # PCA baseline: the benchmark's map head (blur 1 px, top 1%) on its own training residuals.
    s, m = bench.map_head(bench.pca_baseline(train, test.images), sigma=1.0, topk=0.01)
    s_ref, m_ref = bench.map_head(bench.pca_baseline(train, ref), sigma=1.0, topk=0.01)
    rows["PCA"] = (s, m, s_ref, m_ref)

    base = dict(cfg.detector)
    base.update(seed=seed, train_steps=steps)
    t = time.perf_counter()
    det = ImageDetector(**base).fit(train)
    secs["fit"] = time.perf_counter() - t
    bench.log(f"fit {secs['fit']:.0f}s")
    blocks = [("elbo", dict(cfg.elbo)),
              ("denoise low band", {**dict(cfg.denoise), "t0": (0.05, 0.1, 0.2)})]
    for name, kw in blocks:
        if quick:
            kw = {**kw, "elbo_samples": 16} if name == "elbo" else kw
        det.set_params(**kw)
        t = time.perf_counter()
        res = det.analyze(test.images)
        res_ref = det.analyze(ref)
        secs[name] = time.perf_counter() - t
        rows[name] = (res.scores, res.maps, res_ref.scores, res_ref.maps)
    return split, ref, rows, secs


def run_seed(seed: int, cfg, steps: int, n_ref: int, quick: bool) -> dict:
    split, ref, raw, secs = score_seed(seed, cfg, steps, n_ref, quick)
    test = split.test
    rows = {}

    def add(name, scores, maps):
        rows[name] = bench.evaluate(test, scores, maps)
        bench.log(name, {k: round(v, 4) for k, v in rows[name].items()})

    for name, (s, m, _, m_ref) in raw.items():
        add(name, s, m)
        z = standardise(m_ref, m)
        add(f"{name}-z", topk_mean(z), z)
    return {"rows": rows, "seconds": secs, "n_train": int(len(split.train)),
            "n_test": int(len(test.images)), "n_ref": int(len(ref))}


def print_table(held: dict) -> None:
    """Markdown table of the seed-mean rows of a probe's JSON ({seed: {"rows": {name: metrics}}})."""
    names = list(next(iter(held.values()))["rows"])
    print("| row | image AUROC | pixel AUROC | AUPRO | seeds |")
    print("|---|---:|---:|---:|---:|")
    for n in names:
        vals = [held[s]["rows"][n] for s in sorted(held)]
        cells = [f"{np.mean([v[k] for v in vals]):.3f}" for k in ("image_auroc", "pixel_auroc", "aupro")]
        print(f"| {n} | " + " | ".join(cells) + f" | {len(vals)} |")


def main(argv):
    del argv
    cfg = image_magnetic_tile.get_config()
    steps = 20 if _QUICK.value else _STEPS.value
    out = pathlib.Path(_OUT.value) if _OUT.value else None
    held = json.loads(out.read_text()) if out and out.exists() else {}
    for seed in [int(s) for s in _SEEDS.value]:
        held[str(seed)] = run_seed(seed, cfg, steps, _NREF.value, _QUICK.value)
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(held, indent=1))
    print_table(held)


if __name__ == "__main__":
    app.run(main)
