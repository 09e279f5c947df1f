r"""Anomaly generation benchmark: Magnetic tile (downstream gain, C2ST, diversity, mask alignment),
ADBench tables and SKAB (downstream gain of detectors trained with generated anomalies).

  flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.generation \
      [--parts=image,image_head,image_pixel_head,table,series] [--tables=cardio,satellite] \
      [--merge] [--quick]

Magnetic tile (grayscale, resized to cfg.size px): normal images split by the DESIGN protocol
(random 70% of MT_Free trains, seed); for every defect type a random third (seed) of its images
trains the generator, the other two thirds are test data only. Test = the held-out 30% MT_Free +
those two thirds. Downstream model: a small fully-convolutional per-pixel segmenter (BCE) trained
on the normal training images (all-zero masks) plus synthetic anomalies: (i) adiff generated
defects, (ii) cut-paste, (iii) reference: the real training third itself. "none" cannot train a
supervised segmenter, so the "none" row is the unsupervised PCA reconstruction error on the same
normal images. Image score = mean of the top 10 pixel logits.
Fidelity: classifier two-sample test (logistic regression on pixels, 5-fold CV accuracy) between
held-out real defect images and as many generated ones. Diversity: mean pairwise L2 distance among
samples in the PCA(32) space of the normal training images. Mask alignment: share of changed
pixels (|sample - base| > 2/255) that lie inside the mask.

Tables (ADBench, cfg.table.datasets): DESIGN semi-supervised protocol per seed (a random half of
the normal rows trains, capped at cfg.table.max_train; test = the other half + the anomalies);
cfg.table.num_labelled real anomalies train the class-conditioned generator and leave the test
set. Downstream models: (a) an MLP classifier (scikit-learn, 64-64, class-balanced by
repetition) of normal vs synthetic anomalies; (b) the library path, `TabularDetector`
(scoring "dte_np", its default until session 19) + the supervised head, `fit(normal, anomalies=...)`. Synthetic
anomalies: uniform noise over the training box +-10% (naive), the few real ones only, adiff's
class-conditioned samples (with and without `clip_x0`), the unsupervised low-density mode. "none"
= KNN (PyOD) and TabularDetector on the normal rows alone. Rows with "+ few real" add the
labelled anomalies to the synthetic ones (so "+ few real" rows differ only by the synthetic part).

Series (SKAB): the detector of experiments/configs/ts_skab.py trained on anomaly-free.csv (its
last 20% held out for calibration, as always). The first run of each folder (cfg.series.
labelled_runs) holds the few labelled anomalies and leaves the test set; the other runs are test.
The series generator (TemporalNet, mask + type conditioned, type = folder) trains on windows of
anomaly-free.csv's first 80% and on the windows over the labelled runs' anomalous steps (their
step labels as masks); it then regenerates a random segment of windows cut from the held-out
tail, and those windows are put back into copies of the tail (non-overlapping places) with their
masks as step labels. Naive baseline: the same windows and masks with a parametric anomaly
(spike, level shift, pattern change or noise burst, `inject_series_anomaly`) instead. The same
fitted network scores every row; only the supervised head changes (`fit_head`). Metrics: mean
over the test runs of VUS-PR (buffer from the raw run, as docs/results/timeseries.md) and AUROC.

Series (ASD, --parts=series_asd, entities --asd_offset/--asd_entities, merged across runs with
--merge): per entity, the detector of experiments/configs/ts_asd.py on the train file; no labelled
anomalies are used: the series generator learns the four parametric types from examples injected
into training windows (its unsupervised mode) and regenerates segments of windows from the
held-out tail as above; naive = parametric injection into the same windows and masks; metrics on
the entity's test file.
"""
from __future__ import annotations

import collections
import json
import pathlib
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from adiff import metrics
from adiff.data import image as image_data
from adiff.data import tabular as tabular_data
from adiff.generation import AnomalyGenerator, cut_paste, write_dataset
from experiments.configs import generation_magnetic_tile, generation_tiny

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"
OUT = REPO / "docs" / "results"
ART = {"dir": OUT / "generation"}  # artefacts (JSON, grid, sample dataset); --quick: a temp dir


class Segmenter(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x):
        h = x
        for i, d in enumerate((1, 2, 4, 1)):
            h = nn.silu(nn.Conv(self.width, (3, 3), kernel_dilation=d, padding="SAME")(h))
        return nn.Conv(1, (1, 1))(h)[..., 0]


def train_segmenter(images, masks, *, steps, batch_size, width, lr, seed):
    net = Segmenter(width)
    key = jax.random.key(seed)
    params = net.init(key, jnp.zeros((1,) + images.shape[1:]))
    tx = optax.adam(lr)
    opt = tx.init(params)
    pos = max(masks.mean(), 1e-3)

    @jax.jit
    def step(p, o, x, m):
        def loss(p):
            logit = net.apply(p, x)
            w = jnp.where(m > 0, 0.5 / pos, 0.5 / (1 - pos))
            return jnp.mean(w * optax.sigmoid_binary_cross_entropy(logit, m))
        l, g = jax.value_and_grad(loss)(p)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, l

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        i = rng.integers(0, len(images), batch_size)
        x, m = images[i], masks[i]
        if rng.random() < 0.5:
            x, m = x[:, :, ::-1], m[:, :, ::-1]
        params, opt, _ = step(params, opt, jnp.asarray(x), jnp.asarray(m, jnp.float32))
    apply = jax.jit(net.apply)
    return lambda x: np.concatenate([np.asarray(apply(params, jnp.asarray(x[s:s + 128])))
                                     for s in range(0, len(x), 128)])


def image_metrics(maps, test):
    flat = maps.reshape(len(maps), -1)
    img = np.sort(flat, axis=1)[:, -10:].mean(1)
    return {"image_auroc": metrics.auroc(test.labels, img),
            "pixel_auroc": metrics.pixel_auroc(test.masks, maps),
            "aupro": metrics.aupro(test.masks, maps)}


def pairwise_mean(f):
    d = np.sqrt(np.maximum(((f[:, None] - f[None]) ** 2).sum(-1), 0))
    return float(d[np.triu_indices(len(f), 1)].mean())


def c2st(real, fake, seed):
    n = min(len(real), len(fake))
    rng = np.random.default_rng(seed)
    r = real[rng.permutation(len(real))[:n]].reshape(n, -1)
    f = fake[rng.permutation(len(fake))[:n]].reshape(n, -1)
    X = np.concatenate([r, f])
    y = np.r_[np.zeros(n), np.ones(n)]
    clf = LogisticRegression(C=0.1, max_iter=2000)
    return float(cross_val_score(clf, X, y, cv=5).mean()), int(n)


