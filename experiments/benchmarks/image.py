r"""Image anomaly detection benchmark: Magnetic tile (image/pixel AUROC, AUPRO) and MNIST one-vs-rest.

  flock /tmp/adiff_heavy.lock python -m experiments.benchmarks.image [--quick]

Data (read-only, ../shared/data): Magnetic-tile defects (MT_*/Imgs) and the MNIST test split.
Protocols (docs DESIGN.md): Magnetic tile grayscale resized to --size px, train on a random 70%
of MT_Free (seed), test on the rest of MT_Free plus all defect images; MNIST one-vs-rest, 80% of
the normal digit trains, the rest of it plus the other digits test.

In one script, side by side: baselines (a convolutional autoencoder with the same training
budget, PCA reconstruction, KNN on pixels), the adiff remedy ablation (plain reconstruction vs
partial diffusion, structured noise, masked reconstruction, conditioned denoising, map head, and
a combination fixed in advance), and the steps/throughput comparison (1000-step reverse SDE vs
10-step DDIM / DPM-Solver++ vs latent diffusion) on a fixed subset of the test images.
Writes docs/results/image.md (tables, command) and docs/results/image/*.png (maps), and the raw
numbers to docs/results/image/results.json. MNIST rows also go, one per digit, to
docs/results/image_mnist.json (beside the report); --merge_mnist keeps the digits held there and adds
the ones run now, so the digits can come from separate runs (e.g. one digit per run, with --reuse_mt):

  flock /tmp/adiff_heavy.lock timeout 840 python -m experiments.benchmarks.image --reuse_mt --digits=4 \
      --mnist_train_steps=1000 --mnist_test_per_class=200 --merge_mnist \
      --prefix="flock /tmp/adiff_heavy.lock timeout 840"
"""
from __future__ import annotations

import json
import pathlib
import platform
import sys
import time

from absl import app, flags

import jax
import jax.numpy as jnp
import numpy as np

from adiff import metrics
from adiff.data import image as image_data
from adiff.detectors.image import ImageDetector, _gaussian_blur
from adiff.nets.autoencoder import ConvAutoencoder
from adiff.training import trainer
from experiments.configs import image_magnetic_tile, image_mnist

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "image"

_QUICK = None
_SIZE = None
_SEEDS = None
_STEPS = None
_DIGITS = None
_MNIST_STEPS = None
_MNIST_PER_CLASS = None
_SUBSET = None
_SDE_STEPS = None
_OUT = None
_SKIP_MNIST = None
_REUSE_MT = None
_MERGE_MNIST = None
_MERGE_MT = None
_MNIST_JSON = None
_PREFIX = None