def _image_setup(cfg, log):
    """Magnetic-tile split, the generator fitted on each type's training third, and its samples
    inserted into random normal training images (shared by the image and image_head parts)."""
    t0 = time.time()
    data = image_data.load_magnetic_tile(DATA / "image" / "magnetic_tile", size=cfg.size)
    split = image_data.magnetic_tile_split(data, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    kinds = np.asarray(split.test.kinds)
    gen_idx, keep = [], np.ones(len(split.test), bool)
    for k in sorted(set(kinds) - {"MT_Free"}):
        idx = rng.permutation(np.flatnonzero(kinds == k))
        n_tr = max(1, int(round(cfg.train_defect_fraction * len(idx))))
        gen_idx.extend(idx[:n_tr])
        keep[idx[:n_tr]] = False
    gen_idx = np.asarray(sorted(gen_idx))
    train_def = split.test.subset(gen_idx)
    test = split.test.subset(np.flatnonzero(keep))
    normal = split.train.astype(np.float32) / 255.0
    log(f"normal train {len(normal)}, generator defects {len(train_def)}, test {len(test)} "
        f"({int(test.labels.sum())} defective), load {time.time() - t0:.0f}s")

    g = cfg.generator
    gen = AnomalyGenerator(modality="image", seed=cfg.seed, train_steps=g.train_steps,
                           batch_size=g.batch_size, learning_rate=g.learning_rate,
                           ema_decay=g.ema_decay, p_uncond=g.p_uncond, num_steps=g.num_steps,
                           width=g.width, channel_mults=tuple(g.channel_mults), groups=g.groups,
                           anomaly_fraction=g.anomaly_fraction, context=g.context,
                           verbose=True)
    t1 = time.time()
    gen.fit(normal, anomalies=train_def.images.astype(np.float32) / 255.0, masks=train_def.masks,
            labels=list(train_def.kinds))
    t_fit = time.time() - t1
    t1 = time.time()
    base = normal[rng.integers(0, len(normal), cfg.num_generated)]
    out = gen.generate(base=base, guidance=cfg.guidance)
    t_gen = time.time() - t1
    log(f"generator fit {t_fit:.0f}s, generate {cfg.num_generated} in {t_gen:.0f}s")
    return normal, train_def, test, gen, base, out, rng, {"generator_fit": t_fit, "generate": t_gen}


def _image_detector_kwargs(cfg):
    """ImageDetector keyword arguments of the image_head and image_pixel_head parts: the detector
    + denoise settings of experiments/configs/image_magnetic_tile.py with cfg's overrides."""
    from experiments.configs import image_magnetic_tile  # pylint: disable=import-outside-toplevel
    icfg = image_magnetic_tile.get_config()
    kw = dict(icfg.detector.to_dict())
    kw.update(icfg.denoise.to_dict())
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    kw.update(cfg.image_head.detector_overrides.to_dict())
    return kw


def run_image_head(cfg, log):
    """Image-level downstream gain through the library path: ImageDetector (the denoise scorer of
    experiments/configs/image_magnetic_tile.py) + the supervised head (`fit_head`) trained on
    the normal training images vs each set of synthetic anomalies."""
    from adiff.detectors import ImageDetector  # pylint: disable=import-outside-toplevel
    normal, train_def, test, _, base, out, _, times = _image_setup(cfg, log)
    kw = _image_detector_kwargs(cfg)
    t1 = time.time()
    det = ImageDetector(seed=cfg.seed, **kw).fit(normal)
    times["detector_fit"] = time.time() - t1
    cp_img, _ = cut_paste(np.random.default_rng(cfg.seed + 7), base)
    xt = test.images.astype(np.float32) / 255.0
    sets = {"none: ImageDetector denoise (unsupervised)": None,
            "detector + head: cut-paste": cp_img,
            "detector + head: adiff generated": out.samples,
            "reference: detector + head: real training third":
                train_def.images.astype(np.float32) / 255.0}
    res = {}
    for name, anomalies in sets.items():
        t1 = time.time()
        det.fit_head(normal, anomalies)
        an = det.analyze(xt)
        s = det.decision_function(xt)
        res[name] = image_metrics(an.maps, test)
        res[name]["image_auroc"] = metrics.auroc(test.labels, s)
        log(f"{name}: {res[name]} ({time.time() - t1:.0f}s)")
    return {"downstream": res, "times_s": times,
            "detector": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}}


def pixel_features(det, x, stats=None):
    """Per-pixel features of images x [N, H, W, C] in [0, 1] for the pixel-level head.

    Channels: the image itself, the detector's log anomaly map at each of its denoise times t0
    separately (`set_params(t0=(t,))` + `analyze`; only when it has more than one time; its t0
    is restored afterwards) and its combined log map (last channel). Map channels are
    standardised by `stats` (per-channel mean and std over the normal training pixels); pass
    stats=None for the normal training images themselves to compute them.

    Returns:
      (features [N, H, W, C + K + 1] float32, stats dict(mean [K + 1], std [K + 1])).
    """
    t0 = tuple(det.t0)
    log_map = lambda m: np.log(np.maximum(np.asarray(m, np.float64), 0.0) + 1e-8)
    maps = []
    if len(t0) > 1:
        try:
            for t in t0:
                det.set_params(t0=(t,))
                maps.append(log_map(det.analyze(x).maps))
        finally:
            det.set_params(t0=t0)
    maps.append(log_map(det.analyze(x).maps))
    maps = np.stack(maps, -1)  # [N, H, W, K + 1]
    if stats is None:
        flat = maps.reshape(-1, maps.shape[-1])
        stats = {"mean": flat.mean(0), "std": np.maximum(flat.std(0), 1e-8)}
    maps = (maps - stats["mean"]) / stats["std"]
    x = np.asarray(x, np.float32).reshape(maps.shape[:3] + (-1,))
    return np.concatenate([x, maps.astype(np.float32)], -1), stats


def pixel_head_scores(features, logits):
    """The library's head rule per pixel: z + softplus(logit), z = the standardised combined
    log map (the last feature channel), so an anomaly kind the head never saw keeps the
    unsupervised evidence. features [N, H, W, F], logits [N, H, W] -> [N, H, W]."""
    from adiff.detectors import supervision  # pylint: disable=import-outside-toplevel
    return supervision.combine(features[..., -1], logits)


def real_shape_masks(rng, masks, kinds, labels, label_names):
    """Masks resampled from the generator's real training masks of each sample's type, each
    flipped left-right and up-down with probability 1/2 (session-23 probe; the ellipse prior of
    `MaskPrior` cannot draw the edge-to-edge bands of MT_Uneven, 73% of the test's defect
    pixels). masks [M, H, W], kinds [M] type names, labels [N] generator label indices."""
    kinds = np.asarray(kinds)
    out = np.zeros((len(labels),) + np.asarray(masks).shape[1:], np.uint8)
    for i, lab in enumerate(labels):
        pool = np.flatnonzero(kinds == label_names[int(lab)])
        m = np.asarray(masks[rng.choice(pool)]) > 0
        if rng.random() < 0.5:
            m = m[:, ::-1]
        if rng.random() < 0.5:
            m = m[::-1]
        out[i] = m
    return out


def cut_paste_in_masks(rng, images, masks):
    """Cut-paste with given region shapes: inside each mask, the pixels of another random image
    shifted by a random (circular) offset; outside it, the image itself. [N, H, W, C] images."""
    images = np.asarray(images)
    n, h, w = images.shape[:3]
    out = images.copy()
    for i in range(n):
        src = np.roll(images[rng.integers(n)], (int(rng.integers(h)), int(rng.integers(w))), (0, 1))
        out[i] = np.where(np.asarray(masks[i])[..., None] > 0, src, images[i])
    return out


def run_image_pixel_head(cfg, log):
    """Pixel-level downstream gain: ImageDetector (as in run_image_head) + a per-pixel head (the
    Segmenter net, class-balanced BCE, flips) on [image, per-t log maps, combined log map],
    trained on the normal training images (mask 0) vs each set of synthetic anomalies with
    their masks (the generated set twice: with the generator's regions and with the regions
    narrowed by `AnomalyGenerator.refine_masks`; the generated set added to the cut-paste set,
    beside a count control of two cut-paste draws); pixel score z + softplus(logit)."""
    from adiff.detectors import ImageDetector  # pylint: disable=import-outside-toplevel
    normal, train_def, test, gen, base, out, _, times = _image_setup(cfg, log)
    kw = _image_detector_kwargs(cfg)
    t1 = time.time()
    det = ImageDetector(seed=cfg.seed, **kw).fit(normal)
    times["detector_fit"] = time.time() - t1
    t1 = time.time()
    f_normal, stats = pixel_features(det, normal)
    xt = test.images.astype(np.float32) / 255.0
    f_test, _ = pixel_features(det, xt, stats)
    cp_img, cp_mask = cut_paste(np.random.default_rng(cfg.seed + 7), base)
    # the generated regions narrowed to the pixels changed beyond re-synthesised normal texture
    refine_q = 0.99  # fixed before the first run (docs/results/generation_notes.md, session 7)
    refined, tau = gen.refine_masks(base, out, quantile=refine_q, guidance=cfg.guidance)
    kept = float(refined.sum() / max(int(np.asarray(out.masks).sum()), 1))
    log(f"refined masks: threshold {tau:.3f}, {kept:.2f} of the generated regions kept")
    # a second cut-paste draw on the same base images: the count control of the union row
    cp2_img, cp2_mask = cut_paste(np.random.default_rng(cfg.seed + 8), base)
    # Features of each distinct image set once (a pixel's features depend only on its image: the
    # detector's denoise draws are shared by all images); the training sets below reuse them.
    f_cp, f_gen, f_cp2, f_real = (pixel_features(det, np.asarray(a, np.float32), stats)[0]
                                  for a in (cp_img, out.samples, cp2_img, train_def.images.astype(np.float32) / 255.0))
    cat = np.concatenate
    probe = {}
    if cfg.get("mask_shape_probe", False):  # session 23, pre-registered: see generation.md
        t2 = time.time()
        rs = np.random.default_rng(cfg.seed + 23)
        labels = rs.integers(1, gen.num_labels, len(base))  # the types drawn as `generate` does
        shape_masks = real_shape_masks(rs, train_def.masks, train_def.kinds, labels, gen.label_names_)
        out_rs = gen.generate(base=base, masks=shape_masks, label=labels, guidance=cfg.guidance)
        cp_rs = cut_paste_in_masks(rs, base, shape_masks)
        times["generate real-shape masks"] = time.time() - t2
        f_rs, f_cprs = (pixel_features(det, np.asarray(a, np.float32), stats)[0]
                        for a in (out_rs.samples, cp_rs))
        probe = {"adiff generated, real mask shapes": (f_rs, shape_masks),
                 "cut-paste in real mask shapes (info)": (f_cprs, shape_masks)}
        log(f"real-shape masks: mean area {shape_masks.mean():.3f} vs ellipse prior "
            f"{np.asarray(out.masks).mean():.3f} vs cut-paste {cp_mask.mean():.3f}")
    feats = {"cut-paste": (f_cp, cp_mask),
             "adiff generated": (f_gen, out.masks),
             "adiff generated, refined masks": (f_gen, refined),
             "cut-paste + adiff generated": (cat([f_cp, f_gen]), cat([cp_mask, np.asarray(out.masks)])),
             "cut-paste, two draws (count control)": (cat([f_cp, f_cp2]), cat([cp_mask, cp2_mask])),
             **probe,
             "reference: real training third": (f_real, train_def.masks)}
    times["features"] = time.time() - t1
    log(f"pixel features {f_normal.shape[-1]} channels (t0 {list(det.t0)}), "
        f"{times['features']:.0f}s")
    ph = cfg.pixel_head
    res = {"none: ImageDetector denoise map (z, unsupervised)": image_metrics(f_test[..., -1], test)}
    log(f"none: {res['none: ImageDetector denoise map (z, unsupervised)']}")
    head_only = {}
    per_kind_maps = {"none": f_test[..., -1]} if probe else {}
    zero = np.zeros(normal.shape[:3], np.float32)
    for name, (fa, ma) in feats.items():
        t1 = time.time()
        f = train_segmenter(np.concatenate([f_normal, fa]),
                            np.concatenate([zero, (np.asarray(ma) > 0).astype(np.float32)]),
                            steps=ph.steps, batch_size=ph.batch_size, width=ph.width, lr=ph.lr,
                            seed=cfg.seed)
        logits = f(f_test)
        row = f"detector + pixel head: {name}"
        scored = pixel_head_scores(f_test, logits)
        res[row] = image_metrics(scored, test)
        if probe:
            per_kind_maps[row] = scored
        head_only[f"pixel head logit alone: {name}"] = image_metrics(logits, test)
        times[f"head {name}"] = time.time() - t1
        log(f"{row}: {res[row]} (logit alone: {head_only[f'pixel head logit alone: {name}']}) "
            f"({times[f'head {name}']:.0f}s)")
    extra = {}
    if probe:  # information: pixel AUROC of each defect type against the normal test images
        from experiments.benchmarks import image as image_bench  # pylint: disable=import-outside-toplevel
        extra["per_kind_pixel_auroc"] = {
            row: {k: v.get("pixel_auroc") for k, v in image_bench.per_kind(
                test, np.zeros(len(test.labels)), maps).items()}
            for row, maps in per_kind_maps.items()}
    return {**extra, "downstream": res, "diagnostic_head_only": head_only, "times_s": times,
            "refined_masks": {"threshold": tau, "kept_fraction": kept, "quantile": refine_q},
            "channels": ["image"] + [f"log map t={t}" for t in (det.t0 if len(det.t0) > 1 else ())]
                        + ["log map combined (z)"],
            "detector": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}}