def define_flags() -> None:
    """Defines the script's command-line flags (only when run as a script, so that the launcher
    can import this module's functions next to the other benchmark modules)."""
    # pylint: disable-next=global-statement
    global _QUICK, _SIZE, _SEEDS, _STEPS, _DIGITS, _MNIST_STEPS, _MNIST_PER_CLASS, _SUBSET, \
        _SDE_STEPS, _OUT, _SKIP_MNIST, _REUSE_MT, _MERGE_MNIST, _MERGE_MT, _MNIST_JSON, _PREFIX
    _QUICK = flags.DEFINE_bool("quick", False, "Tiny settings (smoke test of the script, minutes).")
    _SIZE = flags.DEFINE_integer("size", 32, "Magnetic tile side in pixels (<= 64 on this CPU).")
    _SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds of the Magnetic-tile split/training.")
    _STEPS = flags.DEFINE_integer("train_steps", 1500, "Training steps of every Magnetic-tile model.")
    _DIGITS = flags.DEFINE_list("digits", ["0", "1", "2", "3", "4"], "MNIST normal digits to run.")
    _MNIST_STEPS = flags.DEFINE_integer("mnist_train_steps", 1000, "Training steps per MNIST model.")
    _MNIST_PER_CLASS = flags.DEFINE_integer(
        "mnist_test_per_class", 0, "Cap on test images per anomalous digit (0 = all of them).")
    _SUBSET = flags.DEFINE_integer("steps_subset", 64, "Test images for the steps/throughput table.")
    _SDE_STEPS = flags.DEFINE_integer("sde_steps", 1000, "Steps of the reference reverse-SDE solver.")
    _OUT = flags.DEFINE_string("out", str(REPO / "docs" / "results" / "image.md"), "Results file.")
    _SKIP_MNIST = flags.DEFINE_bool("skip_mnist", False, "Only Magnetic tile.")
    _REUSE_MT = flags.DEFINE_bool(
        "reuse_mt", False, "Take the Magnetic-tile results from the previous run's results.json "
        "(beside the report) and run only MNIST.")
    _MERGE_MNIST = flags.DEFINE_bool(
        "merge_mnist", False, "Keep the MNIST digits already held in --mnist_json (a digit run now "
        "replaces its old row), add the digits run now, and write the MNIST table for every digit held. "
        "The held digits must have the same settings (seed, steps, test cap, configs). Without it the "
        "JSON holds only the digits run now. With --skip_mnist: rewrite the report from the JSON.")
    _MERGE_MT = flags.DEFINE_bool(
        "merge_mt", False, "Keep the Magnetic-tile seeds already held in the previous run's "
        "results.json (beside the report; a seed run now replaces its old entry) and add the seeds "
        "run now; the held seeds must have the same size and training steps.")
    _MNIST_JSON = flags.DEFINE_string(
        "mnist_json", "", "Per-digit MNIST results (default: beside --out, <stem>_mnist.json).")
    _PREFIX = flags.DEFINE_string(
        "prefix", "flock /tmp/adiff_heavy.lock", "How the run was launched (recorded in the report "
        "with the command line, e.g. 'flock /tmp/adiff_heavy.lock timeout 840').")


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def _resolve(path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path if path.is_absolute() else (REPO / path).resolve()


def load_split(cfg, *, seed: int, size=None, normal_class=None, mnist=None) -> image_data.Split:
    """The benchmark's train/test split for an image config (also the launcher's loader).

    Args:
      cfg: a config of experiments/configs/image_*.py: `dataset` "magnetic_tile" (with `data_dir`,
        `size`, `train_fraction`) or "mnist" (with `images`, `labels`, `train_fraction`,
        `normal_class`); relative paths are relative to the repository root.
      seed: seed of the split.
      size: Magnetic-tile side in pixels (default `cfg.size`).
      normal_class: MNIST normal digit (default `cfg.normal_class`).
      mnist: optional already loaded (images, labels) of the MNIST file pair.

    Returns:
      `adiff.data.image.Split` (train images, test ImageSet with labels and, for Magnetic tile,
      masks).
    """
    if cfg.dataset == "magnetic_tile":
        data = image_data.load_magnetic_tile(_resolve(cfg.data_dir), size=size or cfg.size)
        return image_data.magnetic_tile_split(data, seed=seed, train_fraction=cfg.train_fraction)
    if cfg.dataset == "mnist":
        images, labels = mnist or image_data.load_mnist(_resolve(cfg.images), _resolve(cfg.labels))
        digit = cfg.normal_class if normal_class is None else normal_class
        return image_data.one_vs_rest_split(images, labels, normal_class=int(digit), seed=seed,
                                            train_fraction=cfg.train_fraction)
    raise ValueError(f"config.dataset must be 'magnetic_tile' or 'mnist', got {cfg.dataset!r}")


# ------------------------------------------------------------------------------------------------
# baselines
# ------------------------------------------------------------------------------------------------
def map_head(maps: np.ndarray, *, sigma: float, topk: float) -> tuple[np.ndarray, np.ndarray]:
    """The same map post-processing as adiff's: Gaussian blur, then the top-k mean."""
    m = np.asarray(_gaussian_blur(jnp.asarray(maps, jnp.float32), sigma))
    flat = m.reshape(len(m), -1)
    k = max(1, int(round(topk * flat.shape[1])))
    return np.sort(flat, axis=1)[:, -k:].mean(axis=1), m


def pca_baseline(train: np.ndarray, test: np.ndarray, *, var: float = 0.95):
    from sklearn.decomposition import PCA
    a = train.reshape(len(train), -1).astype(np.float32) / 255.0
    b = test.reshape(len(test), -1).astype(np.float32) / 255.0
    pca = PCA(n_components=var, svd_solver="full").fit(a)
    rec = pca.inverse_transform(pca.transform(b))
    err = ((b - rec) ** 2).reshape(test.shape).mean(axis=-1)
    return err


def knn_baseline(train: np.ndarray, test: np.ndarray, *, k: int = 5) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors
    a = train.reshape(len(train), -1).astype(np.float32) / 255.0
    b = test.reshape(len(test), -1).astype(np.float32) / 255.0
    nn = NearestNeighbors(n_neighbors=k).fit(a)
    d, _ = nn.kneighbors(b)
    return d.mean(axis=1)


def ae_baseline(train: np.ndarray, test: np.ndarray, *, steps: int, batch_size: int, lr: float,
                seed: int, features=(32, 64), latent_channels: int = 4):
    ae = ConvAutoencoder(features=tuple(features), latent_channels=latent_channels,
                         out_channels=train.shape[-1])
    a = 2.0 * train.astype(np.float32) / 255.0 - 1.0
    b = 2.0 * test.astype(np.float32) / 255.0 - 1.0
    params = jax.jit(ae.init)(jax.random.key(seed, impl="rbg"), jnp.asarray(a[:1]))

    def loss_fn(p, batch, key):
        del key
        return jnp.mean(jnp.square(ae.apply(p, batch) - batch)), {}

    cfg = trainer.TrainConfig(num_steps=steps, batch_size=min(batch_size, len(a)), learning_rate=lr,
                              warmup_steps=min(100, steps // 10), ema_decay=0.995,
                              log_every=max(1, steps // 5), checkpoint_every=steps, seed=seed)
    p = trainer.fit(loss_fn, params, a, config=cfg, progress=False).state.ema_params
    apply = jax.jit(lambda p, v: ae.apply(p, v))
    rec = np.concatenate([np.asarray(apply(p, jnp.asarray(b[i:i + 256]))) for i in range(0, len(b), 256)])
    return ((b - rec) ** 2).mean(axis=-1) / 4.0, (rec + 1.0) / 2.0  # error in [0, 1] units


# ------------------------------------------------------------------------------------------------
# evaluation helpers
# ------------------------------------------------------------------------------------------------
def evaluate(test: image_data.ImageSet, scores, maps=None) -> dict:
    out = {"image_auroc": metrics.auroc(test.labels, scores)}
    if maps is not None and test.masks is not None:
        out["pixel_auroc"] = metrics.pixel_auroc(test.masks, maps)
        out["aupro"] = metrics.aupro(test.masks, maps)
    return out


def per_kind(test, scores, maps) -> dict:
    """Image and pixel AUROC of each defect type against the normal test images (information)."""
    kinds = np.asarray(test.kinds)
    normal = test.labels == 0
    out = {}
    for k in sorted(set(kinds[~normal])):
        sel = normal | (kinds == k)
        row = {"n": int((kinds == k).sum()),
               "image_auroc": metrics.auroc(test.labels[sel], np.asarray(scores)[sel])}
        if test.masks[sel].any():
            row["pixel_auroc"] = metrics.pixel_auroc(test.masks[sel], np.asarray(maps)[sel])
        out[str(k)] = row
    return out


def timed_analyze(det: ImageDetector, x: np.ndarray):
    t = time.perf_counter()
    res = det.analyze(x)
    total = time.perf_counter() - t
    bs = det.batch_seconds_
    bsz = int(min(det.score_batch_size, len(x)))
    if len(bs) > 1:  # throughput without the first (compiling) batch
        ips = (len(x) - bsz) / sum(bs[1:])
    else:
        ips = len(x) / total
    return res, ips, total


def fmt(v, nd=3):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{nd}f}"


def mean_sd(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"


# ------------------------------------------------------------------------------------------------
# Magnetic tile
# ------------------------------------------------------------------------------------------------
def run_magnetic_tile(seed: int, cfg, size: int, steps: int, quick: bool, figure_dir: pathlib.Path):
    split = load_split(cfg, seed=seed, size=size)
    train, test = split.train, split.test
    log(f"MT seed {seed}: train {train.shape}, test {test.images.shape}, anomalous {test.labels.sum()}")
    base = dict(cfg.detector)
    base.update(seed=seed, train_steps=steps)
    rem = dict(cfg.remedies)
    sigma, topk = rem["map_sigma"], base["topk"]
    rows, extra = {}, {}

    # -- baselines ------------------------------------------------------------------------
    t = time.perf_counter()
    err = pca_baseline(train, test.images)
    s, m = map_head(err, sigma=sigma, topk=topk)
    rows["PCA reconstruction (95% var.)"] = evaluate(test, s, m)
    rows["KNN on pixels (k=5)"] = evaluate(test, knn_baseline(train, test.images))
    err, ae_rec = ae_baseline(train, test.images, steps=steps, batch_size=base["batch_size"],
                              lr=base["learning_rate"], seed=seed)
    s, ae_maps = map_head(err, sigma=sigma, topk=topk)
    rows["Conv AE (same steps)"] = evaluate(test, s, ae_maps)
    log(f"baselines {time.perf_counter() - t:.0f}s", rows)

    # -- adiff, Gaussian-noise pixel model: ablation ------------------------------------------
    t = time.perf_counter()
    det = ImageDetector(**base).fit(train)
    train_time = time.perf_counter() - t
    log(f"gaussian model trained {train_time:.0f}s")
    ablation = [
        ("plain: full diffusion (t0 = 1.0)", dict(t0=(1.0,))),
        ("partial diffusion t0 = 0.1", dict(t0=(0.1,))),
        ("partial diffusion t0 = 0.25", dict(t0=(0.25,))),
        ("partial diffusion t0 = 0.5", dict(t0=(0.5,))),
        (f"masked reconstruction (4 masks, {max(2, size // 4)} px patches, from T)",
         dict(scoring="masked", mask_patch=max(2, size // 4), num_masks=4, mask_t0=1.0)),
        ("conditioned denoising w = 1 (t0 = 0.5)", dict(t0=(0.5,), guidance=1.0)),
        ("conditioned denoising w = 1 (t0 = 1.0)", dict(t0=(1.0,), guidance=1.0)),
        ("t0 = 0.25 + multi-scale map (1, 2, 4) + blur", dict(t0=(0.25,), map_scales=(1, 2, 4), map_sigma=1.0)),
        ("score norm (ts = 0.05, 0.1, 0.25), native score", dict(scoring="score_norm", t0=(0.05, 0.1, 0.25), image_score="native")),
    ]
    if quick:
        ablation = ablation[:2] + ablation[4:5] + ablation[5:6]
    ab_rows = {}
    for name, kw in ablation:
        det.set_params(**{**_score_defaults(base), **kw})
        res, ips, total = timed_analyze(det, test.images)
        ab_rows[name] = {**evaluate(test, res.scores, res.maps), "images_per_s": ips}
        log(name, ab_rows[name])
    den = dict(cfg.denoise)
    den_rows = [
        ("denoise (configured: t = " + ", ".join(map(str, den["t0"])) + f"; {den['repeats']} draws)", den),
        ("denoise, low band t = 0.05, 0.1, 0.2", {**den, "t0": (0.05, 0.1, 0.2)}),
        ("denoise, mid band t = 0.3, 0.5, 0.7", {**den, "t0": (0.3, 0.5, 0.7)}),
    ]
    elbo = dict(cfg.elbo)
    elbo_rows = [(f"elbo ({elbo['elbo_samples']} draws), top-1% of the map", elbo),
                 (f"elbo ({elbo['elbo_samples']} draws), native (the bound)",
                  {**elbo, "image_score": "native"})]
    configured = cfg.get("configured", "denoise")  # which scorer block heads the table
    if configured not in ("denoise", "elbo"):
        raise ValueError(f"config.configured must be 'denoise' or 'elbo', got {configured!r}")
    configured_row = (den_rows if configured == "denoise" else elbo_rows)[0][0]
    configured_res = None
    if quick:  # the configured row only
        den_rows, elbo_rows = den_rows[:1], (elbo_rows[:1] if configured == "elbo" else [])
    for name, kw in den_rows + elbo_rows:
        det.set_params(**{**_score_defaults(base), **kw})
        res, ips, total = timed_analyze(det, test.images)
        ab_rows[name] = {**evaluate(test, res.scores, res.maps), "images_per_s": ips}
        log(name, ab_rows[name])
        if name == configured_row:
            rows[f"adiff ({configured}, configured)"] = ab_rows[name]
            configured_res = res
    det.set_params(**_score_defaults(base))

    # -- structured-noise model -----------------------------------------------------------
    t = time.perf_counter()
    det_s = ImageDetector(**{**base, "noise": rem["noise"]}).fit(train)
    log(f"{rem['noise']} model trained {time.perf_counter() - t:.0f}s")
    for t0 in ((0.25,), (0.5,)):
        det_s.set_params(**{**_score_defaults(base), "t0": t0})
        res, ips, _ = timed_analyze(det_s, test.images)
        name = f"{rem['noise']} noise, t0 = {t0[0]}"
        ab_rows[name] = {**evaluate(test, res.scores, res.maps), "images_per_s": ips}
        log(name, ab_rows[name])
    # The combination fixed in advance (configs/image_magnetic_tile.py: remedies).
    det_s.set_params(**{**_score_defaults(base), "t0": tuple(rem["t0"]), "guidance": rem["guidance"],
                        "map_scales": tuple(rem["map_scales"]), "map_sigma": rem["map_sigma"]})
    best, ips, _ = timed_analyze(det_s, test.images)
    name = (f"combination: {rem['noise']} noise + t0 = {rem['t0'][0]} + conditioned w = "
            f"{rem['guidance']} + multi-scale map + blur")
    ab_rows[name] = {**evaluate(test, best.scores, best.maps), "images_per_s": ips}
    log(name, ab_rows[name])
    rows["adiff (combination of remedies)"] = ab_rows[name]

    # -- steps / throughput on a fixed subset -----------------------------------------------
    rng = np.random.default_rng(seed)
    n_sub = min(_SUBSET.value, len(test))
    sub_idx = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(test.labels == 0), n_sub // 2, replace=False),
        rng.choice(np.flatnonzero(test.labels == 1), n_sub - n_sub // 2, replace=False)]))
    sub = test.subset(sub_idx)
    step_rows = {}
    t0_ref = (0.25,)
    sde_steps = 50 if quick else _SDE_STEPS.value
    steps_cfg = [
        (f"reverse SDE, {sde_steps} steps", det, dict(solver="reverse_diffusion", solver_steps=sde_steps)),
        ("DDIM, 10 steps", det, dict(solver="ddim", solver_steps=10)),
        ("DPM-Solver++(2M), 10 steps", det, dict(solver="dpm_solver_pp", solver_steps=10)),
        ("DDIM, 5 steps", det, dict(solver="ddim", solver_steps=5)),
    ]
    t = time.perf_counter()
    det_l = ImageDetector(**{**base, "latent": True, "ae_features": (32, 64), "latent_channels": 4,
                             "channel_mults": (1, 2), "score_batch_size": 32}).fit(train)
    log(f"latent model trained {time.perf_counter() - t:.0f}s")
    steps_cfg.append(("latent diffusion (AE f=4, 8x8x4 latents), DDIM 10 steps", det_l,
                      dict(solver="ddim", solver_steps=10)))
    for name, d, kw in steps_cfg:
        d.set_params(**{**_score_defaults(base), "t0": t0_ref, "score_batch_size": 32, **kw})
        res, ips, _ = timed_analyze(d, sub.images)
        step_rows[name] = {**evaluate(sub, res.scores, res.maps), "images_per_s": ips}
        log(name, step_rows[name])
    # latent model on the full test set too
    det_l.set_params(**{**_score_defaults(base), "t0": t0_ref})
    res, ips, _ = timed_analyze(det_l, test.images)
    ab_rows["latent diffusion, t0 = 0.25 (DDIM 10)"] = {**evaluate(test, res.scores, res.maps), "images_per_s": ips}
    log("latent full", ab_rows["latent diffusion, t0 = 0.25 (DDIM 10)"])

    # -- figure -----------------------------------------------------------------------------
    if figure_dir is not None:
        _figure(test, best, ae_maps, ae_rec, figure_dir / f"magnetic_tile_seed{seed}.png", seed,
                configured=configured_res, scorer=configured)
    return {"rows": rows, "ablation": ab_rows, "steps": step_rows, "n_train": int(len(train)),
            "n_test": int(len(test)), "n_anomalous": int(test.labels.sum()), "n_subset": int(n_sub),
            "train_seconds_gaussian": train_time}


def merge_mt_seeds(prev: dict, size: int, steps: int, new: list) -> list:
    """The Magnetic-tile per-seed entries of a previous results.json (`prev`) merged with `new`
    (entries run now; a seed in both keeps the new one), sorted by seed. Held entries without a
    "seed" key (older files) take theirs from prev["seeds"]. Raises if prev holds no Magnetic-tile
    run or one with another size or number of training steps."""
    if not prev.get("magnetic_tile"):
        raise FileNotFoundError("--merge_mt needs a previous run's results.json with Magnetic-tile seeds")
    if (int(prev["size"]), int(prev["train_steps"])) != (int(size), int(steps)):
        raise ValueError(f"--merge_mt: the held run used size {prev['size']} and {prev['train_steps']} "
                         f"steps; this run uses size {size} and {steps} steps")
    held = [dict(e, seed=int(e.get("seed", s))) for e, s in zip(prev["magnetic_tile"], prev["seeds"])]
    run_now = {e["seed"] for e in new}
    return sorted([e for e in held if e["seed"] not in run_now] + list(new), key=lambda e: e["seed"])


def _score_defaults(base: dict) -> dict:
    return dict(scoring="reconstruction", t0=tuple(base["t0"]), solver=base["solver"],
                solver_steps=base["solver_steps"], guidance=0.0, map_scales=(1,), map_sigma=0.0,
                image_score=base["image_score"], topk=base["topk"],
                score_batch_size=base["score_batch_size"], eta=0.0, repeats=1)


def _figure(test, best, ae_maps, ae_rec, path: pathlib.Path, seed: int, configured=None,
            scorer: str = "denoise"):
    """Inputs, masks, reconstructions and maps; `configured` is the configured scorer's analysis
    (named `scorer`; only "denoise" has a clean-image estimate worth showing)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(seed)
    picks = []
    for kind in ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven", "MT_Free"):
        idx = [i for i, k in enumerate(test.kinds) if k == kind]
        picks.append(int(rng.choice(idx)))
    rows = [("input", lambda i: test.images[i, ..., 0] / 255.0, "gray"),
            ("mask", lambda i: test.masks[i], "gray"),
            ("adiff recon.", lambda i: best.reconstructions[i, ..., 0], "gray"),
            ("adiff map", lambda i: best.maps[i], "inferno"),
            *([("denoise x0 est.", lambda i: configured.reconstructions[i, ..., 0], "gray")]
              if configured is not None and scorer == "denoise" else []),
            *([(f"{scorer} map", lambda i: configured.maps[i], "inferno")]
              if configured is not None else []),
            ("AE recon.", lambda i: ae_rec[i, ..., 0], "gray"),
            ("AE map", lambda i: ae_maps[i], "inferno")]
    fig, axes = plt.subplots(len(rows), len(picks), figsize=(1.4 * len(picks), 1.4 * len(rows)))
    for r, (title, get, cmap) in enumerate(rows):
        for c, i in enumerate(picks):
            ax = axes[r, c]
            ax.imshow(get(i), cmap=cmap, vmin=0 if cmap == "gray" else None,
                      vmax=1 if cmap == "gray" else None)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
            if r == 0:
                ax.set_title(test.kinds[i].replace("MT_", ""), fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# MNIST
# ------------------------------------------------------------------------------------------------
def cap_mnist_test(test: image_data.ImageSet, digit: int, seed: int, per_class: int) -> image_data.ImageSet:
    """The MNIST test set with at most `per_class` images of each anomalous digit (random, seeded;
    every image of the normal `digit` kept); per_class = 0 keeps everything."""
    if not per_class:
        return test
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(10):
        idx = [i for i, k in enumerate(test.kinds) if k == str(c)]
        if c != digit and len(idx) > per_class:
            idx = sorted(rng.choice(idx, per_class, replace=False).tolist())
        keep += idx
    return test.subset(np.sort(np.asarray(keep)))


def run_mnist(digits, seed: int, steps: int, per_class: int, quick: bool, on_digit=None):
    """MNIST one-vs-rest rows for `digits`; `on_digit(digit, row)` is called after each digit."""
    del quick
    cfg = image_mnist.get_config()
    mnist = image_data.load_mnist(_resolve(cfg.images), _resolve(cfg.labels))
    out = {}
    for d in digits:
        split = load_split(cfg, seed=seed, normal_class=d, mnist=mnist)
        test = cap_mnist_test(split.test, d, seed, per_class)
        base = {**dict(cfg.detector), "seed": seed, "train_steps": steps}
        t = time.perf_counter()
        det = ImageDetector(**base).fit(split.train)
        train_s = time.perf_counter() - t
        res = det.analyze(test.images)
        r = {"adiff": metrics.auroc(test.labels, res.scores)}
        det.set_params(**dict(cfg.denoise))
        r["adiff_denoise"] = metrics.auroc(test.labels, det.decision_function(test.images))
        adiff_s = time.perf_counter() - t
        err, _ = ae_baseline(split.train, test.images, steps=steps, batch_size=32, lr=2e-3, seed=seed,
                             features=(16, 32))
        r["conv_ae"] = metrics.auroc(test.labels, err.reshape(len(err), -1).mean(axis=1))
        r["pca"] = metrics.auroc(test.labels, pca_baseline(split.train, test.images).reshape(len(test), -1).mean(axis=1))
        r["knn"] = metrics.auroc(test.labels, knn_baseline(split.train, test.images))
        r["n_test"] = int(len(test))
        r["n_train"] = int(len(split.train))
        r["seconds"] = time.perf_counter() - t
        r["adiff_train_seconds"] = train_s
        r["adiff_seconds"] = adiff_s
        r["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        out[str(d)] = r
        log(f"MNIST digit {d} ({r['seconds']:.0f}s)", r)
        if on_digit is not None:
            on_digit(d, r)
    return out


# ------------------------------------------------------------------------------------------------
# MNIST results held across runs (one JSON beside the report; see --merge_mnist)
# ------------------------------------------------------------------------------------------------
MNIST_KEYS = ("adiff", "adiff_denoise", "conv_ae", "pca", "knn")


def mnist_settings(seed: int, steps: int, per_class: int) -> dict:
    """Everything that must match for MNIST rows of different runs to share a table."""
    cfg = image_mnist.get_config()
    return json.loads(json.dumps({
        "seed": int(seed), "train_steps": int(steps), "test_per_class": int(per_class),
        "config": "experiments/configs/image_mnist.py",
        "detector": cfg.detector.to_dict(), "denoise": cfg.denoise.to_dict(),
        "baselines": {"conv_ae": "features (16, 32), same steps, batch 32, lr 2e-3, image score = map mean",
                      "pca": "95% variance, image score = map mean", "knn": "k = 5, mean distance"}}))


def load_mnist_json(path: pathlib.Path) -> dict:
    held = json.loads(path.read_text())
    if not isinstance(held.get("digits"), dict) or "settings" not in held:
        raise ValueError(f"{path}: not an MNIST results file (needs 'settings' and 'digits')")
    return held


def merge_mnist(held: dict | None, settings: dict, new: dict) -> dict:
    """The held digits (their settings must equal `settings`) updated with the digits in `new`."""
    if held is not None and held["settings"] != settings:
        diff = sorted(k for k in set(held["settings"]) | set(settings)
                      if held["settings"].get(k) != settings.get(k))
        raise ValueError(f"--merge_mnist: the held MNIST digits were run with other settings ({diff}); "
                         "rerun them or use another --mnist_json")
    digits = dict(held["digits"]) if held is not None else {}
    digits.update({str(d): r for d, r in new.items()})
    return dict(sorted(digits.items(), key=lambda kv: int(kv[0])))


def save_mnist_json(path: pathlib.Path, settings: dict, digits: dict, machine: str) -> None:
    doc = {"description": "MNIST one-vs-rest rows of experiments/benchmarks/image.py, one per normal "
                          "digit (AUROC per method, test/train image counts, seconds, the command of "
                          "the run that produced it; 'note' where a row did not come from a completed "
                          "run). Merged across runs with --merge_mnist.",
           "machine": machine, "settings": settings,
           "digits": dict(sorted(digits.items(), key=lambda kv: int(kv[0])))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def _command() -> str:
    args = [a for a in sys.argv[1:] if not a.startswith(("--prefix=", "-prefix="))]
    return (f"{_PREFIX.value} python -m experiments.benchmarks.image " + " ".join(args)).strip()


def _describe_denoise(den) -> str:
    return (f"one-step denoising error at t = {', '.join(map(str, den.t0))}, {den.repeats} fixed noise "
            f"draws each, image score = map {den.image_score}")


def _timing_line(results: dict) -> str:
    mt_min = results.get("mt_wall_minutes", results.get("wall_minutes"))
    parts = [f"Wall time {mt_min:.1f} min (Magnetic-tile run)" if mt_min is not None else ""]
    secs = [r["seconds"] for r in (results.get("mnist") or {}).values() if r.get("seconds")]
    if secs:
        parts.append(f"MNIST {np.mean(secs) / 60:.1f} min per digit ({min(secs) / 60:.1f} - "
                     f"{max(secs) / 60:.1f}; per digit in image_mnist.json)")
    return "; ".join(p for p in parts if p) + "."


def _sources_line(mn: dict) -> str:
    """Which run each MNIST row came from (rows with a 'note' say how they were obtained)."""
    groups: dict = {}
    for d, r in mn.items():
        groups.setdefault(r.get("note", ""), []).append(d)
    out = []
    for note, ds in groups.items():
        if note:
            out.append(f"Digit{'s' if len(ds) > 1 else ''} {', '.join(ds)}: {note}.")
    if groups.get(""):
        ds = groups[""]
        out.append(f"Digit{'s' if len(ds) > 1 else ''} {', '.join(ds)}: "
                   + ("one run per digit" if len(ds) > 1 else "its own run")
                   + " (command lines above; rows merged with --merge_mnist).")
    return " ".join(out).rstrip(".")


def _commands(results: dict) -> str:
    """One line per run: the Magnetic-tile run, then each distinct MNIST run in digit order."""
    cmds = [results.get("mt_command", "")]
    mn = results.get("mnist") or {}
    for _, r in sorted(mn.items(), key=lambda kv: int(kv[0])):
        c = r.get("command") or results.get("mnist_command", "")
        if c and c not in cmds:
            cmds.append(c)
    if not mn and results.get("mnist_command"):
        cmds.append(results["mnist_command"])
    return "\n".join(c for c in cmds if c)


def write_report(results: dict, path: pathlib.Path, command: str) -> None:
    seeds = results["seeds"]
    mt = results["magnetic_tile"]
    lines = ["# Image anomaly detection (ImageDetector)", "",
             "Produced by `experiments/benchmarks/image.py` (the Magnetic-tile and MNIST parts may come from separate runs, each line below):", "", "```", command, "```", "",
             f"Machine: {results['machine']}. " + _timing_line(results), "",
             "## Magnetic-tile defects", "",
             f"Data: `../shared/data/image/magnetic_tile` (1,344 images), grayscale, resized to "
             f"{results['size']} x {results['size']} px (bilinear; masks resized then thresholded at 128). "
             f"Protocol: train on a random 70% of MT_Free (seed), test on the rest of MT_Free plus all "
             f"392 defect images. Seeds: {', '.join(map(str, seeds))}"
             + (" (one seed only: the CPU budget of this run; the issue asks for 3)" if len(seeds) < 3 else "")
             + ". Image AUROC, pixel AUROC over all test pixels, AUPRO (8-connected regions, FPR <= 0.3, "
             "normalised). Every model trains "
             f"{results['train_steps']} steps, batch 32. The baselines' maps go through the same head as "
             "adiff's (Gaussian blur sigma = 1 px, image score = mean of the top 1% of the map); KNN has no map.",
             "", "### Baselines vs adiff", "",
             "| method | image AUROC | pixel AUROC | AUPRO |", "|---|---:|---:|---:|"]
    names = list(mt[0]["rows"])
    for n in names:
        vals = [r["rows"][n] for r in mt]
        lines.append(f"| {n} | {mean_sd([v.get('image_auroc') for v in vals])} | "
                     f"{mean_sd([v.get('pixel_auroc') for v in vals])} | {mean_sd([v.get('aupro') for v in vals])} |")
    lines += ["", "### Identity-shortcut remedies (ablation, full test set)", "",
              "One Gaussian-noise UNet (16 channels, 3 levels) serves every row except the structured-noise "
              "rows (a second UNet trained with that noise) and the latent row (an autoencoder + a latent "
              "UNet). Solver: DDIM, 10 steps, unless stated. Image score: top-1% mean of the map.", "",
              "| configuration | image AUROC | pixel AUROC | AUPRO | images/s |", "|---|---:|---:|---:|---:|"]
    for n in mt[0]["ablation"]:
        vals = [r["ablation"][n] for r in mt]
        lines.append(f"| {n} | {mean_sd([v.get('image_auroc') for v in vals])} | "
                     f"{mean_sd([v.get('pixel_auroc') for v in vals])} | {mean_sd([v.get('aupro') for v in vals])} | "
                     f"{np.mean([v['images_per_s'] for v in vals]):.1f} |")
    lines += ["", "### Steps and throughput (fixed test subset)", "",
              f"{mt[0]['n_subset']} test images (half normal, half defective, drawn with the seed), t0 = 0.25, "
              "batch 32; images/s excludes the first (compiling) batch; the machine's other jobs make "
              "throughput figures approximate.", "",
              "| solver | image AUROC | pixel AUROC | AUPRO | images/s |", "|---|---:|---:|---:|---:|"]
    for n in mt[0]["steps"]:
        vals = [r["steps"][n] for r in mt]
        lines.append(f"| {n} | {mean_sd([v.get('image_auroc') for v in vals])} | "
                     f"{mean_sd([v.get('pixel_auroc') for v in vals])} | {mean_sd([v.get('aupro') for v in vals])} | "
                     f"{np.mean([v['images_per_s'] for v in vals]):.1f} |")
    lines += ["", f"![inputs, masks, reconstructions and maps](image/magnetic_tile_seed{seeds[0]}.png)", ""]
    if results.get("mnist"):
        mn = results["mnist"]
        lines += ["## MNIST one-vs-rest", "",
                  "Data: `../shared/data/image/mnist` (the 10,000-image test split; no training split is "
                  "staged), 28 x 28. For each normal digit, 80% of its images (seed "
                  f"{results['mnist_seed']}) train, the rest of it plus the other digits test"
                  + (f" (capped at {results['mnist_per_class']} images per anomalous digit)" if results['mnist_per_class'] else "")
                  + f". Digits included: {', '.join(mn)}"
                  + (f" ({len(mn)} of the ten: CPU budget)" if len(mn) < 10 else " (all ten)")
                  + ". " + _sources_line(mn)
                  + f". adiff: one Gaussian UNet ({results.get('mnist_channels', 16)} channels, 3 levels) per digit, "
                  f"{results['mnist_steps']} steps; reconstruction column: t0 = 0.5, DDIM 10, maps at scales 1 "
                  "and 2, blur 1 px, image score = map mean; denoise column (same network): "
                  + results.get("mnist_denoise", "") + ". Conv AE with the same steps; PCA 95% variance; KNN k = 5. "
                  "Image scores are the mean map (reconstruction baselines) or the mean kNN distance.", "",
                  "| digit | adiff reconstruction | adiff denoise | conv AE | PCA | KNN | test images |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for d, r in sorted(mn.items(), key=lambda kv: int(kv[0])):
            lines.append(f"| {d} | {r['adiff']:.3f} | {fmt(r.get('adiff_denoise'))} | {r['conv_ae']:.3f} | "
                         f"{r['pca']:.3f} | {r['knn']:.3f} | {r['n_test']} |")
        keys = MNIST_KEYS
        lines.append(f"| mean ({len(mn)} digits) | " + " | ".join(
            fmt(np.mean([r[k] for r in mn.values()])) if all(k in r for r in mn.values()) else "–"
            for k in keys) + " | |")
        lines.append("")
    lines += ["## Reading the numbers", "", "<!-- notes -->", ""]
    text = "\n".join(lines)
    if path.exists():  # keep hand-written notes below the marker
        old = path.read_text()
        if "<!-- notes -->" in old:
            text = text.replace("<!-- notes -->", old.split("<!-- notes -->", 1)[1].strip("\n")
                                if old.split("<!-- notes -->", 1)[1].strip() else "<!-- notes -->")
            if "<!-- notes -->" not in text:
                text = text.replace("## Reading the numbers\n", "## Reading the numbers\n\n<!-- notes -->\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv):
    del argv
    t_all = time.perf_counter()
    quick = _QUICK.value
    seeds = [int(s) for s in _SEEDS.value]
    size = 16 if quick else _SIZE.value
    steps = 40 if quick else _STEPS.value
    cfg = image_magnetic_tile.get_config()
    out_path = pathlib.Path(_OUT.value)
    fig_dir = out_path.parent / "image"
    if quick:
        out_path = pathlib.Path("/tmp/adiff_image_quick.md")
        fig_dir = pathlib.Path("/tmp/adiff_image_quick")
    results = {"seeds": seeds, "size": size, "train_steps": steps,
               "machine": f"{platform.machine()}, {jax.device_count()} {jax.default_backend()} device(s), "
                          f"jax {jax.__version__}", "magnetic_tile": []}
    prev_path = fig_dir / "results.json"
    prev = (json.loads(prev_path.read_text())
            if (_REUSE_MT.value or _SKIP_MNIST.value or _MERGE_MT.value) and prev_path.exists() else {})
    if _REUSE_MT.value and _MERGE_MT.value:
        raise ValueError("--reuse_mt runs no Magnetic-tile seed; --merge_mt adds seeds: pick one")
    if _MERGE_MT.value and not quick:  # fail before any training on a mismatched held run
        merge_mt_seeds(prev, size, steps, [])
    if _REUSE_MT.value:
        if not prev:
            raise FileNotFoundError(f"--reuse_mt needs a previous run's {prev_path}")
        results.update({k: prev[k] for k in ("seeds", "size", "train_steps", "magnetic_tile", "mt_command")
                        if k in prev})
        # the Magnetic-tile run's own wall time (older files kept it only as wall_minutes)
        mt_min = prev.get("mt_wall_minutes", prev.get("wall_minutes"))
        if mt_min is not None:
            results["mt_wall_minutes"] = mt_min
        seeds = results["seeds"]
    else:
        for seed in seeds:
            results["magnetic_tile"].append(dict(run_magnetic_tile(seed, cfg, size, steps, quick, fig_dir),
                                                 seed=seed))
        results["mt_command"] = _command()
        results["mt_wall_minutes"] = (time.perf_counter() - t_all) / 60.0
        if _MERGE_MT.value and not quick:
            results["magnetic_tile"] = merge_mt_seeds(prev, size, steps, results["magnetic_tile"])
            kept = [e for e in results["magnetic_tile"] if e["seed"] not in seeds]
            results["seeds"] = seeds = [e["seed"] for e in results["magnetic_tile"]]
            if kept:
                results["mt_command"] = prev["mt_command"] + "\n" + results["mt_command"]
                results["mt_wall_minutes"] += float(prev.get("mt_wall_minutes", 0.0))

    mnist_steps = 30 if quick else _MNIST_STEPS.value
    per_class = 50 if quick else _MNIST_PER_CLASS.value
    mnist_meta = dict(mnist_seed=seeds[0], mnist_steps=mnist_steps, mnist_per_class=per_class,
                      mnist_channels=int(image_mnist.get_config().detector.base_channels),
                      mnist_denoise=_describe_denoise(image_mnist.get_config().denoise))
    mnist_json = (pathlib.Path(_MNIST_JSON.value) if _MNIST_JSON.value
                  else out_path.with_name(out_path.stem + "_mnist.json"))
    settings = mnist_settings(seeds[0], mnist_steps, per_class)
    held = None
    if _MERGE_MNIST.value and mnist_json.exists():
        held = load_mnist_json(mnist_json)
        if not _SKIP_MNIST.value:
            merge_mnist(held, settings, {})  # fail now (before any training) on mismatched settings
        log(f"held MNIST digits in {mnist_json}: {', '.join(held['digits'])}")
    if not _SKIP_MNIST.value:
        digits = [int(d) for d in _DIGITS.value][: (1 if quick else None)]
        command = _command()
        done = {}

        def on_digit(d, r):  # persist after every digit: a run cut by its time limit keeps them
            r["command"] = command
            done[str(d)] = r
            save_mnist_json(mnist_json, settings, merge_mnist(held, settings, done), results["machine"])
            log(f"saved digit {d} to {mnist_json}")

        run_mnist(digits, seeds[0], mnist_steps, per_class, quick, on_digit=on_digit)
        results.update(mnist=merge_mnist(held, settings, done), mnist_command=command, **mnist_meta)
    elif _MERGE_MNIST.value:  # report only: the table from the held digits
        if held is None:
            raise FileNotFoundError(f"--merge_mnist --skip_mnist needs {mnist_json}")
        hs = held["settings"]  # the held rows' own settings (this run's MNIST flags play no part)
        results.update(mnist=merge_mnist(held, hs, {}), **{
            **mnist_meta, "mnist_seed": hs["seed"], "mnist_steps": hs["train_steps"],
            "mnist_per_class": hs["test_per_class"],
            "mnist_channels": int(hs["detector"]["base_channels"]),
            "mnist_denoise": _describe_denoise(image_mnist.get_config().denoise.__class__(hs["denoise"]))})
    elif not quick:  # keep the last MNIST table
        results.update({k: v for k, v in prev.items() if k.startswith("mnist")})
    results["wall_minutes"] = (time.perf_counter() - t_all) / 60.0
    write_report(results, out_path, _commands(results))
    fig_dir.mkdir(parents=True, exist_ok=True)
    (fig_dir / "results.json").write_text(json.dumps(results, indent=1, default=float))
    log(f"wrote {out_path} ({results['wall_minutes']:.1f} min)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