def run_image(cfg, log):
    normal, train_def, test, gen, base, out, rng, times = _image_setup(cfg, log)
    t_fit, t_gen = times["generator_fit"], times["generate"]
    out0 = gen.generate(base=base[:64], masks=out.masks[:64], label=out.labels[:64], guidance=0.0)

    cp_img, cp_mask = cut_paste(np.random.default_rng(cfg.seed + 7), base)
    seg = cfg.segmenter
    res = {}
    # none: unsupervised PCA reconstruction error
    pca = PCA(n_components=16, random_state=cfg.seed).fit(normal.reshape(len(normal), -1))
    xt = test.images.astype(np.float32) / 255.0
    rec = pca.inverse_transform(pca.transform(xt.reshape(len(xt), -1))).reshape(xt.shape)
    res["none (PCA reconstruction, unsupervised)"] = image_metrics(((xt - rec) ** 2)[..., 0], test)
    sets = {
        "cut-paste + normal (segmenter)": (cp_img, cp_mask),
        "adiff generated + normal (segmenter)": (out.samples, out.masks),
        "reference: real training third + normal (segmenter)":
            (train_def.images.astype(np.float32) / 255.0, train_def.masks),
    }
    zero = np.zeros(normal.shape[:3], np.uint8)
    for name, (ai, am) in sets.items():
        t1 = time.time()
        X = np.concatenate([normal, ai.astype(np.float32)])
        M = np.concatenate([zero, am.astype(np.uint8)])
        f = train_segmenter(X, M, steps=seg.steps, batch_size=seg.batch_size, width=seg.width,
                            lr=seg.lr, seed=cfg.seed)
        res[name] = image_metrics(f(xt), test)
        log(f"{name}: {res[name]} ({time.time() - t1:.0f}s)")

    real_test_def = test.images[test.labels == 1].astype(np.float32) / 255.0
    fid = {"adiff (guidance %.1f)" % cfg.guidance: c2st(real_test_def, out.samples, cfg.seed),
           "adiff (guidance 0)": c2st(real_test_def, out0.samples, cfg.seed),
           "cut-paste": c2st(real_test_def, cp_img, cfg.seed),
           "normal images (reference)": c2st(real_test_def,
                                             xt[test.labels == 0], cfg.seed)}
    feat = lambda a: pca32.transform(a.reshape(len(a), -1))
    pca32 = PCA(n_components=32, random_state=cfg.seed).fit(normal.reshape(len(normal), -1))
    div = {"adiff": pairwise_mean(feat(out.samples)), "cut-paste": pairwise_mean(feat(cp_img)),
           "real held-out defects": pairwise_mean(feat(real_test_def)),
           "adiff defect residual (sample - base)": pairwise_mean(
               (out.samples - base).reshape(len(base), -1)),
           "real-defect residual proxy n/a": None}
    div.pop("real-defect residual proxy n/a")
    changed = np.abs(out.samples - base)[..., 0] > 2.0 / 255.0
    changed_cp = np.abs(cp_img - base)[..., 0] > 2.0 / 255.0
    align = {"adiff": float((changed & (out.masks > 0)).sum() / max(changed.sum(), 1)),
             "cut-paste": float((changed_cp & (cp_mask > 0)).sum() / max(changed_cp.sum(), 1)),
             "adiff mean |change| inside mask": float(
                 np.abs(out.samples - base)[..., 0][out.masks > 0].mean()),
             "adiff guidance 0 mean |change| inside mask": float(
                 np.abs(out0.samples - base[:64])[..., 0][out0.masks > 0].mean())}

    # grids
    grid_path = ART["dir"] / "magnetic_tile_grid.png"
    save_grid(grid_path, base[:8], out.samples[:8], out.masks[:8], train_def, cp_img[:8])
    write_dataset(gen.generate(base=base[:4], masks=out.masks[:4], label=out.labels[:4],
                               guidance=cfg.guidance),
                  ART["dir"] / "sample_dataset", modality="image",
                  extra={"source": "magnetic tile benchmark", "seed": cfg.seed})
    return {"downstream": res, "c2st": fid, "diversity": div, "mask_alignment": align,
            "counts": {"normal_train": len(normal), "generator_defects": len(train_def),
                       "test": len(test), "test_defective": int(test.labels.sum()),
                       "generated": cfg.num_generated},
            "label_names": list(out.label_names),
            "times_s": {"generator_fit": t_fit, "generate": t_gen}}


def save_grid(path, base, gen, masks, real, cp):
    from PIL import Image
    h = base.shape[1]
    rows = [base[..., 0], gen[..., 0], masks.astype(np.float32),
            real.images[:8, ..., 0].astype(np.float32) / 255.0, cp[..., 0]]
    canvas = np.ones((len(rows) * (h + 2), 8 * (h + 2)), np.float32)
    for r, row in enumerate(rows):
        for c in range(min(8, len(row))):
            canvas[r * (h + 2):r * (h + 2) + h, c * (h + 2):c * (h + 2) + h] = row[c]
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))
    img = img.resize((img.width * 3, img.height * 3), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def run_table(cfg, log, dataset):
    """Downstream gain on one ADBench table (see the module docstring), every seed."""
    from pyod.models.knn import KNN  # pylint: disable=import-outside-toplevel
    from adiff.detectors import TabularDetector  # pylint: disable=import-outside-toplevel
    t = cfg.table
    X, y = tabular_data.load_adbench_npz(next((DATA / "tabular" / dataset).glob("*.npz")))
    rows = collections.defaultdict(list)  # insertion order = row order
    times = {k: [] for k in ("generator_fit", "detector_fit", "detector_head_fit")}
    for seed in t.seeds:
        rng = np.random.default_rng(seed)
        normal, anom = X[y == 0], X[y == 1]
        perm = rng.permutation(len(normal))
        n_tr = min(len(normal) // 2, t.max_train)
        tr = normal[perm[:n_tr]]
        te_n = normal[perm[len(normal) // 2:]]
        ap = rng.permutation(len(anom))
        few, te_a = anom[ap[: t.num_labelled]], anom[ap[t.num_labelled:]]
        sc = StandardScaler().fit(tr)
        tr, few = sc.transform(tr), sc.transform(few)
        Xte = sc.transform(np.concatenate([te_n, te_a]))
        yte = np.r_[np.zeros(len(te_n)), np.ones(len(te_a))]

        def clf_auc(neg, pos):
            Xc = np.concatenate([neg, pos])
            yc = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
            w = np.where(yc == 1, len(neg) / len(pos), 1.0)
            rep = np.repeat(np.arange(len(Xc)), np.maximum(1, np.round(w).astype(int)))
            m = MLPClassifier((64, 64), max_iter=300, random_state=seed).fit(Xc[rep], yc[rep])
            return metrics.auroc(yte, m.predict_proba(Xte)[:, 1])

        def det_auc(anomalies, key):
            t1 = time.time()
            # dte_np: the tabular default when these figures were measured (docs/results/generation.md)
            d = TabularDetector(scoring="dte_np", seed=seed).fit(tr, anomalies=anomalies)
            times[key].append(time.time() - t1)
            return metrics.auroc(yte, d.decision_function(Xte))

        rows["none: KNN on normals (PyOD)"].append(
            metrics.auroc(yte, KNN().fit(tr).decision_function(Xte)))
        rows["none: adiff TabularDetector (unsupervised default)"].append(det_auc(None, "detector_fit"))
        lo, hi = tr.min(0), tr.max(0)
        span = hi - lo
        noise = rng.uniform(lo - 0.1 * span, hi + 0.1 * span, (t.num_generated, tr.shape[1]))
        t1 = time.time()
        gen = AnomalyGenerator(modality="table", seed=seed, train_steps=t.train_steps,
                               batch_size=64, num_steps=25).fit(tr, anomalies=few)
        times["generator_fit"].append(time.time() - t1)
        g = gen.generate(n=t.num_generated, label="anomaly", guidance=t.guidance).samples
        gc = gen.generate(n=t.num_generated, label="anomaly", guidance=t.guidance,
                          clip_x0=t.clip_x0).samples
        gu = AnomalyGenerator(modality="table", seed=seed, train_steps=t.train_steps,
                              batch_size=64, num_steps=25).fit(tr)
        g2 = gu.generate(n=t.num_generated, guidance=t.guidance).samples
        rows["naive: uniform noise (MLP)"].append(clf_auc(tr, noise))
        rows["naive: uniform noise + few real (MLP)"].append(clf_auc(tr, np.concatenate([noise, few])))
        rows["few real anomalies only (MLP)"].append(clf_auc(tr, few))
        rows["adiff class-conditioned (MLP)"].append(clf_auc(tr, np.concatenate([g, few])))
        rows[f"adiff class-conditioned, clip_x0={t.clip_x0:g} (MLP)"].append(
            clf_auc(tr, np.concatenate([gc, few])))
        rows["adiff unsupervised, low-density (MLP)"].append(clf_auc(tr, g2))
        rows["detector + head: uniform noise + few real"].append(
            det_auc(np.concatenate([noise, few]), "detector_head_fit"))
        rows["detector + head: few real only"].append(det_auc(few, "detector_head_fit"))
        rows["detector + head: adiff class-conditioned + few real"].append(
            det_auc(np.concatenate([g, few]), "detector_head_fit"))
        rows[f"detector + head: adiff class-conditioned (clip_x0={t.clip_x0:g}) + few real"].append(
            det_auc(np.concatenate([gc, few]), "detector_head_fit"))
        far = lambda a: float(np.mean(np.abs(a).max(1) > 10.0))
        rows["share of generated rows beyond 10 sd (no clip)"].append(far(g))
        rows[f"share of generated rows beyond 10 sd (clip_x0={t.clip_x0:g})"].append(far(gc))
        log(f"table {dataset} seed {seed}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in rows.items()))
    return {"rows": {k: _summ(v) for k, v in rows.items()},
            "times_s": {k: float(np.median(v)) for k, v in times.items() if v},
            "counts": {"n": int(len(X)), "d": int(X.shape[1]), "anomalies": int(y.sum()),
                       "train": int(n_tr), "labelled": int(t.num_labelled)}}


def _summ(v):
    """{"mean", "sd" (ddof=1; 0 for one value), "runs"} of a list of per-seed/per-series figures."""
    v = [float(x) for x in v]
    return {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "runs": v}


def _insert_windows(rng, tail, windows, masks, length):
    """Places windows [K, L, C] (with step masks [K, L]) into copies of the series `tail` at
    non-overlapping random positions (a gap of >= L steps between them); returns the series
    (copies concatenated) and its 0/1 step labels."""
    per_copy = max(1, len(tail) // (2 * length) - 1)
    series, labels = [], []
    for c0 in range(0, len(windows), per_copy):
        w, m = windows[c0:c0 + per_copy], masks[c0:c0 + per_copy]
        s, lab = tail.copy(), np.zeros(len(tail), np.int64)
        slots = rng.permutation(len(tail) // (2 * length) - 1)[:len(w)]
        for (wi, mi), slot in zip(zip(w, m), slots):
            a = length // 2 + 2 * length * int(slot)
            keep = mi[:, None] > 0
            s[a:a + length] = np.where(keep, wi, s[a:a + length])
            lab[a:a + length] = mi > 0
        series.append(s)
        labels.append(lab)
    return np.concatenate(series), np.concatenate(labels)


def _naive_windows(rng, base, masks, mu, sd):
    """The naive baseline: a random parametric anomaly (SERIES_TYPES) in each window's mask."""
    from adiff.generation import SERIES_TYPES, inject_series_anomaly  # pylint: disable=import-outside-toplevel
    naive = np.empty_like(base)
    for i, (b, m) in enumerate(zip(base, masks)):
        idx = np.flatnonzero(m)
        kind = SERIES_TYPES[rng.integers(len(SERIES_TYPES))]
        z = inject_series_anomaly(rng, (b - mu) / sd, kind, start=int(idx[0]), length=len(idx))
        naive[i] = z * sd + mu
    return naive


def _score_heads(det, train, variants, tests, times):
    """For each (name, anomalies) head variant: fit_head on the fitted detector (one network for
    every row), then per-series VUS-PR and AUROC over `tests` [(name, loader() -> SeriesSplit)]."""
    out = {}
    for name, anomalies in variants.items():
        t1 = time.time()
        d = det.fit_head(train, anomalies)
        if anomalies is not None:
            times.setdefault("head_fit", []).append(time.time() - t1)
        vus, auc = [], []
        for _, load in tests:
            sp = load()
            s = d.decision_function(sp.test)
            vus.append(metrics.vus_pr(sp.labels, s, sliding_window=metrics.vus_window(sp.test)))
            auc.append(metrics.auroc(sp.labels, s))
        out[name] = (vus, auc)
    return out


def run_series_asd(cfg, log):
    """Downstream gain on ASD entities without labelled anomalies (see the module docstring)."""
    from adiff.data import timeseries as tsd  # pylint: disable=import-outside-toplevel
    from adiff.detectors import TimeSeriesDetector  # pylint: disable=import-outside-toplevel
    from experiments.configs import ts_asd  # pylint: disable=import-outside-toplevel
    sc = cfg.series
    root = DATA / "timeseries" / "asd"
    entities = [e for e in tsd.asd_entities(root)][sc.asd_offset: sc.asd_offset + sc.asd_entities]
    det_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in ts_asd.get_config().detector.to_dict().items()}
    det_kw.update(dict(sc.detector_overrides))
    L = int(det_kw["window"])
    per, times = {}, {}
    seed = int(sc.seeds[0])
    det_kw["seed"] = seed
    for ent in entities:
        split = tsd.load_asd(root, ent)
        train = split.train.astype(np.float32)
        rng = np.random.default_rng(seed)
        t1 = time.time()
        det = TimeSeriesDetector(**det_kw).fit(train)
        times.setdefault("detector_fit", []).append(time.time() - t1)
        n_cal = det.n_calibration_
        tail = train[-n_cal:] if n_cal > 0 else train[-len(train) // 5:]
        mu, sd = train.mean(0), np.maximum(train.std(0), 1e-6)
        starts = np.arange(0, len(train) - n_cal - L + 1, sc.normal_stride)
        t1 = time.time()
        gen = AnomalyGenerator(modality="series", seed=seed, train_steps=sc.train_steps,
                               batch_size=64, num_steps=sc.num_steps, width=sc.width).fit(
            np.stack([train[a:a + L] for a in starts]))  # no labels: the parametric types
        times.setdefault("generator_fit", []).append(time.time() - t1)
        base = np.stack([tail[a:a + L] for a in rng.integers(0, len(tail) - L + 1, sc.num_generated)])
        out = gen.generate(base=base, guidance=sc.guidance)
        variants = {
            "none: adiff TimeSeriesDetector (unsupervised)": None,
            "detector + head: naive parametric injection": _insert_windows(
                np.random.default_rng(seed + 1), tail, _naive_windows(rng, base, out.masks, mu, sd),
                out.masks, L),
            "detector + head: adiff generated (types learned from injected examples)": _insert_windows(
                np.random.default_rng(seed + 1), tail, out.samples, out.masks, L)}
        res = _score_heads(det, train, variants, [(ent, lambda s=split: s)], times)
        for name, (vus, auc) in res.items():
            per.setdefault(name, {"vus_pr": [], "auroc": []})
            per[name]["vus_pr"].append(float(vus[0]))
            per[name]["auroc"].append(float(auc[0]))
            log(f"asd {ent} {name}: VUS-PR {vus[0]:.3f}, AUROC {auc[0]:.3f}")
    return {"rows": {k: {m: _summ(v) for m, v in d.items()} for k, d in per.items()},
            "entities": entities, "times_s": {k: float(np.median(v)) for k, v in times.items()},
            "detector": {k: (list(v) if isinstance(v, tuple) else v) for k, v in det_kw.items()}}


def run_series(cfg, log):
    """Downstream gain on SKAB (see the module docstring)."""
    from adiff.data import timeseries as tsd  # pylint: disable=import-outside-toplevel
    from adiff.detectors import TimeSeriesDetector  # pylint: disable=import-outside-toplevel
    from experiments.configs import ts_skab  # pylint: disable=import-outside-toplevel
    sc = cfg.series
    root = DATA / "timeseries" / "skab"
    runs = tsd.skab_runs(root)
    labelled = [r for r in runs if r in sc.labelled_runs]
    test_runs = [r for r in runs if r not in sc.labelled_runs][: sc.max_test_runs]
    train = tsd.load_skab(root, runs[0]).train.astype(np.float32)
    det_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in ts_skab.get_config().detector.to_dict().items()}
    det_kw.update(dict(sc.detector_overrides))
    L = int(det_kw["window"])
    mu, sd = train.mean(0), np.maximum(train.std(0), 1e-6)
    rows, times = {}, {}
    seeds = tuple(sc.seeds)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        det_kw["seed"] = seed
        t1 = time.time()
        det = TimeSeriesDetector(**det_kw).fit(train)
        times.setdefault("detector_fit", []).append(time.time() - t1)
        n_cal = det.n_calibration_
        tail = train[-n_cal:] if n_cal > 0 else train[-len(train) // 5:]
        # the few real labelled anomalies: windows over the labelled runs' anomalous steps
        lab_series, lab_labels, an_w, an_m, an_t = [], [], [], [], []
        for r in labelled:
            sp = tsd.load_skab(root, r)
            x, yl = sp.test.astype(np.float32), sp.labels.astype(np.int64)
            lab_series.append(x)
            lab_labels.append(yl)
            for a in range(0, len(x) - L + 1, sc.labelled_stride):
                m = yl[a:a + L]
                if m.any():
                    an_w.append(x[a:a + L]); an_m.append(m); an_t.append(r.split("/")[0])
        few = (np.concatenate(lab_series), np.concatenate(lab_labels))
        starts = np.arange(0, len(train) - n_cal - L + 1, sc.normal_stride)
        normal_w = np.stack([train[a:a + L] for a in starts])
        t1 = time.time()
        gen = AnomalyGenerator(modality="series", seed=seed, train_steps=sc.train_steps,
                               batch_size=64, num_steps=sc.num_steps, width=sc.width).fit(
            normal_w, anomalies=np.stack(an_w), masks=np.stack(an_m), labels=an_t)
        times.setdefault("generator_fit", []).append(time.time() - t1)
        base_starts = rng.integers(0, len(tail) - L + 1, sc.num_generated)
        base = np.stack([tail[a:a + L] for a in base_starts])
        out = gen.generate(base=base, guidance=sc.guidance)
        gen_series = _insert_windows(np.random.default_rng(seed + 1), tail, out.samples, out.masks, L)
        naive_series = _insert_windows(np.random.default_rng(seed + 1), tail,
                                       _naive_windows(rng, base, out.masks, mu, sd), out.masks, L)
        variants = {"none: adiff TimeSeriesDetector (unsupervised)": None,
                    "detector + head: few real labelled runs only": few,
                    "detector + head: naive parametric injection": naive_series,
                    "detector + head: adiff generated": gen_series}
        tests = [(r, lambda r=r: tsd.load_skab(root, r)) for r in test_runs]
        for name, (vus, auc) in _score_heads(det, train, variants, tests, times).items():
            rows.setdefault(name, {"vus_pr": [], "auroc": []})
            rows[name]["vus_pr"].append(float(np.mean(vus)))
            rows[name]["auroc"].append(float(np.mean(auc)))
            log(f"series seed {seed} {name}: VUS-PR {np.mean(vus):.3f}, AUROC {np.mean(auc):.3f}")
    return {"rows": {k: {m: _summ(v) for m, v in d.items()} for k, d in rows.items()},
            "times_s": {k: float(np.median(v)) for k, v in times.items()},
            "counts": {"train_steps": int(len(train)), "labelled_runs": labelled,
                       "test_runs": len(test_runs), "generator_anomaly_windows": len(an_w),
                       "generated": int(sc.num_generated)},
            "detector": {k: (list(v) if isinstance(v, tuple) else v) for k, v in det_kw.items()}}


def fmt(v):
    return "n/a" if v is None else f"{v:.3f}"


def _ms(v):
    return f"{v['mean']:.3f} +- {v['sd']:.3f}" if len(v["runs"]) > 1 else f"{v['mean']:.3f}"


def write_markdown(res, path):
    im, cfg = res.get("image", {}), res["config"]
    L = ["# Anomaly generation results", "",
         "Commands (each part can be rerun alone; `--merge` keeps the other parts' results from "
         "docs/results/generation/generation.json):", ""]
    L += [f"- {part}: `{cmd}`" for part, cmd in res.get("commands", {}).items()]
    L += ["", "\n\n".join(p.strip() for p in __doc__.split("\n\n")[1:]
                          if not p.lstrip().startswith("flock")), ""]
    if im:
        L += [f"Image reductions (CPU budget of 15 min): {cfg['size']} px images; generator "
              f"{cfg['generator']['train_steps']} steps, width {cfg['generator']['width']}, "
              f"mults {cfg['generator']['channel_mults']}, DDIM {cfg['generator']['num_steps']} steps; "
              f"{cfg['num_generated']} generated defects; segmenter {cfg['segmenter']['steps']} steps; "
              f"one seed ({cfg['seed']}).", ""]
        L += ["## Magnetic tile: downstream (test = held-out normals + the two unseen thirds of "
              "each defect type)", "", f"Counts: {im['counts']}", "",
              "| training anomalies | image AUROC | pixel AUROC | AUPRO |", "|---|---:|---:|---:|"]
        L += [f"| {k} | {fmt(v['image_auroc'])} | {fmt(v['pixel_auroc'])} | {fmt(v['aupro'])} |"
              for k, v in im["downstream"].items()]
        L += ["", "## Fidelity: classifier two-sample test vs held-out real defects "
              "(5-fold CV accuracy; 0.5 best)", "", "| samples | accuracy | n per side |",
              "|---|---:|---:|"]
        L += [f"| {k} | {fmt(v[0])} | {v[1]} |" for k, v in im["c2st"].items()]
        L += ["", "## Diversity (mean pairwise L2 in PCA(32) of normal training pixels; the "
              "residual row is in pixel space)", "", "| set | distance |", "|---|---:|"]
        L += [f"| {k} | {fmt(v)} |" for k, v in im["diversity"].items()]
        L += ["", "## Mask alignment (share of changed pixels inside the mask)", "",
              "| measure | value |", "|---|---:|"]
        L += [f"| {k} | {fmt(v)} |" for k, v in im["mask_alignment"].items()]
        L += ["", "Adiff's alignment is 1 by construction (masked DDIM copies every pixel outside "
              "the mask), so it measures the implementation, not the model.", "",
              "Grid (rows: normal base, generated, mask, real training defects, cut-paste): "
              "![grid](generation/magnetic_tile_grid.png)", ""]
    if "image_head" in res:
        ih = res["image_head"]
        L += ["## Magnetic tile: ImageDetector + supervised head (image-level; same split, generator "
              "and generated defects as above)", "",
              f"Detector: `ImageDetector({ih['detector']})` (experiments/configs/image_magnetic_tile.py, "
              f"detector + denoise settings); median seconds: {_fmt_times(ih['times_s'])}. The head "
              "re-ranks images only: the maps, hence pixel AUROC and AUPRO, are the unsupervised "
              "detector's in every row.", "",
              "| head trained on | image AUROC | pixel AUROC | AUPRO |", "|---|---:|---:|---:|"]
        L += [f"| {k} | {fmt(v['image_auroc'])} | {fmt(v['pixel_auroc'])} | {fmt(v['aupro'])} |"
              for k, v in ih["downstream"].items()]
        L += [""]
    if "image_pixel_head" in res:
        pp, pc = res["image_pixel_head"], cfg.get("pixel_head", {})
        L += ["## Magnetic tile: ImageDetector maps + pixel head (same split, generator, generated "
              "defects and detector as above)", "",
              f"Per-pixel features: {', '.join(pp['channels'])} (map channels standardised over the "
              "normal training pixels). Head: the segmenter net (width "
              f"{pc.get('width')}, {pc.get('steps')} steps, class-balanced BCE, horizontal flips) "
              "trained on the normal training images (all-zero masks) vs each synthetic set with its "
              "masks. Pixel score = z + softplus(logit), z = the standardised combined log map "
              "(the \"none\" row); image score = mean of the top 10 pixel scores. Seconds: "
              f"{_fmt_times(pp['times_s'])}.", "",
              "| pixel head trained on | image AUROC | pixel AUROC | AUPRO |", "|---|---:|---:|---:|"]
        L += [f"| {k} | {fmt(v['image_auroc'])} | {fmt(v['pixel_auroc'])} | {fmt(v['aupro'])} |"
              for k, v in pp["downstream"].items()]
        L += ["", "Diagnostic (the head's logit alone, without z):", "",
              "| head | image AUROC | pixel AUROC | AUPRO |", "|---|---:|---:|---:|"]
        L += [f"| {k} | {fmt(v['image_auroc'])} | {fmt(v['pixel_auroc'])} | {fmt(v['aupro'])} |"
              for k, v in pp["diagnostic_head_only"].items()]
        L += [""]
    for name, t in res.get("tables", {}).items():
        tc = cfg["table"]
        L += [f"## Table: ADBench {name} (semi-supervised protocol, {tc['num_labelled']} labelled "
              f"anomalies removed from test; seeds {list(tc['seeds'])})", "",
              f"Counts: {t['counts']}; median seconds per seed: {_fmt_times(t['times_s'])}.", "",
              "| training anomalies -> downstream model | AUROC (mean +- sd over seeds) | per seed |",
              "|---|---:|---|"]
        L += [f"| {k} | {_ms(v)} | {' / '.join(f'{x:.3f}' for x in v['runs'])} |"
              for k, v in t["rows"].items()]
        L += [""]
    if "series" in res:
        se = res["series"]
        L += ["## Series: SKAB (train anomaly-free.csv; the labelled runs "
              f"{se['counts']['labelled_runs']} give the few real anomalies and leave the test set)", "",
              f"Counts: {se['counts']}; median seconds: {_fmt_times(se['times_s'])}. Detector: "
              f"`TimeSeriesDetector({se['detector']})` (experiments/configs/ts_skab.py).", "",
              "| head trained on | mean VUS-PR over test runs | mean AUROC | per seed (VUS-PR) |",
              "|---|---:|---:|---|"]
        L += [f"| {k} | {_ms(v['vus_pr'])} | {_ms(v['auroc'])} | "
              f"{' / '.join(f'{x:.3f}' for x in v['vus_pr']['runs'])} |" for k, v in se["rows"].items()]
        L += [""]
    if "series_asd" in res:
        sa = res["series_asd"]
        L += [f"## Series: ASD entities {', '.join(sa['entities'])} (train/test files; no labelled "
              "anomalies: the generator learns the four parametric types from injected examples)", "",
              f"Median seconds: {_fmt_times(sa['times_s'])}. Detector: `TimeSeriesDetector({sa['detector']})` "
              "(experiments/configs/ts_asd.py).", "",
              "| head trained on | mean VUS-PR over entities | mean AUROC | per entity (VUS-PR) |",
              "|---|---:|---:|---|"]
        L += [f"| {k} | {_ms(v['vus_pr'])} | {_ms(v['auroc'])} | "
              f"{' / '.join(f'{x:.3f}' for x in v['vus_pr']['runs'])} |" for k, v in sa["rows"].items()]
        L += [""]
    notes = OUT / "generation_notes.md"
    if notes.exists():
        L += [notes.read_text().rstrip(), ""]
    path.write_text("\n".join(L) + "\n")


def _fmt_times(t):
    return ", ".join(f"{k} {v:.1f}" for k, v in t.items())


def main(argv):
    del argv
    quick = FLAGS.quick
    cfg = generation_tiny.get_config() if quick else generation_magnetic_tile.get_config()
    parts = list(FLAGS.parts)
    for p in parts:
        if p not in ("image", "image_head", "image_pixel_head", "table", "series", "series_asd"):
            raise ValueError("--parts takes image, image_head, image_pixel_head, table, series, "
                             f"series_asd; got {p!r}")
    if FLAGS.tables:
        cfg.table.datasets = tuple(FLAGS.tables)
    if FLAGS.table_seeds:
        cfg.table.seeds = tuple(int(s) for s in FLAGS.table_seeds)
    if FLAGS.series_seeds:
        cfg.series.seeds = tuple(int(s) for s in FLAGS.series_seeds)
    if FLAGS.generator_context:
        cfg.generator.context = True
    if FLAGS.mask_shape_probe:
        cfg.mask_shape_probe = True
    if FLAGS.image_seed is not None:  # split, generator, detector and heads of the image parts
        cfg.seed = int(FLAGS.image_seed)
    if FLAGS.artifacts:
        ART["dir"] = pathlib.Path(FLAGS.artifacts)
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    t0 = time.time()
    if quick and not FLAGS.artifacts:  # the smoke run never touches the committed results
        ART["dir"] = pathlib.Path(tempfile.mkdtemp(prefix="adiff_generation_quick_"))
    json_path = ART["dir"] / "generation.json"
    ART["dir"].mkdir(parents=True, exist_ok=True)
    res = {}
    if FLAGS.merge and json_path.exists():
        res = json.loads(json_path.read_text())
        if "table" in res and "tables" not in res:  # the single-table layout of session 3
            res.pop("table")
    res.setdefault("commands", {})
    if "command" in res:  # session-3 layout: one command for the image part
        res["commands"].setdefault("image", res.pop("command"))
    res["config"] = cfg.to_dict()
    res["quick"] = quick
    cmd = "flock /tmp/adiff_heavy.lock timeout 900 python -m experiments.benchmarks.generation " \
          + " ".join(a for a in sys.argv[1:])
    save = lambda: json_path.write_text(json.dumps(res, indent=1, default=str))
    out_md = pathlib.Path(FLAGS.out)

    def flush():
        save()
        if not quick:
            write_markdown(res, out_md)

    for part, run in (("image", run_image), ("image_head", run_image_head),
                      ("image_pixel_head", run_image_pixel_head), ("series", run_series)):
        if part in parts:
            res[part] = run(cfg, log)
            res["commands"][part] = cmd
            flush()
    if "table" in parts:
        res.setdefault("tables", {})
        for ds in cfg.table.datasets:
            res["tables"][ds] = run_table(cfg, log, ds)
            res["commands"][f"table {ds}"] = cmd
            flush()
    if "series_asd" in parts:
        cfg.series.asd_offset, cfg.series.asd_entities = FLAGS.asd_offset, FLAGS.asd_entities
        new = run_series_asd(cfg, log)
        old = res.get("series_asd") if FLAGS.merge else None
        if old:  # append entities run separately (--asd_offset)
            for k, d in new["rows"].items():
                for m, v in d.items():
                    d[m] = _summ([x for e, x in zip(old["entities"], old["rows"][k][m]["runs"])
                                  if e not in new["entities"]] + v["runs"])
            new["entities"] = [e for e in old["entities"] if e not in new["entities"]] + new["entities"]
        res["series_asd"] = new
        res["commands"][f"series_asd {FLAGS.asd_offset}+{FLAGS.asd_entities}"] = cmd
        flush()
    log(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    from absl import app, flags  # pylint: disable=import-outside-toplevel
    flags.DEFINE_bool("quick", False, "Tiny settings (smoke test of the script).")
    flags.DEFINE_list("parts", ["image", "image_head", "table", "series"],
                      "Parts to run: image, image_head, image_pixel_head, table, series, "
                      "series_asd.")
    flags.DEFINE_list("tables", [], "ADBench tables (default: the config's).")
    flags.DEFINE_list("table_seeds", [], "Seeds of the table part (default: the config's).")
    flags.DEFINE_list("series_seeds", [], "Seeds of the series part (default: the config's).")
    flags.DEFINE_integer("asd_offset", 0, "First ASD entity (index) of the series_asd part.")
    flags.DEFINE_integer("asd_entities", 4, "Number of ASD entities of the series_asd part.")
    flags.DEFINE_bool("merge", False, "Keep the other parts' results from the previous JSON.")
    flags.DEFINE_string("out", str(OUT / "generation.md"), "Results markdown.")
    flags.DEFINE_bool("generator_context", False, "Image generator conditioned on the clean "
                      "surroundings of the region (AnomalyGenerator(context=True)).")
    flags.DEFINE_bool("mask_shape_probe", False, "image_pixel_head: add the session-23 rows "
                      "(generated and cut-paste defects in resampled real mask shapes).")
    flags.DEFINE_integer("image_seed", None, "Seed of the image parts (default: the config's).")
    flags.DEFINE_string("artifacts", "", "Folder of the JSON and image artefacts (default: "
                        "docs/results/generation); use another one for extra seeds.")
    FLAGS = flags.FLAGS
    app.run(main)
